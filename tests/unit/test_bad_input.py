"""Bad input without a managed system: a ``--root`` that is missing or not on btrfs.

Exit 3 with ``error:`` + ``hint:`` and no traceback, before anything needs root or an image; the
refusals of roots on a real image (btrfs, but no snapshots or snapper config) are in
tests/privileged/test_bad_input.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from transactional_update.snapshots import btrfs

NOT_BTRFS_HINT = "hint: transactional-update needs a btrfs root with snapper snapshots (see --root)"
# One of each kind of command: each must refuse a root it cannot manage in the same way.
COMMANDS = (["status"], ["list"], ["rollback", "1"], ["cleanup"], ["run", "--", "true"])


def _tu(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "transactional_update", "--root", str(root), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _refused(r: subprocess.CompletedProcess[str], code: int, *lines: str) -> None:
    """Exit *code* with exactly *lines* on stderr (``error:`` then ``hint:``) and no output."""
    assert (r.returncode, r.stderr.splitlines()) == (code, list(lines)), r.stderr
    assert r.stdout == ""


# -- --root that is not a managed system: 3 -------------------------------------------------------


def test_root_not_on_btrfs(tmp_path: Path) -> None:
    if btrfs.is_btrfs(tmp_path):
        pytest.skip("the temporary directory is on btrfs")
    (tmp_path / ".snapshots").mkdir()
    (tmp_path / "etc/snapper/configs").mkdir(parents=True)
    (tmp_path / "etc/snapper/configs/root").write_text('SUBVOLUME="/"\n')
    for args in COMMANDS:
        r = _tu(tmp_path, *args)
        _refused(r, 3, f"error: {tmp_path} is not on a btrfs filesystem", NOT_BTRFS_HINT)


def test_root_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-root"
    for args in COMMANDS:
        _refused(
            _tu(missing, *args),
            3,
            f"error: root {missing} is not a directory",
            "hint: pass the mounted system with --root PATH",
        )
    # A file is no root either.
    afile = tmp_path / "file"
    afile.write_text("x\n")
    _refused(
        _tu(afile, "status"),
        3,
        f"error: root {afile} is not a directory",
        "hint: pass the mounted system with --root PATH",
    )
    assert not missing.exists()
