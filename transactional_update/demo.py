"""The README's demo: a managed system on a loop image, one transaction on it, and its status.

``python -m transactional_update.demo`` builds (once) a 4 GiB sparse image under
``/var/lib/transactional-update-demo`` with the MicroOS layout and a minimal Debian root, mounts
it at ``.../root`` as it would boot, runs a transaction with ``--root`` and shows ``status``
and ``list``.  The system stays mounted so the admin can try more commands; ``--remove`` takes
it all down.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from transactional_update import image
from transactional_update.proc import run

BASE = Path("/var/lib/transactional-update-demo")
IMAGE = BASE / "disk.img"
ROOT = BASE / "root"


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
    fresh = not IMAGE.exists()
    if fresh:
        print("building the demo system (minimal Debian root, MicroOS layout) ...", flush=True)
        with open(IMAGE, "wb") as f:
            f.truncate(4 << 30)
    device = (
        _loop_device()
        or run(["losetup", "--show", "-f", str(IMAGE)], what="attach the demo image").stdout.strip()
    )
    if fresh:
        uuid = image.make_filesystem(device, label="tu-demo")
        with image.mounted_top(device, BASE / "top") as top:
            image.populate(top, image.cached_rootfs(), uuid)
    image.mount_system(device, ROOT)


def remove() -> None:
    if _is_mounted():
        image.unmount_system(ROOT)
    device = _loop_device()
    if device:
        run(["losetup", "-d", device], what="detach the demo image")
    IMAGE.unlink(missing_ok=True)
    print(f"removed the demo system in {BASE}")


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
    ]
    for step in steps:
        if tu(*step) != 0:
            return 1
    print(
        f"\nThe demo system stays mounted at {ROOT}. Try for example:\n"
        f"  .venv/bin/transactional-update --root {ROOT} shell\n"
        f"  .venv/bin/transactional-update --root {ROOT} rollback last\n"
        f"Remove it with: .venv/bin/python -m transactional_update.demo --remove"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
