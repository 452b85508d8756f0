"""The timing harness shared by the benchmarks: run whole processes, time rows round-robin.

Every row is timed *warmup* + *repeat* times, interleaved with the other rows of its section so
that baselines see the same machine load; an untimed *after* step undoes what the action changed.
Numbers are medians and p90s in milliseconds.  Used by ``bench.py`` and ``changelog_bench.py``.
"""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

# Variables of this shell that would change what a measured process does; rows add back theirs.
CLEARED_ENV = (
    "DBUS_SYSTEM_BUS_ADDRESS",
    "TU_SNAPPER_BACKEND",
    "TRANSACTIONAL_UPDATE",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONPYCACHEPREFIX",
)
PY_ENV: dict[str, str] = {}  # how measured Python processes treat bytecode (see bytecode_env)


class BenchError(Exception):
    """A measured command failed: the row is reported as an error, the others go on."""


def run(
    argv: Sequence[str | Path], env: Mapping[str, str] | None = None, timeout: float = 600
) -> bytes:
    """Run *argv* to completion (stdin from /dev/null, output captured); BenchError on failure."""
    args = [str(a) for a in argv]
    proc = subprocess.run(
        args,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=env,
        check=False,
        timeout=timeout,
    )
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
        raise BenchError(
            f"{shlex.join(args)} exited {proc.returncode}: {err[-1] if err else '(no message)'}"
        )
    return proc.stdout


def base_env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in CLEARED_ENV}, **PY_ENV}


REPO = Path(__file__).resolve().parent.parent


def installed_cli(workdir: Path, ref: str | None = None) -> Path:
    """The tool as users get it: a wheel installed into a fresh venv, not the editable checkout.

    The development venv's editable install puts an import hook into every start (~10 ms of
    importlib and pathlib before our first line), which no installed tool pays.  The fresh venv
    borrows the development venv's dependencies through a ``.pth`` file (no download, and no
    other ``.pth`` file there runs).

    With *ref* (a git revision of this repository), the wheel is built from that revision's
    tree (``git archive``), into a venv of its own, so that a baseline runs side by side with
    the checkout in one benchmark run.
    """
    name = "" if ref is None else "-" + "".join(c if c.isalnum() else "_" for c in ref)
    wheels, venv = workdir / f"wheel{name}", workdir / f"venv{name}"
    source = REPO
    if ref is not None:
        source = workdir / f"src{name}"
        source.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", source], input=archive, check=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", wheels, source], check=True, cwd=workdir)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    purelib = subprocess.run(
        [venv / "bin/python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    deps = subprocess.run(
        [sys.executable, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(purelib, "tu-bench-deps.pth").write_text(deps + "\n")
    wheel = next(wheels.glob("transactional_update-*.whl"))
    subprocess.run(
        [*pip, "--python", venv / "bin/python", "install", "--no-deps", "--no-index", wheel],
        check=True,
    )
    return venv / "bin/transactional-update"


def bytecode_env(workdir: Path, cache: bool) -> dict[str, str]:
    """An installed tool runs from .pyc files; a checkout under PYTHONDONTWRITEBYTECODE=1
    compiles every module of the tool on every start (~20 ms here).  The cache goes to the work
    directory (PYTHONPYCACHEPREFIX), so the repository gets no __pycache__ from the benchmark; the
    warm-up round fills it."""
    if not cache:
        return {"PYTHONDONTWRITEBYTECODE": "1"}
    return {"PYTHONPYCACHEPREFIX": str(workdir / "pycache")}


def p90(samples: Sequence[float]) -> float:
    if len(samples) < 2:
        return max(samples)
    return statistics.quantiles(samples, n=10, method="inclusive")[-1]


def round_ms(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


@dataclass
class Row:
    """One measured thing: a timed action, and an untimed *after* that runs after each call.

    *after* gets what the action returned and may record extra numbers in *extra* (per-command
    times of a transaction); it also undoes what the action changed.
    """

    key: str
    label: str
    section: str
    action: Callable[[], object]
    after: Callable[[object], None] | None = None
    samples: list[float] = field(default_factory=list)  # milliseconds
    extra: dict[str, list[float]] = field(default_factory=dict)  # milliseconds
    error: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    @property
    def p90(self) -> float | None:
        return p90(self.samples) if self.samples else None

    def extra_median(self, name: str) -> float | None:
        values = self.extra.get(name)
        return statistics.median(values) if values else None

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "section": self.section,
            "runs": len(self.samples),
            "median_ms": round_ms(self.median),
            "p90_ms": round_ms(p90(self.samples)) if self.samples else None,
            "min_ms": round_ms(min(self.samples)) if self.samples else None,
            "max_ms": round_ms(max(self.samples)) if self.samples else None,
            "samples_ms": [round(s, 2) for s in self.samples],
            "extra_ms": {k: [round(v, 2) for v in vs] for k, vs in self.extra.items()},
            "error": self.error,
        }


def measure(rows: Sequence[Row], repeat: int, warmup: int) -> None:
    """Time every row *warmup* + *repeat* times, round-robin; keep the last *repeat* timings."""
    for i in range(warmup + repeat):
        progress(f"  round {i + 1}/{warmup + repeat}" + (" (warm-up)" if i < warmup else ""))
        for row in rows:
            if row.error is not None:
                continue
            result: object = None
            ok = False
            try:
                start = time.perf_counter()
                result = row.action()
                elapsed = (time.perf_counter() - start) * 1000.0
                ok = True
            except (BenchError, subprocess.TimeoutExpired) as exc:
                row.error = str(exc)
                progress(f"  {row.label}: FAILED: {exc}")
            finally:
                if row.after is not None:
                    row.after(result)  # a failing reset leaves an unknown state: that one is fatal
            if ok and i >= warmup:
                row.samples.append(elapsed)
            elif ok:
                for values in row.extra.values():  # the warm-up's extra numbers are not kept
                    values.clear()


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def remove_workdir(workdir: Path) -> None:
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    left = [m for m in mounts if m == str(workdir) or m.startswith(f"{workdir}/")]
    if left:  # never rm -r through a mount
        progress(f"WARNING: still mounted, not removing {workdir}: {left}")
        return
    shutil.rmtree(workdir, ignore_errors=True)


def terminate(signum: int, _frame: FrameType | None) -> None:
    # SIGTERM/SIGHUP unwind like Ctrl-C, so every cleanup runs; a second one must not cut it short.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt(signal.Signals(signum).name)


T = TypeVar("T")


def machine(versions: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """The machine a run measured, with the first line of each tool's ``--version``."""
    info = {
        "kernel": platform.release(),
        "cpus": str(os.cpu_count()),
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    for key, argv in versions.items():
        try:
            info[key] = run(argv).decode().splitlines()[0]
        except (BenchError, OSError):
            info[key] = "?"
    return info


def run_as_root(name: str, needs: str, body: Callable[[], T]) -> T | int:
    """*body*'s result, or an exit code: 2 without root, 130 when interrupted (cleaned up)."""
    if os.geteuid() != 0:
        print(f"{name}: needs root ({needs})", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, terminate)
    try:
        return body()
    except KeyboardInterrupt:
        print(f"{name}: interrupted; cleaned up", file=sys.stderr)
        return 130
