"""Shell-style ``KEY=VALUE`` files: the one parser for all of them, and the layered configuration.

:func:`parse` reads every such file the tool meets: its own configuration (strict), snapper's
configs (foreign: other lines are snapper's business), the state file and os-release (lenient).

Files are read from the managed root, later ones overriding earlier ones key by key, as openSUSE's
tool does: ``/usr/etc/transactional-update.conf`` (distribution defaults), then
``/usr/etc/transactional-update.conf.d/*.conf`` (packages' drop-ins, as openSUSE documents them),
then ``/etc/transactional-update.conf.d/*.conf`` (the admin's drop-ins), then
``/etc/transactional-update.conf`` (the admin's last word); each directory in file-name order.
Validation into a :class:`~.settings.Config` is :mod:`.settings`'s job; this module
stays light so that ``status`` learns that a system has no settings without importing it.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from transactional_update.errors import ConfigError


class Lines(StrEnum):
    """How a file's lines that are not one ``KEY=VALUE`` are taken."""

    STRICT = "strict"  # our configuration: anything else is an error the admin must fix
    FOREIGN = "foreign"  # another tool's: its other lines are skipped, bad quoting is an error
    LENIENT = "lenient"  # state and os-release: whatever cannot be read is skipped


DEFAULT_SNAPPER_CONFIG = "root"

CONFIG_FILES = (
    "usr/etc/transactional-update.conf",
    "usr/etc/transactional-update.conf.d",
    "etc/transactional-update.conf.d",
    "etc/transactional-update.conf",
)


def parse(text: str, source: str, lines: Lines = Lines.STRICT) -> dict[str, tuple[str, str]]:
    """``{KEY: (value, "file:line")}`` from shell-style assignments; comments and blanks skipped."""
    import shlex  # only when a file exists: most systems have none

    values: dict[str, tuple[str, str]] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        where = f"{source}:{lineno}"
        try:
            words = shlex.split(raw, comments=True)
        except ValueError as exc:
            if lines is Lines.LENIENT:
                continue
            raise ConfigError(f"{where}: {exc}", "fix the quoting of that line") from exc
        if not words:
            continue
        key, sep, value = words[0].partition("=")
        if len(words) != 1 or not sep or not key.isidentifier():
            if lines is not Lines.STRICT:
                continue
            raise ConfigError(
                f"{where}: expected KEY=VALUE, got {raw.strip()!r}",
                'write one assignment per line, quoting values with spaces: KEY="a b"',
            )
        values[key] = (value, where)
    return values


def values(text: str, source: str, lines: Lines) -> dict[str, str]:
    """``{KEY: value}`` of :func:`parse`."""
    return {k: v for k, (v, _) in parse(text, source, lines).items()}


def read(root: Path) -> dict[str, tuple[str, str]]:
    """Every assignment of the layered files, later files winning key by key."""
    values: dict[str, tuple[str, str]] = {}
    for rel in CONFIG_FILES:
        path = root / rel
        if rel.endswith(".d"):
            files = sorted(path.glob("*.conf")) if path.is_dir() else []
        else:
            files = [path]
        for f in files:
            try:
                text = f.read_text(encoding="utf-8")
            except (FileNotFoundError, NotADirectoryError):
                # Missing, or a parent is a file (--root names a file; open_root says so).
                continue
            except IsADirectoryError:
                raise ConfigError(f"/{rel} is a directory", "remove it or make it a file") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(
                    f"cannot read {f}: {exc}", "fix the file's permissions or encoding"
                ) from exc
            values.update(parse(text, "/" + rel if f == path else "/" + str(f.relative_to(root))))
    return values
