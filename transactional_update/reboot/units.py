"""The systemd units in ``systemd-units/`` and installing them where the distribution expects them.

Units go to ``/usr/lib/systemd/system`` (the vendor unit directory of Debian with merged /usr,
openSUSE and Fedora; Debian 12's ``/lib`` is a link to it) *inside a new snapshot*: on this
system's read-only root that is the only way to add them, and it makes them part of the image a
rollback returns to.  Enabling is the ``[Install]`` section's ``WantedBy=`` as links in
``/etc/systemd/system/TARGET.wants/``, exactly what ``systemctl enable`` creates, made without
needing systemd inside the root.  Packagers install into a plain directory (``--unit-dir``).

Besides our own units there are drop-ins for other packages' units (``NAME.service.d/*.conf``):
they take effect whenever that unit runs and need no enabling.  The one for snapper's
``snapper-cleanup.service`` follows the snapshots snapper's own cleanup deletes (GRUB's menu, the
changelog).

Everything here but :func:`write` is pure.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from transactional_update.errors import SystemError_
from transactional_update.paths import data_dir, resolve_under

UNITS = (
    "transactional-update.service",
    "transactional-update.timer",
    "transactional-update-cleanup.service",
    "transactional-update-cleanup.timer",
    "transactional-update-reboot-manager.service",
    "transactional-update-etc.service",
    "transactional-update-health.service",
)
ETC_UNIT = "transactional-update-etc.service"
HEALTH_UNIT = "transactional-update-health.service"
# Drop-ins for units other packages ship, as paths relative to the unit directory.
DROP_INS = ("snapper-cleanup.service.d/transactional-update.conf",)
UNIT_DIR = "/usr/lib/systemd/system"
WANTS_DIR = "/etc/systemd/system"
SHIPPED_EXEC = "/usr/bin/transactional-update"


def source_dir() -> Path:
    """``systemd-units/`` of a source checkout (editable install) or a wheel's data files."""
    found = data_dir("systemd-units", UNITS[0])
    if found is None:
        raise SystemError_(
            f"the unit files are not installed next to {Path(__file__).resolve().parent}",
            "reinstall transactional-update (pip install); the units ship with it",
        )
    return found


def render(text: str, exec_path: str) -> str:
    """The unit with its ``Exec*=`` commands pointing at *exec_path* (where this tool is
    installed); ``ExecStopPost=-/usr/bin/...`` keeps its prefix."""
    if exec_path == SHIPPED_EXEC:
        return text
    return "".join(
        line.replace(SHIPPED_EXEC, exec_path, 1) if line.startswith("Exec") else line
        for line in text.splitlines(keepends=True)
    )


def is_drop_in(name: str) -> bool:
    return "/" in name


def wanted_by(text: str) -> list[str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(text)
    return parser.get("Install", "WantedBy", fallback="").split()


@dataclass(frozen=True)
class File:
    path: str  # absolute, in the target root
    content: str | None = None  # a regular file's text
    link: str | None = None  # a symbolic link's target


def files(texts: dict[str, str], exec_path: str, unit_dir: str, enable: bool) -> list[File]:
    """What installing *texts* (unit name -> shipped text) creates."""
    out = [File(f"{unit_dir}/{name}", render(text, exec_path)) for name, text in texts.items()]
    if enable:
        for name, text in texts.items():
            # A drop-in has no [Install]: it applies whenever its unit runs.
            for target in [] if is_drop_in(name) else wanted_by(text):
                link = f"{WANTS_DIR}/{target}.wants/{name}"
                out.append(File(link, link=f"{unit_dir}/{name}"))
    return out


SBIN_LINK = "/usr/sbin/transactional-update"


def sbin_link(root: Path, exec_path: str) -> list[File]:
    """openSUSE's path of the tool, ``/usr/sbin/transactional-update``, as a link to *exec_path*.

    Clients look there: Ansible's zypper module uses the tool only when that file exists.
    Nothing when *exec_path* is that path, or ``/usr/sbin`` is the directory of *exec_path*
    (a merged ``/usr/sbin -> bin``): the tool is there already.
    """
    link = PurePosixPath(SBIN_LINK)
    target = PurePosixPath(exec_path)
    if target == link or resolve_under(root, link.parent) == resolve_under(root, target.parent):
        return []
    return [File(SBIN_LINK, link=exec_path)]


def shipped() -> dict[str, str]:
    """Unit name (or drop-in path relative to the unit directory) -> its shipped text."""
    src = source_dir()
    return {name: (src / name).read_text(encoding="utf-8") for name in UNITS + DROP_INS}


def up_to_date(root: Path, wanted: list[File]) -> bool:
    """Whether *root* already has exactly these files and links."""
    for f in wanted:
        p = resolve_under(root, PurePosixPath(f.path).parent) / PurePosixPath(f.path).name
        if f.link is not None:
            if not p.is_symlink() or os.readlink(p) != f.link:
                return False
        elif p.is_symlink() or not p.is_file() or p.read_text(encoding="utf-8") != f.content:
            return False
    return True


def write(root: Path, wanted: list[File]) -> list[str]:
    """Create *wanted* under *root* (a root's own links resolved inside it); returns the paths."""
    done = []
    for f in wanted:
        parent = resolve_under(root, PurePosixPath(f.path).parent)
        parent.mkdir(parents=True, exist_ok=True)
        p = parent / PurePosixPath(f.path).name
        tmp = parent / f".{p.name}.tu-tmp"
        tmp.unlink(missing_ok=True)
        if f.link is not None:
            tmp.symlink_to(f.link)
        else:
            assert f.content is not None
            tmp.write_text(f.content, encoding="utf-8")
            tmp.chmod(0o644)
        tmp.replace(p)
        done.append(f.path)
    return done
