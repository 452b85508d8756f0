#!/usr/bin/python3
"""Power cuts for the VM tests' powercut scenario (testkit/vm.py), run in the guest.

A cut is ``b`` written to /proc/sysrq-trigger: the kernel resets the machine at once, without
syncing, so the guest's page cache is lost while every write qemu already received stays in the
image (qemu runs with -no-reboot and exits).  The trigger is opened before waiting, so the cut
itself is a single write(2) once the awaited moment comes.

    cut.py snapshot READY           reset as soon as a new /.snapshots/N/snapshot appears
    cut.py file PATH READY [DONE]   reset as soon as PATH exists
    cut.py default READY [DONE]     reset as soon as the btrfs default subvolume of / changes
    cut.py line TEXT                copy stdin to stdout; reset the moment a line holds TEXT
    cut.py at UPTIME DELAY          reset DELAY seconds after /proc/uptime was UPTIME

The watchers create READY once they are watching, so the step starts the tool only then.  With
DONE they also reset once DONE exists (the step creates it when the tool has exited): a window
the watcher missed still ends the boot in a cut, after the tool finished.  The line reader
writes every line before the awaited one to the results disk's note area (NOTE_AT),
synchronously: what the tool said before the cut survives it (e.g. the fork's number).
"""

import os
import sys
import time

SNAPSHOTS = "/.snapshots"
RESULTS = "/dev/disk/by-id/virtio-tu-out"
STEP_DISK = "/dev/disk/by-id/virtio-tu-step"
NOTE_AT = 32 << 20  # testkit/vm.py reads the note from here; the results tar stays far below
NOTE_SIZE = 1 << 20


def trigger() -> int:
    # Run by hand on a workstation this would reset it: only a VM test guest has the step disk.
    if not os.path.exists(STEP_DISK):
        sys.exit(f"cut.py: no {STEP_DISK}: not a VM test guest, refusing to reset this machine")
    return os.open("/proc/sysrq-trigger", os.O_WRONLY)


def cut(fd: int) -> None:
    os.write(fd, b"b")
    time.sleep(60)  # not reached: the reset happened inside write(2)
    sys.exit("TU-VM the power cut did not happen")


def ready(path: str) -> None:
    with open(path, "w") as f:
        f.write(f"{os.getpid()}\n")


def with_snapshot(names: set[str]) -> set[str]:
    return {n for n in names if os.path.exists(f"{SNAPSHOTS}/{n}/snapshot")}


def watch_snapshot(ready_path: str) -> None:
    fd = trigger()
    before = with_snapshot(set(os.listdir(SNAPSHOTS)))
    ready(ready_path)
    while True:
        # snapper makes the directory N first, then the subvolume N/snapshot inside it
        if with_snapshot(set(os.listdir(SNAPSHOTS)) - before):
            cut(fd)


def missed(done: str | None) -> bool:
    return done is not None and os.path.lexists(done)


def watch_file(path: str, ready_path: str, done: str | None = None) -> None:
    fd = trigger()
    ready(ready_path)
    polls = 0
    while not os.path.lexists(path):
        polls += 1
        # the tool's exit is rare news: looking for it every time would widen the window
        if polls % 1000 == 0 and missed(done):
            break
    cut(fd)


def watch_default(ready_path: str, done: str | None = None) -> None:
    import btrfsutil  # python3-btrfsutil: the guest image has it

    fd = trigger()
    start = btrfsutil.get_default_subvolume("/")
    ready(ready_path)
    polls = 0
    while btrfsutil.get_default_subvolume("/") == start:
        polls += 1
        if polls % 100 == 0 and missed(done):
            break
    cut(fd)


def read_lines(text: str) -> None:
    fd = trigger()
    note = os.open(RESULTS, os.O_WRONLY | os.O_SYNC)
    written = b""
    for raw in sys.stdin.buffer:
        if text.encode() in raw:
            cut(fd)
        sys.stdout.buffer.write(raw)
        sys.stdout.flush()
        written = (written + raw)[: NOTE_SIZE - 1]
        os.pwrite(note, written + b"\0", NOTE_AT)


def uptime() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def at(when: float) -> None:
    fd = trigger()
    while (left := when - uptime()) > 0:
        time.sleep(min(left, 0.05))
    cut(fd)


def main(argv: list[str]) -> None:
    match argv:
        case ["snapshot", ready_path]:
            watch_snapshot(ready_path)
        case ["file", path, ready_path, *done] if len(done) <= 1:
            watch_file(path, ready_path, *done)
        case ["default", ready_path, *done] if len(done) <= 1:
            watch_default(ready_path, *done)
        case ["line", text]:
            read_lines(text)
        case ["at", when, delay]:
            at(float(when) + float(delay))
        case _:
            sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
