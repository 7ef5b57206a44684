"""Defines no Plugin subclass."""

VALUE = 1
