"""The managed system's fstab: what systemd makes of it (``systemd-fstab-generator``, real).

The read-write btrfs subvolume mounts must not all start at once: on Debian 12's kernel two of
them racing while the superblock is still read-only can fail with EBUSY and drop the boot into
emergency mode (see ``image.fstab``).  ``/var`` goes first, every other one waits for it.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from transactional_update.provision import image

UUID = "ab1c2a69-f497-4b1c-aa8f-24c9df4546fd"
GRUB_UUID = "0f3c5f0e-7b1d-4a43-9a53-2d1f0d3a9c11"
ESP_UUID = "1A2B-3C4D"
GENERATOR = Path("/lib/systemd/system-generators/systemd-fstab-generator")
SUBVOLUME_MOUNTS = ["/.snapshots", *(f"/{d}" for d in image.DATA_SUBVOLUMES)]


def entries(text: str) -> dict[str, list[str]]:
    """``{mount point: [device, type, options]}`` of an fstab text."""
    out = {}
    for line in text.splitlines():
        fields = line.split()
        out[fields[1]] = [fields[0], fields[2], fields[3]]
    return out


def test_read_write_subvolume_mounts_wait_for_var() -> None:
    fs = entries(image.fstab(UUID, GRUB_UUID, ESP_UUID))
    assert fs["/"] == [f"UUID={UUID}", "btrfs", "rw"]
    assert fs["/var"] == [f"UUID={UUID}", "btrfs", "subvol=/@/var"]
    for where in SUBVOLUME_MOUNTS:
        if where == "/var":
            continue
        device, fstype, options = fs[where]
        assert (device, fstype) == (f"UUID={UUID}", "btrfs")
        assert options.split(",") == [f"subvol=/@{where}", "x-systemd.after=var.mount"], where
    # other filesystems have nothing to wait for
    assert "x-systemd" not in fs["/boot/grub"][2] + fs["/boot/efi"][2] + fs["/tmp"][2]


def unit_name(where: str) -> str:
    """The mount unit systemd names after *where* (``systemd-escape``: ``\\x2esnapshots.mount``)."""
    r = subprocess.run(
        ["systemd-escape", "--path", "--suffix=mount", where],
        capture_output=True,
        text=True,
        check=True,
    )
    return r.stdout.strip()


def read_unit(path: Path) -> configparser.ConfigParser:
    p = configparser.ConfigParser(strict=False, interpolation=None)
    p.optionxform = str  # type: ignore[assignment,method-assign]
    # repeated keys (After=) are joined: strict=False keeps the last, so collect them by hand
    after = [
        line.split("=", 1)[1].strip()
        for line in path.read_text().splitlines()
        if line.startswith("After=")
    ]
    p.read_string(path.read_text())
    p["Unit"]["After"] = " ".join(after)
    return p


@pytest.mark.skipif(
    not GENERATOR.exists() or shutil.which("systemd-escape") is None,
    reason="needs systemd's fstab generator and systemd-escape (systemd)",
)
def test_systemd_starts_var_before_the_other_subvolume_mounts(tmp_path: Path) -> None:
    fstab = tmp_path / "fstab"
    fstab.write_text(image.fstab(UUID, GRUB_UUID, ESP_UUID))
    out = tmp_path / "units"
    out.mkdir()
    env = {**os.environ, "SYSTEMD_FSTAB": str(fstab), "SYSTEMD_PROC_CMDLINE": ""}
    r = subprocess.run(
        [str(GENERATOR), str(out), str(out), str(out)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    units = {where: read_unit(out / unit_name(where)) for where in ["/", *SUBVOLUME_MOUNTS]}
    assert units["/"]["Mount"]["Options"] == "rw"
    var_after = units["/var"]["Unit"]["After"].split()
    for where in SUBVOLUME_MOUNTS:
        unit = units[where]
        assert unit["Mount"]["Where"] == where
        assert unit["Mount"]["Type"] == "btrfs"
        assert (out / "local-fs.target.requires" / unit_name(where)).is_symlink(), where
        assert unit_name(where) not in var_after, f"var.mount waits for {where}: a cycle"
        if where != "/var":
            assert "var.mount" in unit["Unit"]["After"].split(), where
