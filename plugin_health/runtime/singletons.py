"""Singletons: a plugin declared ``singleton = True`` runs on exactly one instance of a cluster at a time.

Each singleton has a lease in Redis with a fencing token (:class:`~plugin_health.coordination.leases.SingletonLease`).
Every instance loads the plugin; the one that holds the lease brings it up (``context.fencing_token`` says which
run it is), the others keep it UNAVAILABLE ``standby: ...`` and try to take the lease as it falls free. The owner
renews the lease several times a lease period. An owner that cannot renew stops the plugin before the lease can
pass to another instance: after half a lease without a renewal it stops it (``stop`` bounded by the time left), and
should that not be over a margin before the lease ends, its runner (a runner of its own: singletons never share
one) is killed. So two runs of a singleton never overlap, even across a network partition; another instance takes
over within the lease and a poll after the owner dies or is cut off. While Redis is away nobody can take the
lease: the singleton then runs nowhere until Redis answers again (consistency over availability, as for any lock).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading

import redis

from plugin_health.coordination.leases import SingletonLease
from plugin_health.errors import IllegalTransitionError
from plugin_health.lifecycle import PluginLifecycleState, UnavailableReason
from plugin_health.runtime.core import Core
from plugin_health.runtime.runners import RunnerHandle
from plugin_health.store import PluginSnapshot
from plugin_health.store.redis import Keys

logger = logging.getLogger(__name__)

#: Seconds before the lease ends by which a singleton that could not be stopped has had its runner killed (at most
#: a sixth of the lease, for short leases).
MARGIN = 0.5
#: Polls (renewals, takeovers) per lease period.
POLLS_PER_LEASE = 6

ACTIVE = (PluginLifecycleState.INITIALIZED, PluginLifecycleState.RUNNING)


class SingletonKeeper:
    """Holds, renews, gives up and takes over the leases of this instance's singletons (the loader's gate)."""

    def __init__(self, core: Core, client: redis.Redis, keys: Keys, instance: str, ttl: float) -> None:
        self.core = core
        self.client = client
        self.keys = keys
        self.instance = instance
        self.ttl = ttl
        self.poll = max(0.05, ttl / POLLS_PER_LEASE)
        self._leases: dict[str, SingletonLease] = {}
        self._lock = threading.RLock()  # one Redis exchange of this keeper at a time (each bounded by a timeout)
        self._leaving: set[str] = set()  # singletons being stopped because their lease is in doubt
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._takeovers: list[threading.Thread] = []

    # -- the loader's gate --------------------------------------------------------------------------------

    def hold(self, name: str) -> str | None:
        """None when this instance holds ``name``'s lease (taking it if it is free); else the standby reason."""
        with self._lock:
            lease = self._lease(name)
            if name not in self._leaving and (lease.held() or self._take(name, lease)):
                return None
            return self._standby_reason(name, lease)

    def token(self, name: str) -> int | None:
        """The fencing token of the lease held for ``name``, or None."""
        lease = self._leases.get(name)
        return None if lease is None else lease.token

    # -- the keeper's thread ------------------------------------------------------------------------------

    def start(self) -> None:
        """Keep the leases on a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="plugin-health-singletons", daemon=True)
        self._thread.start()

    def halt(self) -> None:
        """Take over nothing more (before the core shuts down: a takeover then would start what is being stopped)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        for takeover in list(self._takeovers):
            takeover.join(30.0)

    def stop(self) -> None:
        """Stop keeping; give back every lease held (the plugins were stopped by the core's shutdown first)."""
        self.halt()
        with self._lock:
            for lease in self._leases.values():
                lease.release()

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            for name in self._singletons():
                try:
                    self._keep(name)
                except Exception:  # one singleton's trouble must not end the keeping of the others
                    logger.exception("singleton %s: lease not kept", name)

    def _singletons(self) -> list[str]:
        return sorted(entry.name for entry in self.core.registry if entry.spec.singleton)

    def _keep(self, name: str) -> None:
        manager, loader = self.core.manager, self.core.loader
        state = manager.get_state(name)
        with self._lock:
            lease = self._lease(name)
            if lease.token is not None:
                gave_up = state is PluginLifecycleState.FAILED and not self.core.supervisor.restarts_by_itself(name)
                if (name in loader.disabled and state not in ACTIVE) or gave_up:
                    lease.release()  # disabled here, or failed past its restart limit: another instance may run it
                    self._owner(name, None)
                    return
                if not lease.renew() and name not in self._leaving and (
                        lease.token is None or lease.remaining() < self.ttl / 2):
                    self._leaving.add(name)  # its stop runs on a thread of its own: the others stay renewed
                    threading.Thread(target=self._leave, args=(name, lease), name=f"plugin-health-leave-{name}",
                                     daemon=True).start()
                return
            waiting = state is PluginLifecycleState.UNAVAILABLE and (manager.last(name).reason or "").startswith(
                UnavailableReason.STANDBY.value)
            if waiting and name not in loader.disabled and name not in self._leaving and self._take(name, lease):
                takeover = threading.Thread(target=self._bring_up, args=(name,),
                                            name=f"plugin-health-takeover-{name}", daemon=True)
                self._takeovers = [t for t in self._takeovers if t.is_alive()] + [takeover]
                takeover.start()
                return
            with contextlib.suppress(redis.RedisError):
                holder = lease.holder()
                self._owner(name, holder)
                self._mirror(name, holder if waiting else None)

    # -- moves ----------------------------------------------------------------------------------------------

    def _lease(self, name: str) -> SingletonLease:
        if name not in self._leases:
            self._leases[name] = SingletonLease(self.client, self.keys.singleton(name), self.instance, self.ttl)
        return self._leases[name]

    def _take(self, name: str, lease: SingletonLease) -> bool:
        token = lease.try_acquire()
        if token is None:
            return False
        logger.warning("singleton %s: this instance took its lease (fencing token %d)", name, token)
        self._owner(name, self.instance)
        return True

    def _bring_up(self, name: str) -> None:
        """Start a singleton whose lease this instance just took (``reset``, ``initialize``, ``start``)."""
        if self.core.manager.may(name, "reset") and not self._stop.is_set():
            why = f"took its lease on instance {self.instance} (fencing token {self.token(name)})"
            self.core.supervisor.restart(name, automatic=False, why=why)

    def _leave(self, name: str, lease: SingletonLease) -> None:
        """The lease is lost or in doubt: stop the singleton before the lease can end, killing it if need be."""
        remaining = lease.remaining()
        why = "its lease passed to another instance" if lease.token is None else (
            "its lease could not be renewed (redis unreachable)")
        logger.warning("singleton %s: %s; stopping it with %.2f s of the lease left", name, why, remaining)
        budget = max(0.0, remaining - min(MARGIN, self.ttl / POLLS_PER_LEASE))
        done = threading.Event()

        def stop() -> None:
            try:
                state = self.core.manager.get_state(name)
                if state in ACTIVE:
                    reason = UnavailableReason.STANDBY.with_detail(f"{why}; stopped here before it could run twice")
                    grace = self.core.settings.runner_grace
                    self.core.loader.take_down(name, "make_unavailable", reason, timeout=max(0.01, budget - grace))
            except IllegalTransitionError:  # it moved meanwhile: FAILED, its runner killed for a stop that hung
                logger.warning("singleton %s: %s while it was being stopped", name, self.core.manager.state_of(name))
            except Exception:
                logger.exception("singleton %s: not stopped in order", name)
            finally:
                done.set()

        threading.Thread(target=stop, name=f"plugin-health-stop-{name}", daemon=True).start()
        if not done.wait(budget):
            self._kill(name)
        done.wait(self.ttl)
        with self._lock:
            lease.release()
            self._owner(name, None)
            self._leaving.discard(name)

    def _kill(self, name: str) -> None:
        """End a singleton's runner (its own) outright: it did not stop in time."""
        entry = self.core.registry.get_or_none(name)
        handle = None if entry is None else entry.handle
        if isinstance(handle, RunnerHandle) and handle.dedicated:
            logger.error("singleton %s did not stop before its lease could end: its runner is killed", name)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(handle.runner.pgid, signal.SIGKILL)

    def _owner(self, name: str, owner: str | None) -> None:
        """Note who runs ``name`` (shown in its snapshot) and publish the change."""
        if self.core.owners.get(name, "?") == owner:
            return
        self.core.owners[name] = owner
        self.core.republish(name)

    def _mirror(self, name: str, owner: str | None) -> None:
        """Show a singleton on standby here as its owner last published it (publishing when that changed)."""
        raw = None if owner is None or owner == self.instance else self.client.hget(self.keys.plugins(owner), name)
        mirror = None if raw is None else PluginSnapshot.from_json(raw)
        if mirror == self.core.mirrors.get(name):
            return
        if mirror is None:
            self.core.mirrors.pop(name, None)
        else:
            self.core.mirrors[name] = mirror
        self.core.republish(name)

    def _standby_reason(self, name: str, lease: SingletonLease) -> str:
        try:
            holder = lease.holder()
        except redis.RedisError as err:
            return UnavailableReason.STANDBY.with_detail(f"its lease cannot be taken now ({type(err).__name__})")
        self._owner(name, holder)
        if holder is None or holder == self.instance:
            return UnavailableReason.STANDBY.with_detail("waiting for its lease")
        return UnavailableReason.STANDBY.with_detail(f"runs on instance {holder}")
