"""``python -m bench``: run every benchmark, then print one table of their figures against their baselines.

Run from the repository root, in the project's venv (``pip install -e '.[bench]'``; ``wrk`` on ``PATH``)::

    python -m bench [--only NAME[,NAME]] [--quick]

Every ``bench/<name>.py`` whose name does not start with ``_`` is a benchmark; each runs in a process of its own,
``python bench/<name>.py`` from the repository root, as its docstring says (this process never imports them:
``bench/http.py`` would shadow the standard library's ``http`` here). Their output is shown as it comes, then
parsed for the figures of the combined table: benchmark, figure, value, the baseline it names (measured in the
same run) and the ratio; a benchmark reports figures itself through ``bench/_figures.py`` (``BENCH_FIGURES``)
too, or instead. ``--quick`` passes ``--quick`` to the benchmarks that take it (shorter runs); ``--only``
runs some of them. The full run takes about 20 minutes on 2 cores (``bench/http.py`` about 5 of them);
``--quick`` about 8.

The exit status is 1 if a benchmark failed. Interrupted (Ctrl-C, SIGTERM), the running benchmark gets a SIGTERM,
on which those that start servers stop them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "bench"
# Cheapest first; any other benchmark runs after these.
ORDER = ("lifecycle", "sandbox", "runtime", "http", "slow", "metrics", "scale")
TIMEOUT = 1200.0  # seconds one benchmark may take before it is stopped
STOP_WITHIN = 120.0  # seconds between SIGTERM and SIGKILL of a benchmark (it stops its servers meanwhile)
_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}
_TIME = r"[\d.,]+ (?:ns|us|ms|s)"


@dataclass(frozen=True)
class Figure:
    """One row of the combined table."""

    benchmark: str
    figure: str
    value: str
    baseline: str
    ratio: float | None


def seconds(text: str) -> float:
    """``'8.67 us'`` -> 8.67e-6."""
    number, unit = text.split()
    return float(number.replace(",", "")) * _UNITS[unit]


def strip_baseline(label: str) -> str:
    return label.replace("(baseline)", "").strip()


# -- parsers: the printed output of each benchmark -> its figures ------------------------------------------------


def parse_lifecycle(out: str) -> Iterator[Figure]:
    """``figure  value  ratio`` rows; a ``(baseline)`` row is the baseline of the rows after it."""
    base = ("", "")
    for match in re.finditer(rf"^(\S.*?)\s{{2,}}({_TIME})\s+([\d.]+)$", out, re.MULTILINE):
        label, value, ratio = match.groups()
        if "(baseline)" in label:
            base = (strip_baseline(label), value)
        else:
            yield Figure("lifecycle", label, value, f"{base[1]} ({base[0]})", float(ratio))


def parse_sandbox(out: str) -> Iterator[Figure]:
    """Sections of ``  name  value  ratio`` rows; a hung call's baseline is the timeout in its section's title."""
    base = ("", "")
    timeout: float | None = None
    for line in out.splitlines():
        if line and not line.startswith(" "):
            found = re.search(r"with a ([\d.]+) s timeout", line)
            timeout = float(found.group(1)) if found else None
            continue
        match = re.match(rf"^  (.+?)\s{{2,}}\s*({_TIME})\s{{2,}}(.+)$", line)
        if match is None:
            continue
        label, value, rest = match.groups()
        value = " ".join(value.split())
        if "(baseline)" in label or "(baseline)" in rest:
            base = (strip_baseline(label), value)
        elif timeout is not None:
            yield Figure("sandbox", f"hung call: {label}", value, f"{timeout * 1e3:.0f} ms (the timeout)",
                         seconds(value) / timeout)
        elif re.match(r"[\d.]+x", rest):  # printed to one decimal: worked out again from the values
            yield Figure("sandbox", label, value, f"{base[1]} ({base[0]})", seconds(value) / seconds(base[1]))


def parse_runtime(out: str) -> Iterator[Figure]:
    """Sections of ``  label  value  ratio  [note]`` rows; a ``(baseline)`` row is the baseline of the rows after it."""
    base = ("", "")
    row = re.compile(rf"^  (.+?)\s{{2,}}({_TIME}|[\d.,]+ MiB)\s{{2,}}\s*([\d.]+)(?:\s{{2,}}.*)?$")
    for line in out.splitlines():
        if match := row.match(line):
            label, value, ratio = match.groups()
            if "(baseline)" in label:
                base = (strip_baseline(label), value)
            else:
                yield Figure("runtime", label, value, f"{base[1]} ({base[0]})", float(ratio))


def parse_scale(out: str, benchmark: str = "scale") -> Iterator[Figure]:
    """Its tables of ``value (ratio)`` cells per number of plugins: the largest number's row, against the first's."""
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if not re.match(r"^\s*plugins\s{2,}", line):
            continue
        names = re.split(r"\s{2,}", line.strip())[1:]
        rows = []
        for row in lines[i + 1:]:
            found = re.match(r"^\s*([\d,]+)\s{2,}(.*)$", row)
            if found is None:
                break
            rows.append((found.group(1), re.findall(r"(\S+(?: \S+)?) \((\S+)\)", found.group(2))))
        if len(rows) < 2:
            continue
        (first, base_cells), (last, cells) = rows[0], rows[-1]
        for name, (value, ratio), (base_value, _) in zip(names, cells, base_cells, strict=False):
            yield Figure(benchmark, f"{name}, {last} plugins", value, f"{base_value} ({first} plugins)",
                         float(ratio) if ratio != "-" else None)


def parse_slow(out: str) -> Iterator[Figure]:
    """``  label  p50  p99  max  ratio  note`` rows: the p99, against the row marked ``(baseline)`` before it."""
    base = ("", "")
    row = re.compile(rf"^  (.+?)\s{{2,}}({_TIME})\s+({_TIME})\s+({_TIME})\s+([\d.]+)(?:\s{{2}}(.*))?$")
    for line in out.splitlines():
        if match := row.match(line):
            label, _, p99, _, ratio, note = match.groups()
            if "(baseline)" in label:
                base = (strip_baseline(label), p99)
            else:
                timed_out = re.search(r"\d+ timed out", note or "")
                value = f"{p99} ({timed_out.group(0)})" if timed_out else p99
                yield Figure("slow", f"/readyz p99, {label}", value, f"{base[1]} ({base[0]})", float(ratio))


def parse_list(out: str) -> Iterator[Figure]:
    """``  request  body  req/s  p99  ratio  [goal]`` rows: req/s against the ``(baseline)`` row of the same encoding
    (``identity`` in the label, else gzip); a row with a p99 goal gives its p99 against the goal too."""
    bases: dict[bool, tuple[str, str]] = {}
    row = re.compile(rf"^  (.+?)\s+([\d,.]+kB)\s+([\d,]+)\s+({_TIME})\s+([\d.]+)(?:\s{{2}}(.*))?$")
    for line in out.splitlines():
        if not (match := row.match(line)):
            continue
        label, body, rps, p99, ratio, goal = match.groups()
        identity = "identity" in label
        if "(baseline)" in label:
            bases[identity] = (strip_baseline(label), f"{rps} req/s")
            continue
        name, value = bases.get(identity, ("?", "?"))
        yield Figure("list", f"{label} ({body})", f"{rps} req/s", f"{value} ({name})", float(ratio))
        if found := re.match(r"p99 < (\d+) ms", goal or ""):
            limit = float(found.group(1)) / 1e3
            yield Figure("list", f"{label}: p99", p99, f"{found.group(1)} ms (the goal)", seconds(p99) / limit)


def parse_cluster(out: str) -> Iterator[Figure]:
    """``  label  calls/s  p50  p99  ratio  [per round]`` rows: calls/s against the ``(baseline)`` row (one
    instance), the median of the rounds' ratios."""
    base = ("", "")
    row = re.compile(rf"^  (.+?)\s*([\d,]+)\s+({_TIME})\s+({_TIME})\s+([\d.]+)(?:\s{{2}}(.*))?$")
    for line in out.splitlines():
        if not (match := row.match(line)):
            continue
        label, calls, _, _, ratio, rounds = match.groups()
        if "(baseline)" in label:
            base = (strip_baseline(label), f"{calls} calls/s")
            continue
        per_round = f" (rounds {rounds.strip()})" if rounds and rounds.strip() else ""
        yield Figure("cluster", f"tool calls, {label}{per_round}", f"{calls} calls/s",
                     f"{base[1]} ({base[0]})", float(ratio))


