"""ruff and mypy --strict are part of the test suite, so CI enforces them."""

from __future__ import annotations

import re
import subprocess
import sys

from testkit.systems import REPO


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, check=False
    )


def test_ruff_check() -> None:
    r = _run("ruff", "check", "transactional_update", "tests", "testkit", "bench")
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_format() -> None:
    r = _run("ruff", "format", "--check", "transactional_update", "tests", "testkit", "bench")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict() -> None:
    r = _run("mypy")
    assert r.returncode == 0, r.stdout + r.stderr


def test_only_source_is_tracked() -> None:
    """A virtualenv, bytecode or disk image in git dwarfs the source and breaks clean checkouts."""
    r = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=False)
    if r.returncode != 0:  # an exported tree without .git: nothing is tracked
        return
    bad = re.compile(
        r"(^|/)(pyvenv\.cfg|site-packages/|__pycache__/|\.venv/|bin/python[0-9.]*$)"
        r"|\.(pyc|pyo|img|qcow2|raw)$"
    )
    tracked = [path for path in r.stdout.splitlines() if bad.search(path)]
    assert tracked == [], f"not source, untrack it (git rm -r --cached): {tracked[:10]}"


def test_grub_script_ships_at_the_top_level_like_the_units() -> None:
    """What a distribution installs (grub.d/, systemd-units/) lies beside the package, executable
    where it runs, and the wheel's data files carry it to where the tool looks for it."""
    import tomllib

    from transactional_update.boot import grub
    from transactional_update.reboot import units

    script = REPO / "grub.d" / grub.SCRIPT_NAME
    assert script.is_file() and script.stat().st_mode & 0o111
    assert not (REPO / "transactional_update/grub.d").exists()
    assert grub.script_text() == script.read_text(encoding="utf-8")
    assert units.source_dir() == REPO / "systemd-units"
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    files = data["tool"]["setuptools"]["data-files"]
    assert files["share/transactional-update/grub.d"] == [f"grub.d/{grub.SCRIPT_NAME}"]
