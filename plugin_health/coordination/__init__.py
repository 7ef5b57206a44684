"""Coordination: host locks and leases, and the control transports (Unix socket, Redis) between workers and cores."""
