"""The README's demo: a managed system on a loop image, one transaction on it, and its status.

``python -m transactional_update.provision.demo`` builds (once) a 4 GiB sparse image under
``/var/lib/transactional-update-demo`` with ``transactional-update create-system``: a bootable
disk (GPT, GRUB on its own ext4 partition, btrfs with the MicroOS layout, a minimal Debian root
with the cloud kernel).  It mounts the system at ``.../root`` as it would boot, runs a transaction
with ``--root`` and shows ``status``, ``list`` and the boot menu.  The system stays mounted so the
admin can try more commands; ``--remove`` takes it all down.  The image also boots in qemu.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from transactional_update.proc import run
from transactional_update.provision import image
from transactional_update.provision.create_system import partitions

BASE = Path("/var/lib/transactional-update-demo")
IMAGE = BASE / "disk.img"
ROOT = BASE / "root"
KERNEL = "linux-image-cloud-amd64"  # a fraction of the generic kernel, and it boots in qemu
# create-system's layout: 1 BIOS boot, 2 /boot/grub, 3 btrfs, 4 the ESP
BTRFS_PART, GRUB_PART, ESP_PART = 3, 2, 4


def _loop_device() -> str | None:
    out = run(["losetup", "-J", "-l", "-j", str(IMAGE)], what="losetup").stdout
    devices = json.loads(out or '{"loopdevices": []}')["loopdevices"]
    return str(devices[0]["name"]) if devices else None


def _is_mounted() -> bool:
    return run(["findmnt", "-rn", str(ROOT)], check=False).returncode == 0


def ensure_system() -> None:
    if _is_mounted():
        return
    BASE.mkdir(parents=True, exist_ok=True)
    if not IMAGE.exists():
        print("building the demo system with create-system (first time: a few minutes) ...")
        argv = ["create-system", "--size", "4G", "--kernel", KERNEL, "--serial-console"]
        if tu_plain(*argv, str(IMAGE)) != 0:
            IMAGE.unlink(missing_ok=True)
            raise SystemExit("demo: create-system failed (see above)")
    device = (
        _loop_device()
        or run(
            ["losetup", "--show", "-f", "-P", str(IMAGE)], what="attach the demo image"
        ).stdout.strip()
    )
    run(["partx", "-a", device], check=False)  # the kernel makes no partition devices for loops
    parts = partitions(device)
    image.mount_system(parts[BTRFS_PART], ROOT)
    run(["mount", parts[GRUB_PART], str(ROOT / "boot/grub")], what="mount /boot/grub")
    if ESP_PART in parts:  # demos made before create-system added the ESP have none
        # Best effort: a host kernel without a FAT driver cannot mount it, and the demo's
        # transactions do not need it (fstab says nofail for the same reason).
        run(["mount", parts[ESP_PART], str(ROOT / "boot/efi")], check=False)


def remove() -> None:
    if _is_mounted():
        image.unmount_system(ROOT)
    device = _loop_device()
    if device:
        run(["partx", "-d", device], check=False)
        run(["losetup", "-d", device], what="detach the demo image")
    IMAGE.unlink(missing_ok=True)
    print(f"removed the demo system in {BASE}")


def tu_plain(*args: str) -> int:
    argv = [sys.executable, "-m", "transactional_update", *args]
    print(f"\n$ transactional-update {shlex.join(args)}", flush=True)
    return subprocess.run(argv, check=False).returncode


def tu(*args: str) -> int:
    argv = [sys.executable, "-m", "transactional_update", "--root", str(ROOT), *args]
    print(f"\n$ transactional-update --root {ROOT} {shlex.join(args)}", flush=True)
    return subprocess.run(argv, check=False).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--remove", action="store_true", help="unmount and delete the demo")
    if parser.parse_args().remove:
        remove()
        return 0
    ensure_system()
    steps = [
        (
            "--description",
            "demo: write /etc/motd",
            "run",
            "--",
            "sh",
            "-c",
            "echo 'changed in a transaction' > /etc/motd && cat /etc/motd",
        ),
        ("status",),
        ("list",),
        ("boot-menu",),
    ]
    for step in steps:
        if tu(*step) != 0:
            return 1
    print(
        f"\nThe demo system stays mounted at {ROOT}. Try for example:\n"
        f"  .venv/bin/transactional-update --root {ROOT} shell\n"
        f"  .venv/bin/transactional-update --root {ROOT} rollback last\n"
        f"Remove it with: .venv/bin/python -m transactional_update.provision.demo --remove"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
