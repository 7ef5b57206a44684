"""The runtime: the core process that watches plugins, the runner processes that run them, the wire between them.

See docs/architecture.md for the processes and the trust boundary.
"""
