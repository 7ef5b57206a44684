"""Operator actions and tool calls for another instance: the control transport over Redis.

Each instance's core takes requests from a Redis list of its own (``i:<id>:control``), answers each on a thread,
and pushes the answer onto the list the request named. The request and answer lines are the same as over the
Unix socket of :mod:`plugin_health.coordination.control`. A request carries a deadline: one found past it (it
waited while that core was down) is dropped, not carried out late. The asking side never waits on a Redis that
does not answer: the push gives up after a fraction of a second, and the wait for the answer is cut into one-second
slices, each of which fails at once if Redis stopped answering.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

from plugin_health.coordination.control import Asking, HostUnavailableError, unwrap
from plugin_health.store.redis import Keys, connect

#: Seconds a push of a request may take before the instance counts as unreachable.
PUSH_TIMEOUT = 0.25
#: Seconds of one slice of the wait for an answer.
SLICE = 1


class RedisControlServer:
    """A core's end: requests from its instance's list, each answered on a thread."""

    def __init__(self, client: redis.Redis, keys: Keys, instance: str,
                 answer: Callable[[bytes], dict[str, Any]], workers: int = 8) -> None:
        self.keys = keys
        self.queue = keys.control(instance)
        self._answer = answer
        self.client = client
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="plugin-health-control")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Take requests on a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="plugin-health-control-redis", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop taking requests; finish those taken."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self._pool.shutdown(wait=True)
        self.client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self.client.blpop([self.queue], timeout=SLICE)
            except redis.RedisError:
                self._stop.wait(0.25)
                continue
            if item is not None:
                payload = item[1]
                self._pool.submit(self._serve, payload.encode() if isinstance(payload, str) else payload)

    def _serve(self, payload: bytes) -> None:
        try:
            envelope = json.loads(payload)
            reply, deadline, line = str(envelope["reply"]), float(envelope["deadline"]), envelope["request"]
        except (ValueError, KeyError, TypeError):
            return
        if time.time() > deadline:
            return
        result = self._answer(line.encode())
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.rpush(reply, json.dumps(result, separators=(",", ":")))
            pipe.expire(reply, 60)
            pipe.execute()
        except redis.RedisError:
            pass  # the asking worker times out and says so


class RedisRemoteControl(Asking):
    """The asking end for one other instance: push the request onto its list, wait for the answer on our own."""

    def __init__(self, url: str, instance: str, timeout: float) -> None:
        self.instance = instance
        self.timeout = timeout
        self.pusher, self.keys = connect(url, PUSH_TIMEOUT)
        self.waiter, _ = connect(url, SLICE + PUSH_TIMEOUT)

    def close(self) -> None:
        """Close the connections."""
        self.pusher.close()
        self.waiter.close()

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        reply = self.keys.key("control-reply", uuid.uuid4().hex)
        deadline = time.monotonic() + self.timeout
        envelope = {"reply": reply, "deadline": time.time() + self.timeout,
                    "request": json.dumps(request, separators=(",", ":"))}
        try:
            self.pusher.rpush(self.keys.control(self.instance), json.dumps(envelope, separators=(",", ":")))
            while True:
                item = self.waiter.blpop([reply], timeout=SLICE)
                if item is not None:
                    return unwrap(json.loads(item[1]))
                if time.monotonic() >= deadline:
                    raise HostUnavailableError(f"instance {self.instance} did not answer within {self.timeout:g} s")
        except redis.RedisError as err:
            raise HostUnavailableError(f"redis cannot carry the request ({type(err).__name__})") from None
