"""GRUB's boot counting, run: the menu this tool renders, behind Debian's 00_header, passes
grub-script-check, and is executed boot after boot by a small interpreter of the GRUB script it
uses (``if``/``elif``/``else``, ``[ = ]``, ``[ -z ]``, ``set``, ``load_env``, ``save_env``,
``menuentry``, ``submenu``), with the environment block read and written by ``grub-editenv``
itself through every state: counting down, falling back, boot-once, a manual pick, a trial left
over for another snapshot, a garbled counter.  The VM scenarios ``unbootable`` and ``unhealthy``
prove the same on real GRUB."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.unit.test_bootmenu_unit import build, script_check, snap
from transactional_update.boot import bootmenu, counting

pytestmark = pytest.mark.skipif(
    shutil.which("grub-editenv") is None or shutil.which("grub-script-check") is None,
    reason="needs grub-editenv and grub-script-check (grub-common)",
)

# What Debian's 00_header puts before every menu (/etc/grub.d/00_header, GRUB 2.06).
HEADER = """if [ -s $prefix/grubenv ]; then
  set have_grubenv=true
  load_env
fi
if [ "${next_entry}" ] ; then
   set default="${next_entry}"
   set next_entry=
   save_env next_entry
   set boot_once=true
else
   set default="0"
