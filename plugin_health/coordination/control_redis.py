"""Operator actions and tool calls across machines: the control transport over a Redis store.

The worker pushes its request (with a list to answer on and a deadline) onto a Redis list; the leading host
takes requests from it, answers each on a thread, and pushes the answer back. The request and answer lines are
the same as over the Unix socket of :mod:`plugin_health.control`.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

from plugin_health.coordination.control import Asking, HostUnavailableError, unwrap
from plugin_health.store.redis import RedisStore


class RedisControlServer:
    """The host's end over Redis (hosts on other machines): requests from a list, each answered on a thread.

    A request names the list to answer on and a deadline; one found past its deadline (it waited while no host
    ran) is dropped, not carried out late.
    """

    def __init__(self, store: RedisStore, answer: Callable[[bytes], dict[str, Any]], workers: int = 8) -> None:
        self.store = store
        self._answer = answer
        self.client = store.blocking_client()
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
                item = self.client.blpop([self.store.key("control")], timeout=1)
            except redis.RedisError:
                self._stop.wait(0.5)
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
            pass  # the worker times out and says so


class RedisRemoteControl(Asking):
    """A worker's end over Redis: push the request, wait for the answer on a list of its own."""

    def __init__(self, store: RedisStore, timeout: float) -> None:
        self.store = store
        self.timeout = timeout
        self.client = store.blocking_client(timeout + 1)

    def close(self) -> None:
        """Close the blocking client's connections."""
        self.client.close()

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        reply = self.store.key("control-reply", uuid.uuid4().hex)
        envelope = {"reply": reply, "deadline": time.time() + self.timeout,
                    "request": json.dumps(request, separators=(",", ":"))}
        try:
            self.client.rpush(self.store.key("control"), json.dumps(envelope, separators=(",", ":")))
            item = self.client.blpop([reply], timeout=max(1, math.ceil(self.timeout)))
        except redis.RedisError as err:
            raise HostUnavailableError(f"the store cannot carry the request ({type(err).__name__})") from None
        if item is None:
            raise HostUnavailableError(f"no answer within {self.timeout:g} s")
        return unwrap(json.loads(item[1]))