PARSERS: dict[str, Callable[[str], Iterator[Figure]]] = {
    "lifecycle": parse_lifecycle,
    "sandbox": parse_sandbox,
    "runtime": parse_runtime,
    "slow": parse_slow,
    "scale": parse_scale,
    "metrics": lambda out: parse_scale(out, "metrics"),  # the same kind of table
    "list": parse_list,
    "cluster": parse_cluster,
}


# -- running ------------------------------------------------------------------------------------------------------


def benchmarks() -> list[str]:
    """Every benchmark in ``bench/``: the known ones in ORDER, then any other by name."""
    found = {path.stem for path in HERE.glob("*.py") if not path.name.startswith("_")}
    return [name for name in ORDER if name in found] + sorted(found - set(ORDER))


def reported(path: Path, benchmark: str) -> list[Figure]:
    """The figures a benchmark wrote through ``bench/_figures.py`` (one JSON object a line)."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [Figure(benchmark, row["figure"], row["value"], row["baseline"], row["ratio"]) for row in rows]


def run(name: str, quick: bool, figures: Path | None = None) -> tuple[int, str, float]:
    """Run ``bench/<name>.py``, echoing its output; return its exit status, its output and the seconds it took.
    With ``figures``, the benchmark's own reported figures go to that file (``BENCH_FIGURES``)."""
    script = HERE / f"{name}.py"
    command = [sys.executable, str(script.relative_to(ROOT))]
    if quick and "--quick" in script.read_text():
        command.append("--quick")
    print(f"\n==> {' '.join(['python', *command[1:]])}", flush=True)
    began = time.monotonic()
    # A session of its own: a Ctrl-C in the terminal reaches only this process, which stops the benchmark with a
    # SIGTERM (on which it stops its servers) instead of killing it midway.
    env = dict(os.environ, BENCH_FIGURES=str(figures)) if figures is not None else None
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True, env=env)
    assert process.stdout is not None
    lines = []
    watchdog = threading.Timer(TIMEOUT, stop, (process,))  # a benchmark that hangs is stopped, and counts as failed
    watchdog.start()
    try:
        for line in process.stdout:
            print(line, end="", flush=True)
            lines.append(line)
        code = process.wait()
    except BaseException:
        stop(process)
        raise
    finally:
        watchdog.cancel()
    if time.monotonic() - began >= TIMEOUT:
        print(f"bench/{name}.py was stopped after {TIMEOUT:.0f} s", file=sys.stderr)
        code = code or 1
    return code, "".join(lines), time.monotonic() - began


def stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_WITHIN)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def machine() -> str:
    """CPU count and model, Python version."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    system = f"{platform.system()} {platform.machine()}"
    return f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, {system}"


def print_table(figures: list[Figure]) -> None:
    """The combined table."""
    header = ("benchmark", "figure", "value", "baseline", "ratio")
    rows = [
        (f.benchmark, f.figure, f.value, f.baseline, "" if f.ratio is None else f"{f.ratio:.2f}") for f in figures
    ]
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(4)]
    line = "  ".join(f"{header[i]:<{widths[i]}}" for i in range(4)) + "  " + f"{header[4]:>7}"
    print(line)
    print("-" * len(line))
    for row in rows:
        print("  ".join(f"{row[i]:<{widths[i]}}" for i in range(4)) + "  " + f"{row[4]:>7}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only these benchmarks (repeat, or separate with commas): " + ", ".join(benchmarks()))
    parser.add_argument("--quick", action="store_true", help="shorter runs, where a benchmark supports them")
    args = parser.parse_args()
    names = benchmarks()
    only = [name for value in args.only for name in value.split(",") if name]
    unknown = sorted(set(only) - set(names))
    if unknown:
        parser.error(f"no such benchmark: {', '.join(unknown)} (there are: {', '.join(names)})")
    if only:
        names = [name for name in names if name in only]
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # stop the running benchmark too

    started = datetime.now(UTC)
    figures: list[Figure] = []
    took: list[str] = []
    failed = False
    scratch = Path(tempfile.mkdtemp(prefix="bench-figures-"))
    for name in names:
        code, out, elapsed = run(name, args.quick, scratch / f"{name}.jsonl")
        took.append(f"{name} {elapsed:.0f} s")
        if code != 0:
            failed = True
            figures.append(Figure(name, f"FAILED: exit status {code}", "", "", None))
            continue
        parse = PARSERS.get(name)
        parsed = (list(parse(out)) if parse is not None else []) + reported(scratch / f"{name}.jsonl", name)
        if not parsed:
            note = "no figures reported" if parse is None else "no figures found in its output"
            figures.append(Figure(name, f"({note}: see its output above)", "", "", None))
        figures.extend(parsed)

    print(f"\n==> python -m bench{' --quick' if args.quick else ''}{''.join(f' --only {n}' for n in only)}")
    print(f"{started:%a %b %d %H:%M:%S UTC %Y}; {machine()}")
    print(f"took: {', '.join(took)}\n")
    print_table(figures)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
