"""The files generated from the option table, written where they ship from.

::

    python -m transactional_update.cli.generate          # rewrite them (in the source tree, .)
    python -m transactional_update.cli.generate --check  # exit 1 when one differs

pyproject.toml installs them: the man page into share/man/man8, the completions into
share/bash-completion/completions and share/zsh/vendor-completions.  A unit test fails when a
shipped file differs from what its generator makes now (after a change of the option table).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from transactional_update.cli import completion, manpage
from transactional_update.cli.reference import REGENERATE

# The shipped files, relative to the source tree, and what makes each.
GENERATORS: dict[str, Callable[[], str]] = {
    "man/transactional-update.8": manpage.render,
    "completions/bash/transactional-update": completion.bash,
    "completions/zsh/_transactional-update": completion.zsh,
}
SHIPPED = tuple(GENERATORS)


def generate(name: str) -> str:
    """The text of the shipped file *name*, as its generator makes it now."""
    return GENERATORS[name]()


def stale(base: Path) -> list[str]:
    """The shipped files under *base* that differ from what the generators make now."""
    out = []
    for name in SHIPPED:
        path = base / name
        if not path.is_file() or path.read_text(encoding="utf-8") != generate(name):
            out.append(name)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    base = Path(next((a for a in args if a != "--check"), "."))
    if check:
        bad = stale(base)
        for name in bad:
            print(f"{base / name} is out of date; regenerate: {REGENERATE}", file=sys.stderr)
        return 1 if bad else 0
    for name in SHIPPED:
        path = base / name
        path.parent.mkdir(parents=True, exist_ok=True)
        text = generate(name)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
