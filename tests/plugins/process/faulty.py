"""A process-mode plugin whose tools misbehave on demand (fault fixtures of tests/test_sandbox_process.py)."""

import ctypes
import os
import threading
import time

from plugin_health import Plugin, tool


class Faulty(Plugin):
    name = "faulty"
    version = "1.2.0"
    requires = ("geo>=2.0",)
    critical = True
    timeout = 5.0
    memory_limit_mb = 256
    isolation = "process"

    def __init__(self) -> None:
        self.calls = 0

    def health_check(self) -> bool:
        return True

    @tool
    def count(self) -> int:
        self.calls += 1
        return self.calls

    @tool
    def echo(self, *args, **kwargs):
        return {"args": list(args), "kwargs": kwargs}

    @tool
    def pid(self) -> int:
        return os.getpid()

    @tool
    def fail(self, message: str = "bad value") -> None:
        raise ValueError(message)

    @tool
    def exit(self) -> None:
        raise SystemExit(2)

    @tool
    def interrupt(self) -> None:
        raise KeyboardInterrupt

    @tool
    def sleep(self, seconds: float) -> str:
        time.sleep(seconds)
        return "slept"

    @tool
    def spin(self) -> None:
        while True:
            try:
                time.sleep(0.001)
            except Exception:  # noqa: BLE001 - a plugin that swallows everything it can
                pass

    @tool
    def spin_in_c(self) -> int:
        return sum(range(10**12))

    @tool
    def segfault(self) -> None:
        ctypes.string_at(0)

    @tool
    def hard_exit(self, code: int = 3) -> None:
        os._exit(code)

    @tool
    def kill9(self) -> None:
        os.kill(os.getpid(), 9)

    @tool
    def allocate(self, mib: int) -> int:
        block = bytearray(mib * 1024 * 1024)
        return len(block)

    @tool
    def unpicklable(self) -> object:
        return threading.Lock()

    @tool
    def own_class(self) -> object:
        return Result()


class Result:
    """Defined only inside the plugin's private module: the server cannot unpickle it."""
