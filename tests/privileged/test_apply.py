"""``apply`` on real btrfs images: the default snapshot's /usr and /etc made live, no reboot.

Each test's running system is the managed test system in a private mount namespace
(:mod:`testkit.running`), so the binds never reach the host and go with the namespace; what
the namespace saw comes back as JSON, and the disk is checked afterwards.  Real apt installs the
packages, a real process maps the library that an upgrade replaces, and real ``systemctl`` (with
no systemd to talk to) is the failure that must be undone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from testkit.running import run_steps
from testkit.systems import System, local_repo, make_deb

LIB = "usr/lib/tu-lib/libtu.so"
ZLIB = Path("/usr/lib/x86_64-linux-gnu/libz.so.1")


def hello(tmp: Path, version: str, extra: dict[str, str | bytes] | None = None) -> Path:
    script = f"#!/bin/sh\necho hello from tu-hello {version}\n"
    return make_deb(
        tmp / version, "tu-hello", version, files={"/usr/bin/tu-hello": script, **(extra or {})}
    )


def lib(tmp: Path, version: str) -> Path:
    """A package with a real shared library (zlib's bytes; each version a different file)."""
    data = ZLIB.read_bytes() + version.encode()
    return make_deb(tmp / f"lib-{version}", "tu-lib", version, files={f"/{LIB}": data})


def tu_ok(system: System, *args: str) -> str:
    r = system.tu(*args)
    assert r.returncode == 0, f"{args}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def install_hello(system: System, tmp: Path) -> None:
    """tu-hello 1.0 from a local repository, in a new default snapshot (not booted)."""
    local_repo(system, [hello(tmp, "1.0")])
    tu_ok(system, "-n", "pkg", "install", "tu-hello")


def applied(seen: dict[str, Any]) -> dict[str, Any]:
    assert seen["rc"] == 0, seen
    result: dict[str, Any] = seen["result"]
    return result


def status(seen: dict[str, Any]) -> dict[str, Any]:
    assert seen["rc"] == 0, seen
    data: dict[str, Any] = json.loads(seen["stdout"])
    return data


def changelog(system: System, number: int) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(tu_ok(system, "--json", "changelog", str(number)))
    return data


def test_additions_are_live_at_once_and_the_booted_snapshot_stays(
    managed_system: System, tmp_path: Path
) -> None:
    s = managed_system
    local_repo(s, [hello(tmp_path, "1.0")])
    (s.root / "usr/local/tu-local").write_text("kept\n")  # /usr/local is a subvolume of its own
    tu_ok(s, "-n", "pkg", "install", "tu-hello")
    seen = run_steps(
        s.root,
        [
            ["write", "etc/edited-before", "before the apply\n"],  # after the commit: live only
            ["write", "run/reboot-needed", "reboot"],  # as the commit writes it on a running system
            ["apply", {}],
            ["read", "usr/bin/tu-hello"],
            ["read", "usr/local/tu-local"],
            ["read", "etc/edited-before"],
            ["write", "etc/edited-after", "after the apply\n"],
            ["tu", ["--json", "status"]],
            ["tu", ["status"]],
            ["mounts"],
            ["read", "run/reboot-needed"],
        ],
    )
    seen.pop(1)
    result = applied(seen[1])
    assert result["snapshot"] == 2 and result["from"] == 1
    assert result["class"] == "additions" and result["kernel_pending"] is False
    assert result["packages"] == [{"name": "tu-hello", "kind": "added", "old": None, "new": "1.0"}]
    assert seen[1]["said"][0].startswith("applying snapshot 2 over snapshot 1: additions")
    assert seen[2] == "#!/bin/sh\necho hello from tu-hello 1.0\n"
    assert seen[3] == "kept\n", "/usr/local is still there over the new /usr"
    assert seen[4] == "before the apply\n", "the live edit was merged before /etc changed hands"
    st = status(seen[6])
    assert (st["booted"]["number"], st["live"], st["pending"]) == (1, 2, 2)
    assert st["applied"]["snapshot"] == 2 and st["applied"]["from"] == 1
    assert st["reboot_needed"] is False
    assert "live:     2 (applied live at " in seen[7]["stdout"]
    assert "it is live already (applied)" in seen[7]["stdout"]
    assert {"usr", "usr/local", "etc"} <= set(seen[8])
    assert seen[9] is None, "nothing needs a reboot any more: /run/reboot-needed is gone"
    # On disk: the booted snapshot is unchanged; the edit after the apply is in 2's own /etc.
    assert not (s.snapshot(1) / "usr/bin/tu-hello").exists()
    assert (s.snapshot(2) / "etc/edited-after").read_text() == "after the apply\n"
    assert (s.snapshot(2) / "etc/edited-before").read_text() == "before the apply\n"
    assert not (s.snapshot(1) / "etc/edited-after").exists()
    entry = changelog(s, 2)
    (event,) = entry["applied"]
    assert event["from"] == 1 and event["class"] == "additions" and event["who"]["user"] == "root"
    assert any(
        m["when"] == "apply" and "/etc/edited-before" in m["taken"] for m in entry["live_etc"]
    )
    text = tu_ok(s, "changelog", "2")
    assert "applied live at " in text and "(over snapshot 1, additions)" in text
    # The reboot: the same snapshot comes up, as apply showed it.
    s.boot_default()
    tu_ok(s, "sync-etc")
    assert s.booted_number() == 2
    assert (s.root / "usr/bin/tu-hello").read_text() == seen[2]
    assert (s.root / "etc/edited-after").read_text() == "after the apply\n"
    st = s.status_json()
    assert st["live"] == 2 and st["applied"] is None and st["pending"] is None


def test_writes_into_the_hidden_old_etc_are_named_and_merged_later(
    managed_system: System, tmp_path: Path
) -> None:
    """A shell that was in /etc during the apply still works in the old /etc, hidden under the
    bind: apply names it, and what it writes there reaches the live /etc at the next sync-etc
    and, after that, at the boot (the sync point moves on, it does not go)."""
    s = managed_system
    install_hello(s, tmp_path)  # snapshot 2, the default
    old_etc = ".snapshots/1/snapshot/etc"
    seen = run_steps(
        s.root,
        [
            ["cwd", "etc"],
            ["apply", {}],
            ["write", f"{old_etc}/late-one", "written in the old /etc\n"],
            ["read", "etc/late-one"],
            ["tu", ["sync-etc"]],
            ["read", "etc/late-one"],
            ["write", f"{old_etc}/late-two", "later still\n"],
        ],
    )
    shell, result = seen[0], applied(seen[1])
    assert result["in_old_etc"] == [{"pid": shell["pid"], "command": "sleep"}]
    assert any(
        line.startswith(f"PID {shell['pid']} sleep works in the old /etc, now hidden")
        for line in seen[1]["report"]
    )
    assert seen[3] is None, "hidden until a merge"
    assert seen[4]["rc"] == 0, seen[4]
    assert seen[5] == "written in the old /etc\n", "sync-etc merged it into the live /etc"
    s.boot_default()
    tu_ok(s, "sync-etc")
    assert (s.root / "etc/late-two").read_text() == "later still\n", "the boot merged it"
    assert (s.root / "etc/late-one").read_text() == "written in the old /etc\n"


def test_a_transaction_after_an_apply_takes_what_the_hidden_etc_took(
    managed_system: System, tmp_path: Path
) -> None:
    """A transaction on an applied system starts from the live /etc with the hidden old one's
    writes merged in: a power cut before the shutdown's sync-etc loses none of them."""
    s = managed_system
    install_hello(s, tmp_path)  # snapshot 2, the default
    seen = run_steps(
        s.root,
        [
            ["apply", {}],
            ["write", ".snapshots/1/snapshot/etc/late", "written in the old /etc\n"],
            ["tu", ["run", "--", "true"]],  # 3, from 2
        ],
    )
    assert applied(seen[0])["snapshot"] == 2 and seen[2]["rc"] == 0, seen[2]
    assert s.default_number() == 3
    assert (s.snapshot(3) / "etc/late").read_text() == "written in the old /etc\n"
    s.boot_default()  # a power cut: no sync-etc at shutdown
    tu_ok(s, "sync-etc")
    assert s.booted_number() == 3
    assert (s.root / "etc/late").read_text() == "written in the old /etc\n"


def test_a_replacement_needs_allow_and_names_the_process_that_maps_the_old_library(
    managed_system: System, tmp_path: Path
) -> None:
    s = managed_system
    local_repo(s, [lib(tmp_path, "1.0")])
    tu_ok(s, "-n", "pkg", "install", "tu-lib")
    s.boot_default()
    tu_ok(s, "sync-etc")
    local_repo(s, [lib(tmp_path, "2.0")])
    tu_ok(s, "-n", "pkg", "install", "tu-lib")  # 3: the upgrade, from 2
    seen = run_steps(
        s.root,
        [
            ["hold", LIB],
            ["apply", {}],
            ["mounts"],
            ["apply", {"allow_replacement": True, "restart_services": True}],
            ["tu", ["--json", "status"]],
            ["apply", {"restart_services": True}],
        ],
    )
    holder = seen[0]
    # Asked again once live (restarts cut short, say): the same scan, the same verdicts.
    again = applied(seen[5])
    assert seen[5]["said"] == [
        "snapshot 3 is live already; nothing to apply",
        "restarting what still uses files replaced since snapshot 2 booted",
    ]
    assert [p["pid"] for p in again["processes"]] == [
        p["pid"] for p in applied(seen[3])["processes"]
    ]
    assert again["not_restarted"] == applied(seen[3])["not_restarted"]
    assert holder["ready"] == "held"
    refused = seen[1]
    assert refused["rc"] == 2
    assert refused["error"] == (
        "snapshot 3 replaces or deletes 2 file(s) that running programs may use "
        f"(e.g. /{LIB}); not applied"
    )
    assert "--allow-replacement" in refused["hint"]
    assert "usr" not in seen[2], "nothing was bound"
    result = applied(seen[3])
    assert result["class"] == "replacement" and result["files"]["replaced"] == [
        f"/{LIB}",
        "/usr/share/tu-lib/version",
    ]
    assert result["packages"] == [
        {"name": "tu-lib", "kind": "upgraded", "old": "1.0", "new": "2.0"}
    ]
    (process,) = [p for p in result["processes"] if p["pid"] == holder["pid"]]
    assert process["files"] == [f"/{LIB}"] and process["unit"] is None
    assert result["restarted"] == []
    assert {
        "unit": f"{process['command']} (PID {holder['pid']})",
        "why": "not started by systemd",
    } in (result["not_restarted"])
    assert any(f"PID {holder['pid']}" in line for line in seen[3]["report"])
    assert status(seen[4])["live"] == 3
    (event,) = changelog(s, 3)["applied"]
    assert event["class"] == "replacement" and event["processes"][0]["pid"] == holder["pid"]


def test_a_library_rewritten_in_place_names_only_the_process_still_on_the_old_one(
    managed_system: System, tmp_path: Path
) -> None:
    """Same inode number in both snapshots, so only the subvolume tells old from new: the
    process started before the apply maps the old file, the one started from the half-applied
    /usr (an apply cut after its /usr bind) maps the new one and must not be listed."""
    s = managed_system
    local_repo(s, [lib(tmp_path, "1.0")])
    tu_ok(s, "-n", "pkg", "install", "tu-lib")
    s.boot_default()
    tu_ok(s, "sync-etc")
    tu_ok(s, "run", "--", "sh", "-c", f"printf 2 >> /{LIB}")  # 3: rewritten in place
    assert (s.snapshot(2) / LIB).stat().st_ino == (s.snapshot(3) / LIB).stat().st_ino
    seen = run_steps(
        s.root,
        [
            ["hold", LIB],
            ["cut", "usr", {"allow_replacement": True}],
            ["hold", LIB],
            ["apply", {"allow_replacement": True}],
        ],
    )
    old, cut, new = seen[0], seen[1], seen[2]
    assert cut["cut"] and "etc" not in cut["mounts"], cut
    result = applied(seen[3])
    assert result["files"]["replaced"] == [f"/{LIB}"]
    listed = {p["pid"]: p["files"] for p in result["processes"]}
    assert listed.get(old["pid"]) == [f"/{LIB}"], result["processes"]
    assert new["pid"] not in listed, "a process on the new library is not stale"


def test_a_new_kernel_waits_for_the_reboot(managed_system: System, tmp_path: Path) -> None:
    s = managed_system
    kernel = "/boot/vmlinuz-9.9.9-tu"
    tu_ok(s, "run", "--", "sh", "-c", f"echo kernel > {kernel} && echo new > /usr/bin/tu-new")
    seen = run_steps(
        s.root,
        [
            ["write", "run/reboot-needed", "reboot"],
            ["apply", {}],
            ["read", "usr/bin/tu-new"],
            ["read", kernel[1:]],
            ["tu", ["--json", "status"]],
            ["tu", ["run", "--", "true"]],
            ["read", "run/reboot-needed"],
        ],
    )
    assert seen.pop(0) is None and seen.pop() == "reboot", "the kernel still needs the reboot"
    assert seen.pop()["rc"] == 0
    # 2's kernel never ran: the snapshot known to work is still the booted 1, not 2.
    state = (s.root / "var/lib/misc/transactional-update.state").read_text()
    assert state == "LAST_WORKING_SNAPSHOTS=1\n", state
    result = applied(seen[0])
    assert result["class"] == "additions" and result["kernel_pending"] is True
    assert result["not_live_until_reboot"] == [kernel]
    assert any("kernel starts only with the next reboot" in line for line in seen[0]["said"])
    assert seen[1] == "new\n" and seen[2] is None, "userspace is live, /boot is the running one's"
    st = status(seen[3])
    assert st["live"] == 2 and st["applied"]["kernel_pending"] is True
    assert st["reboot_needed"] is True


def test_the_running_kernel_keeps_its_module_tree_when_a_rebuild_replaces_it(
    managed_system: System, tmp_path: Path
) -> None:
    """A kernel package rebuilt under the running release (Debian's revisions) replaces that
    tree's modules: apply goes ahead, the running kernel keeps loading its own build's modules
    until the reboot, and the snapshot on disk has the new ones."""
    s = managed_system
    tree = f"usr/lib/modules/{os.uname().release}"

    def kernel(version: str) -> Path:
        files = {f"/{tree}/kernel/tu.ko": f"module {version}\n"}
        return make_deb(
            tmp_path / f"k-{version}", "linux-image-tu", version, files=files, marker=False
        )

    local_repo(s, [kernel("1.0")])
    tu_ok(s, "-n", "pkg", "install", "linux-image-tu")
    s.boot_default()
    tu_ok(s, "sync-etc")
    local_repo(s, [kernel("2.0")])
    tu_ok(s, "-n", "pkg", "install", "linux-image-tu")  # 3
    seen = run_steps(
        s.root,
        [["apply", {}], ["read", f"{tree}/kernel/tu.ko"], ["mounts"], ["apply", {}]],
    )
    result = applied(seen[0])
    assert result["class"] == "additions" and result["kernel_pending"] is True
    assert result["kept_running"] == [f"/{tree}"]
    assert any(f"keeps its modules (/{tree}) until then" in line for line in seen[0]["said"])
    assert seen[1] == "module 1.0\n", "the running kernel's modules are its own build's"
    assert tree in seen[2]
    assert seen[3]["rc"] == 0, "applied already: nothing to do"
    assert (s.snapshot(3) / tree / "kernel/tu.ko").read_text() == "module 2.0\n"


def test_refusals_name_why_and_change_nothing(managed_system: System, tmp_path: Path) -> None:
    s = managed_system
    r = s.tu("apply")
    assert r.returncode == 2
    assert r.stderr.splitlines()[0] == (
        f"error: apply changes the running system; --root {s.root} names one that is not running"
    )
    tu_ok(s, "run", "--", "touch", "/usr/bin/tu-a")  # 2
    seen = run_steps(
        s.root,
        [
            ["lock"],
            ["apply", {}],
        ],
    )
    assert seen[1]["rc"] == 4 and seen[1]["error"].startswith("another transaction is running")
    s.boot_default()  # 2 booted
    tu_ok(s, "rollback", "1")  # a rollback pending: 1 is no descendant of 2
    seen = run_steps(s.root, [["apply", {}], ["mounts"], ["tu", ["rollback", "2"]], ["apply", {}]])
    assert seen[0]["rc"] == 2
    assert seen[0]["error"] == (
        "snapshot 1 is not a descendant of the running snapshot 2 "
        "(snapshot 1 records no base it was made from)"
    )
    assert "usr" not in seen[1]
    assert seen[3]["rc"] == 0 and seen[3]["said"] == [
        "snapshot 2 is live already; nothing to apply"
    ]


def test_a_failure_half_way_takes_the_binds_off_again(
    managed_system: System, tmp_path: Path
) -> None:
    s = managed_system
    install_hello(s, tmp_path)  # snapshot 2, the default
    seen = run_steps(
        s.root,
        [
            ["systemd"],  # systemd seems to run; systemctl finds none and fails
            ["apply", {}],
            ["mounts"],
            ["read", "usr/bin/tu-hello"],
            ["tu", ["--json", "status"]],
        ],
    )
    failed = seen[1]
    assert failed["rc"] == 2
    assert failed["error"].startswith("systemctl daemon-reload failed")
    assert failed["error"].endswith("the new /usr and /etc were taken off again")
    assert "usr" not in seen[2] and "etc" not in seen[2]
    assert not any(m.startswith("run/transactional-update") for m in seen[2]), "no staging left"
    assert seen[3] is None
    st = status(seen[4])
    assert st["live"] == 1 and st["applied"] is None and st["reboot_needed"] is True
    assert "applied" not in changelog(s, 2) or changelog(s, 2)["applied"] == []


def test_a_transaction_after_an_apply_builds_on_it_and_applies_again(
    managed_system: System, tmp_path: Path
) -> None:
    s = managed_system
    world = make_deb(
        tmp_path, "tu-world", "1.0", files={"/usr/bin/tu-world": "#!/bin/sh\necho world\n"}
    )
    local_repo(s, [hello(tmp_path, "1.0"), world])
    tu_ok(s, "-n", "pkg", "install", "tu-hello")
    seen = run_steps(
        s.root,
        [
            ["apply", {}],
            ["write", "etc/between", "made on the live 2\n"],
            ["tu", ["-n", "pkg", "install", "tu-world"]],
            ["apply", {}],
            ["read", "usr/bin/tu-hello"],
            ["read", "usr/bin/tu-world"],
            ["read", "etc/between"],
            ["tu", ["--json", "status"]],
            ["tu", ["--json", "diff"]],
        ],
    )
    # What ran when snapshot 3 was made was 2 (applied), not the booted 1.
    state = (s.root / "var/lib/misc/transactional-update.state").read_text()
    assert "LAST_WORKING_SNAPSHOTS='2 1'" in state, state
    assert seen[8]["rc"] == 0, seen[8]
    d = json.loads(seen[8]["stdout"])
    assert (d["from"], d["to"]) == (3, 3), "diff starts from what runs"
    assert applied(seen[0])["snapshot"] == 2
    assert seen[2]["rc"] == 0, seen[2]
    second = applied(seen[3])
    assert (second["snapshot"], second["from"], second["class"]) == (3, 2, "additions")
    assert seen[4] is not None and seen[5] == "#!/bin/sh\necho world\n"
    assert seen[6] == "made on the live 2\n"
    st = status(seen[7])
    assert (st["booted"]["number"], st["live"], st["default"]["number"]) == (1, 3, 3)
    assert changelog(s, 3)["base"] == 2


def test_an_apply_killed_between_its_binds_is_visible_refused_around_and_completed(
    managed_system: System, tmp_path: Path
) -> None:
    """kill -9 after /usr is bound and before /etc: the running system mixes two snapshots
    until apply completes it; nothing merges /etc meanwhile, and no live edit is lost."""
    s = managed_system
    install_hello(s, tmp_path)  # snapshot 2, the default
    seen = run_steps(
        s.root,
        [
            ["write", "etc/before-cut", "edited before\n"],
            ["cut", "usr"],
            ["write", "etc/during-cut", "edited while cut\n"],  # lands in 1's /etc, still live
            ["tu", ["--json", "status"]],
            ["tu", ["status"]],
            ["tu", ["run", "--", "true"]],
            ["tu", ["sync-etc"]],
            ["apply", {}],
            ["read", "usr/bin/tu-hello"],
            ["read", "etc/before-cut"],
            ["read", "etc/during-cut"],
            ["mounts"],
            ["tu", ["--json", "status"]],
        ],
    )
    cut = seen[1]
    assert cut["cut"] and cut["rc"] == -9, cut
    assert "usr" in cut["mounts"] and "etc" not in cut["mounts"], "the cut missed its window"
    st = status(seen[3])
    assert st["live"] == 2 and st["applied"]["interrupted"]["target"] == 2
    assert "apply:    interrupted while making snapshot 2 live" in seen[4]["stdout"]
    for refused in (seen[5], seen[6]):
        assert refused["rc"] == 7
        assert "an apply of snapshot 2 was interrupted" in refused["stderr"]
        assert "complete it with: transactional-update apply" in refused["stderr"]
    completed = applied(seen[7])
    assert completed["snapshot"] == 2 and completed["from"] == 1
    assert seen[7]["said"][0].startswith("completing the interrupted apply: applying snapshot 2")
    assert seen[8] is not None
    assert seen[9] == "edited before\n" and seen[10] == "edited while cut\n"
    assert seen[11].count("usr") == 1 and seen[11].count("etc") == 1, "nothing bound twice"
    st = status(seen[12])
    assert st["applied"]["snapshot"] == 2 and "interrupted" not in st["applied"]
    assert s.numbers() == [1, 2], "the refused transaction made no snapshot"


def test_a_bind_that_cannot_be_made_is_undone(managed_system: System, tmp_path: Path) -> None:
    """The running /usr has a mount where the new snapshot has no directory: the new /usr is
    already on its staging point when that shows, and must go again."""
    s = managed_system
    tu_ok(s, "run", "--", "rm", "-r", "/usr/share/doc")
    seen = run_steps(
        s.root,
        [
            ["tmpfs", "usr/share/doc"],
            ["apply", {"allow_replacement": True}],
            ["mounts"],
            ["tu", ["--json", "status"]],
            ["tu", ["run", "--", "true"]],
        ],
    )
    failed = seen[1]
    assert failed["rc"] == 2
    assert failed["error"] == (
        "/usr/share/doc is a mount point of the running system, but the snapshot has no "
        f"directory {s.snapshot(2)}/usr/share/doc to mount it on; nothing was applied, the "
        "running system is as it was"
    )
    assert failed["hint"] == "create the directory in a transaction: run -- mkdir -p /usr/share/doc"
    assert "usr" not in seen[2] and "etc" not in seen[2]
    assert not any(m.startswith("run/transactional-update") for m in seen[2]), "no staging left"
    st = status(seen[3])
    assert st["live"] == 1 and st["applied"] is None
    assert seen[4]["rc"] == 0, "no interrupted apply is left to refuse transactions"


def test_a_rollback_after_an_apply_is_respected_and_boots(
    managed_system: System, tmp_path: Path
) -> None:
    """rollback only sets what boots next: after an apply of 2, ``rollback 1`` makes 1 the
    default, a second apply refuses (1 does not descend from the live 2), and the reboot
    brings up 1 without tu-hello."""
    s = managed_system
    install_hello(s, tmp_path)  # snapshot 2, the default
    seen = run_steps(
        s.root,
        [
            ["apply", {}],
            ["tu", ["rollback", "1"]],
            ["apply", {}],
            ["read", "usr/bin/tu-hello"],
            ["tu", ["--json", "status"]],
        ],
    )
    assert applied(seen[0])["snapshot"] == 2
    assert seen[1]["rc"] == 0, seen[1]
    refused = seen[2]
    assert refused["rc"] == 2
    assert refused["error"].startswith("snapshot 1 is not a descendant of the running snapshot 2")
    assert seen[3] is not None, "the refused apply left the live /usr alone"
    st = status(seen[4])
    assert (st["live"], st["default"]["number"]) == (2, 1)
    assert s.default_number() == 1
    s.boot_default()
    assert s.booted_number() == 1 and not (s.root / "usr/bin/tu-hello").exists()


def test_an_error_of_the_system_while_binding_is_an_apply_failure_undone(
    managed_system: System, tmp_path: Path
) -> None:
    """Not only the mount commands fail: the staging point cannot be made (a file is in its
    way); that is exit 2 with the reason, as every failure of apply, and nothing bound."""
    s = managed_system
    install_hello(s, tmp_path)  # snapshot 2, the default
    stage = "run/transactional-update/apply-stage"
    seen = run_steps(s.root, [["write", stage, "in the way\n"], ["apply", {}], ["mounts"]])
    failed = seen[1]
    assert failed["rc"] == 2
    assert failed["error"] == (
        f"[Errno 17] File exists: '{s.root / stage}'; nothing was applied, the running system "
        "is as it was"
    )
    assert "usr" not in seen[2] and "etc" not in seen[2]


def test_pkg_install_then_apply_under_root_is_refused_before_the_transaction(
    managed_system: System, tmp_path: Path
) -> None:
    """apply's refusal of --root is known before anything runs: no snapshot is made for an
    invocation that cannot finish, as a bad apply flag makes none."""
    s = managed_system
    local_repo(s, [hello(tmp_path, "1.0")])
    r = s.tu("-n", "pkg", "install", "tu-hello", "apply", "--restart-services")
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    assert r.stderr.splitlines()[-2].startswith("error: apply changes the running system;")
    assert s.numbers() == [1] and s.default_number() == 1
    r = s.tu("-n", "pkg", "install", "tu-hello", "apply", "--yes")
    assert r.returncode == 2 and s.numbers() == [1], "a bad apply flag stops the chain first"
    assert "error: apply after pkg takes no '--yes'" in r.stderr
