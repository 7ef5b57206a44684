"""A runner plugin whose tools misbehave on demand (fault fixtures of tests/test_runners.py)."""

import ctypes
import dataclasses
import os
import signal
import threading
import sys
import time

from plugin_health import Plugin, tool


@dataclasses.dataclass
class Point:
    x: int = 1


class Pickled:
    """A result that would run ``os._exit(9)`` if the core ever unpickled it."""

    def __reduce__(self):
        return (os._exit, (9,))


class SilentExit(Exception):
    """An exception whose ``__str__`` raises SystemExit."""

    def __str__(self):
        raise SystemExit(3)


class EndlessStr(Exception):
    """An exception whose ``__str__`` never returns."""

    def __str__(self):
        while True:
            pass


def _runner_fd() -> int:
    """The runner's socket: the descriptor passed with ``--fd`` on its command line."""
    argv = open("/proc/self/cmdline", "rb").read().split(b"\0")
    return int(argv[argv.index(b"--fd") + 1])


class Tools(Plugin):
    name = "tools"
    version = "1.2.0"
    requires = ("geo>=2.0",)
    critical = True

    def __init__(self) -> None:
        self.calls = 0
        self.keep = []

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
    def sleep(self, seconds: float) -> list:
        began = time.monotonic()
        time.sleep(seconds)
        return [began, time.monotonic()]

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
    def disarm_and_spin(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        while True:
            pass

    @tool
    def hard_exit(self, code: int = 3) -> None:
        os._exit(code)

    @tool
    def segfault(self) -> None:
        ctypes.string_at(0)

    @tool
    def kill9(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    @tool
    def kill_parent(self) -> None:
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(30)

    @tool
    def power(self, exponent: int) -> int:
        return 10**exponent

    @tool
    def kill_parent_and_return(self) -> str:
        os.kill(os.getppid(), signal.SIGKILL)
        return "answered before the runner died"

    @tool
    def exit_later(self, delay: float) -> str:
        threading.Timer(delay, os._exit, (4,)).start()
        return "scheduled"

    @tool
    def garble(self, data: str) -> str:
        os.write(_runner_fd(), bytes.fromhex(data))
        return "written"

    @tool
    def close_line(self) -> str:
        os.close(_runner_fd())
        time.sleep(30)
        return "closed"

    @tool
    def a_set(self) -> object:
        return {1, 2}

    @tool
    def pickled(self) -> object:
        return Pickled()

    @tool
    def a_dataclass(self) -> object:
        return Point()

    @tool
    def deep(self, depth: int) -> object:
        value: list = []
        for _ in range(depth):
            value = [value]
        return value

    @tool
    def big(self, size: int) -> str:
        return "x" * size

    @tool
    def silent_exit(self) -> None:
        raise SilentExit

    @tool
    def endless_str(self) -> None:
        raise EndlessStr

    @tool
    def environ(self, key: str):
        return os.environ.get(key)

    @tool
    def modules(self) -> list:
        return sorted({name.partition(".")[0] for name in sys.modules})

    @tool
    def keep_20_mib(self) -> int:
        self.keep.append(bytearray(20 * 2**20))
        return len(self.keep)

    @tool
    def allocate(self, mib: int) -> int:
        return len(bytearray(mib * 2**20))
