"""A signal that reaches a gunicorn worker while it boots is not lost."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

WORKER_BOOT = textwrap.dedent("""
    import os, signal, sys
    from plugin_health.serving import gunicorn_conf

    class Log:
        def info(self, *args): pass
        warning = error = exception = debug = info

    class Worker:
        pid, log, wsgi, alive = os.getpid(), Log(), None, True

    seen = []
    signal.signal(signal.SIGTERM, lambda signum, frame: seen.append("the master's handler"))  # as forked
    worker = Worker()
    gunicorn_conf.post_fork(None, worker)
    os.kill(os.getpid(), signal.SIG{name})  # the group's signal, while the worker boots
    signal.signal(signal.SIG{name}, lambda signum, frame: seen.append(signal.Signals(signum).name))  # init_signals
    assert seen == [], seen
    gunicorn_conf.post_worker_init(worker)
    print(seen)
    """)


@pytest.mark.parametrize("name", ["TERM", "INT", "QUIT"])
def test_a_signal_that_reaches_a_booting_worker_is_handled_once_it_has_booted(name: str) -> None:
    """Between gunicorn's fork and the worker's own handlers, a worker runs the master's handlers it inherited, which
    drop the signal (they queue it for a master the worker is not): a service stopped by a signal to its whole
    group (systemd, Ctrl-C) as a worker booted kept that worker 30 s, until gunicorn's graceful timeout killed it.
    The hooks keep such a signal and give it to the worker's own handler once it has them."""
    done = subprocess.run([sys.executable, "-c", WORKER_BOOT.format(name=name)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == repr([f"SIG{name}"])