fi
"""


def editenv(env: Path, *args: str) -> str:
    return subprocess.run(
        ["grub-editenv", str(env), *args], capture_output=True, text=True, check=True
    ).stdout


def env_of(env: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in editenv(env, "list").splitlines())


@dataclass
class Entry:
    id: str
    body: list[str]


@dataclass
class Grub:
    """Runs one boot of a grub.cfg: the top level, then the body of the entry it boots."""

    env: Path
    vars: dict[str, str] = field(default_factory=dict)
    entries: dict[str, Entry] = field(default_factory=dict)

    def expand(self, line: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: self.vars.get(m.group(1), ""), line)

    def test(self, words: list[str]) -> bool:
        assert words[0] == "[" and words[-1] == "]", words
        inner = words[1:-1]
        if len(inner) == 1:
            return inner[0] != ""
        if inner[0] == "-z":
            return inner[1] == ""
        if inner[0] == "-s":
            return self.env.exists()
        assert inner[1] == "=", inner
        return inner[0] == inner[2]

    def run(self, lines: list[str], prefix: str = "") -> None:
        stack: list[tuple[bool, bool]] = []  # (this branch runs, a branch was taken)
        i = 0
        while i < len(lines):
            raw = lines[i].strip()
            i += 1
            if not raw or raw.startswith("#"):
                continue
            active = all(run for run, _ in stack)
            words = shlex.split(self.expand(raw).replace("; then", " then").replace(";", ""))
            head = words[0]
            if head in ("menuentry", "submenu"):
                depth, body = 1, []
                while depth:
                    inner = lines[i].strip()
                    i += 1
                    depth += inner.endswith("{") - (inner == "}")
                    if depth:
                        body.append(lines[i - 1])
                ident = words[words.index("--id") + 1]
                if head == "submenu":
                    self.run(body, prefix + ident + ">")
                else:
                    self.entries[prefix + ident] = Entry(prefix + ident, body)
                continue
            if head == "if":
                ok = active and self.test(words[1 : words.index("then")])
                stack.append((ok, ok))
            elif head == "elif":
                outer = all(run for run, _ in stack[:-1])
                _, taken = stack[-1]
                ok = outer and not taken and self.test(words[1 : words.index("then")])
                stack[-1] = (ok, taken or ok)
            elif head == "else":
                outer = all(run for run, _ in stack[:-1])
                _, taken = stack[-1]
                stack[-1] = (outer and not taken, True)
            elif head == "fi":
                stack.pop()
            elif not active or head == "export":
                continue
            elif head == "set":
                name, _, value = words[1].partition("=")
                self.vars[name] = value
            elif head == "load_env":
                self.vars.update(env_of(self.env))
            elif head == "save_env":
                for name in words[1:]:
                    editenv(self.env, "set", f"{name}={self.vars.get(name, '')}")

    def boot(self, cfg: str, pick: str | None = None) -> str:
        """One boot: the id of the entry that boots (*pick*: chosen by hand in the menu)."""
        self.vars, self.entries = {"prefix": "(hd0,gpt2)/grub"}, {}
        self.run(cfg.splitlines())
        chosen = pick or self.vars["default"]
        entry = self.entries[chosen] if chosen != "0" else next(iter(self.entries.values()))
        self.run(entry.body)
        return entry.id


def menu_cfg(tries: int = 3, default: int = 3, good: int | None = 2) -> str:
    menu = build([snap(1), snap(2), snap(3)], default=default, known_good=good, boot_tries=tries)
    return HEADER + bootmenu.render(menu)


MAIN = bootmenu.MAIN_ID
GOOD_ENTRY = bootmenu.next_entry_for(2)


def trial(env: Path, number: int, tries: int, good: int = 2) -> None:
    editenv(env, "create")
    editenv(env, "set", f"tu_trial={number}", f"tu_tries={tries}", f"tu_good={good}")


def test_the_menu_with_counting_passes_grub_script_check(tmp_path: Path) -> None:
    for tries in range(1, 10):
        text = menu_cfg(tries)
        assert script_check(text, tmp_path).returncode == 0, text
        assert f'if [ "${{tu_tries}}" = "{tries}" ]' in text or tries == 1
    menu = build([snap(1), snap(2), snap(3)], default=3, known_good=2, failed_boots={1})
    titles = {e.number: e.title for e in menu.entries}
    assert titles[2].endswith("(known-good)") and titles[1].endswith("(booted, failed boot)")
    assert "tu_trial" not in menu_cfg(tries=0)  # BOOT_TRIES=0: no counting
    assert "tu_trial" not in menu_cfg(default=2)  # the default is the known-good snapshot
    assert "tu_trial" not in menu_cfg(good=None)  # nothing to fall back to


def test_a_trial_counts_down_then_falls_back_to_the_known_good_entry(tmp_path: Path) -> None:
    env = tmp_path / "grubenv"
    trial(env, 3, 3)
    grub, cfg = Grub(env), menu_cfg()
    seen = []
    for _ in range(5):
        seen.append((grub.boot(cfg), env_of(env)["tu_tries"]))
    assert seen == [
        (MAIN, "2"),
        (MAIN, "1"),
        (MAIN, "0"),
        (GOOD_ENTRY, "0"),  # spent: the known-good snapshot boots, the counter stays
        (GOOD_ENTRY, "0"),
    ]
    # The known-good entry boots snapshot 2 with its own kernel: the fallback is a real entry.
    body = "\n".join(grub.entries[GOOD_ENTRY].body)
    assert "@/.snapshots/2/snapshot" in body and "save_env" not in body
    # Every entry reboots on a kernel panic (and Debian's initramfs on a missing root).
    assert all("panic=10" in "\n".join(e.body) for e in grub.entries.values())


def test_one_try_only(tmp_path: Path) -> None:
    env = tmp_path / "grubenv"
    trial(env, 3, 1)
    grub, cfg = Grub(env), menu_cfg(tries=1)
    assert [grub.boot(cfg) for _ in range(2)] == [MAIN, GOOD_ENTRY]


def test_boot_once_and_manual_picks_use_no_try(tmp_path: Path) -> None:
    env = tmp_path / "grubenv"
    trial(env, 3, 2)
    grub, cfg = Grub(env), menu_cfg()
    editenv(env, "set", f"next_entry={bootmenu.next_entry_for(1)}")
    assert grub.boot(cfg) == bootmenu.next_entry_for(1)
    assert env_of(env)["tu_tries"] == "2" and env_of(env)["next_entry"] == ""
    assert grub.boot(cfg, pick=bootmenu.next_entry_for(3)) == bootmenu.next_entry_for(3)
    assert env_of(env)["tu_tries"] == "2"  # the submenu entry of 3 does not count either
    # Spent: a boot-once still wins over the fallback, and so does a manual pick of the main entry.
    editenv(env, "set", "tu_tries=0", f"next_entry={bootmenu.next_entry_for(1)}")
    assert grub.boot(cfg) == bootmenu.next_entry_for(1)
    assert grub.boot(cfg, pick=MAIN) == MAIN
    assert env_of(env)["tu_tries"] == "0"


def test_no_trial_a_stale_trial_and_a_garbled_counter(tmp_path: Path) -> None:
    env = tmp_path / "grubenv"
    editenv(env, "create")
    grub, cfg = Grub(env), menu_cfg()
    assert grub.boot(cfg) == MAIN and "tu_tries" not in env_of(env)  # not on trial: no count
    trial(env, 5, 0)  # left over for another snapshot (a rollback since): counts nothing
    assert grub.boot(cfg) == MAIN and env_of(env)["tu_tries"] == "0"
    trial(env, 3, 0)
    editenv(env, "set", "tu_tries=x")  # garbled: one more boot, then spent
    assert [grub.boot(cfg) for _ in range(2)] == [MAIN, GOOD_ENTRY]
    assert len(env.read_bytes()) == 1024  # grub-editenv kept it one block


def test_a_stale_menu_after_the_return_to_the_known_good_falls_back_at_once(
    tmp_path: Path,
) -> None:
    """The default went back to 2, but grub.cfg still boots 3 (its rewrite failed, or a power
    cut came first): the spent trial makes GRUB boot 2, never 3 uncounted."""
    env = tmp_path / "grubenv"
    trial(env, 3, 2)
    values = counting.trial_changes(2, 2, counting.Trial(3, 2, 2), 3)
    editenv(env, "set", *(f"{k}={v}" for k, v in values.items() if v is not None))
    grub, stale = Grub(env), menu_cfg()
    assert [grub.boot(stale) for _ in range(3)] == [GOOD_ENTRY] * 3


def test_trial_changes_after_each_change_of_the_default() -> None:
    none = counting.Trial(None, None, None)
    on3 = counting.Trial(3, 1, 2)
    # A new default other than the known-good one goes on trial with every try.
    assert counting.trial_changes(3, 2, none, 3) == {
        "tu_good": "2",
        "tu_trial": "3",
        "tu_tries": "3",
    }
    # Already on trial (a cleanup, a menu refresh): its count stays.
    assert counting.trial_changes(3, 2, on3, 3) == {"tu_good": "2"}
    # A stacked commit: the new snapshot is another one, on trial afresh.
    assert counting.trial_changes(4, 2, on3, 3)["tu_tries"] == "3"
    # Back to the known-good snapshot: the trial is spent, not removed, so that a menu that
    # still boots 3 (its rewrite failed) falls back at once instead of booting 3 uncounted.
    assert counting.trial_changes(2, 2, on3, 3) == {"tu_good": "2", "tu_tries": "0"}
    assert counting.trial_changes(2, 2, none, 3) == {"tu_good": "2"}
    # Counting switched off, or no default: no trial.
    for default, tries in ((3, 0), (None, 3)):
        changes = counting.trial_changes(default, 2, on3, tries)
        assert changes["tu_trial"] is None and changes["tu_tries"] is None
    # No known-good snapshot yet: on trial all the same (the boot check makes it known-good).
    assert counting.trial_changes(1, None, none, 3) == {
        "tu_good": None,
        "tu_trial": "1",
        "tu_tries": "3",
    }
    assert counting.parse({"tu_trial": "3", "tu_tries": "x"}) == counting.Trial(3, None, None)
