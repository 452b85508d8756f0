"""Real clients of openSUSE's transactional-update, with their exact command lines.

Each test runs what one client sends (``System.tu`` adds only ``--root``, which these systems
need) and checks the exit code, the snapshot made or dropped (``--drop-if-no-change``), and
stdout byte for byte where the client parses it.  The command lines are copied from the clients'
sources: Salt's ``transactional_update`` execution module (``_global_params``, ``call``),
Ansible's ``community.general.zypper`` (``get_cmd``), cloud-init's ``distros/opensuse.py``,
topgrade, and openSUSE's documentation (``register``).
"""

from __future__ import annotations

import json
from pathlib import Path
from xml.dom.minidom import Document, parseString

import pytest

from testkit.systems import System, local_repo, make_deb, make_rpm, sh
from tests.privileged.test_packages import _dpkg_version
from tests.privileged.test_rpm_backends import _publish, _rpm_version, rpm_system

__all__ = ["rpm_system"]  # the fixture, imported for the zypper rows

# Salt's _global_params(self_update=False[, snapshot]): every function of the module sends them.
SALT = ("--non-interactive", "--drop-if-no-change", "--no-selfupdate")
# What every commit leaves for other tools: openSUSE's level word, no newline.
REBOOT_NEEDED = "reboot"
TOOL = "#!/bin/sh\n# stands for the installed tool's launcher (/usr/bin/transactional-update)\n"


def _tmpfs_run(system: System) -> Path:
    """As on a running system, /run is a tmpfs (the fixture unmounts it with the system)."""
    sh("mount", "-t", "tmpfs", "tmpfs", str(system.root / "run"))
    return system.root / "run/reboot-needed"


def _no_reboot(system: System) -> None:
    with system.booted_writable() as snap:
        (snap / "etc/transactional-update.conf").write_text("REBOOT_METHOD=none\n")


def test_salt_module_functions(managed_system: System, tmp_path: Path) -> None:
    s = managed_system
    local_repo(s, [make_deb(tmp_path, "tu-hello", "1.0"), make_deb(tmp_path, "tu-other", "1.0")])
    _no_reboot(s)
    marker = _tmpfs_run(s)

    # pkg_install(pkg="tu-hello"): a new snapshot, the default.
    r = s.tu(*SALT, "pkg", "install", "tu-hello")
    assert r.returncode == 0, r.stderr
    assert s.numbers() == [1, 2] and s.default_number() == 2
    assert _dpkg_version(s, 2, "tu-hello") == "1.0"
    assert marker.read_text() == REBOOT_NEEDED
    # pkg_update(pkg="tu-hello", snapshot="continue"): nothing newer, no snapshot left.
    r = s.tu(*SALT, "--continue", "pkg", "update", "tu-hello")
    assert r.returncode == 0, r.stderr
    assert s.numbers() == [1, 2]
    # pkg_install(pkg="tu-other", args="--no-recommends", snapshot="2"): args go to apt.
    r = s.tu(*SALT, "--continue", "2", "pkg", "install", "--no-recommends", "tu-other")
    assert r.returncode == 0, r.stderr
    assert s.numbers() == [1, 2, 3] and s.default_number() == 3
    log = json.loads(s.tu("--json", "changelog", "3").stdout)
    assert log["commands"][-1]["argv"] == [
        "apt-get", "-y", "install", "--no-install-recommends", "tu-other"
    ]  # fmt: skip
    assert log["base"] == 2
    # pkg_remove(pkg="tu-hello", snapshot="continue").
    r = s.tu(*SALT, "--continue", "pkg", "remove", "tu-hello")
    assert r.returncode == 0, r.stderr
    assert s.numbers() == [1, 2, 3, 4] and _dpkg_version(s, 4, "tu-hello") is None
    # up(), dup(): nothing to do, nothing kept; patch(): apt has none (refused, exit 2).
    for command in ("up", "dup"):
        r = s.tu(*SALT, "--continue", command)
        assert r.returncode == 0, r.stderr
    assert s.numbers() == [1, 2, 3, 4]
    r = s.tu(*SALT, "patch")
    assert r.returncode == 2 and "apt has no patches" in r.stderr
    # run(["sh", "-c", …], snapshot="continue"), which always adds --quiet: stdout is the
    # command's alone; no change and --drop-if-no-change: no snapshot.
    r = s.tu(*SALT, "--continue", "--quiet", "run", "sh", "-c", "echo out; echo err >&2")
    assert (r.returncode, r.stdout) == (0, "out\n"), r.stderr
    assert "err\n" in r.stderr
    assert s.numbers() == [1, 2, 3, 4]
    r = s.tu(*SALT, "--continue", "--quiet", "run", "sh", "-c", "echo hi > /etc/tu-salt")
    assert (r.returncode, r.stdout) == (0, ""), r.stderr
    assert s.numbers() == [1, 2, 3, 4, 5]
    # A failing command: its exit code, no snapshot, still nothing of ours on stdout.
    r = s.tu(*SALT, "--continue", "--quiet", "run", "sh", "-c", "echo partial; exit 3")
    assert (r.returncode, r.stdout) == (3, "partial\n")
    assert s.numbers() == [1, 2, 3, 4, 5]
    # cleanup() and reboot() (REBOOT_METHOD=none here).  grub_cfg() and bootloader() need a
    # GRUB disk: test_grub.py::test_salt_grub_cfg_and_bootloader_command_lines runs them.
    r = s.tu(*SALT, "cleanup")
    assert r.returncode == 0, r.stderr
    r = s.tu(*SALT, "reboot")
    assert r.returncode == 0, r.stderr
    assert s.default_number() == 5 and marker.read_text() == REBOOT_NEEDED


CALL_STANDIN = """\
#!/usr/bin/python3
# Stands for Salt's salt-call (from salt-thin, which is not installed here): it reads Salt's
# argument shape, decides in_transaction() as Salt does, and prints --out json's document.
import json, os, shutil, sys

argv = sys.argv[1:]
fun, args = argv[argv.index("--") + 1], argv[argv.index("--") + 2 :]
with open("/proc/1/mountinfo") as init, open("/proc/self/mountinfo") as own:
    in_chroot = init.read() != own.read()  # salt.modules.chroot.in_chroot
transactional = shutil.which("transactional-update") is not None
if fun == "file.touch":
    open(args[0], "w").close()
ret = {
    "in_transaction": transactional and in_chroot,
    "TRANSACTIONAL_UPDATE": os.environ.get("TRANSACTIONAL_UPDATE"),
    "out": argv[argv.index("--out") + 1],
}
print(json.dumps({"local": {"return": ret, "retcode": 0}}, indent=4))
"""


@pytest.mark.parametrize("rpm_system", ["zypper"], indirect=True)
def test_salt_call_executor(rpm_system: System) -> None:
    s = rpm_system  # this root has python3 (dnf's), which salt-call needs
    _no_reboot(s)
    marker = _tmpfs_run(s)
    with s.booted_writable() as snap:
        (snap / "usr/bin/transactional-update").write_text(TOOL)
        (snap / "usr/bin/transactional-update").chmod(0o755)
    # install-units puts openSUSE's /usr/sbin/transactional-update into a new snapshot.
    r = s.tu("install-units", "--no-enable")
    assert r.returncode == 0, r.stderr
    base = s.default_number()
    assert (s.snapshot(base) / "usr/sbin/transactional-update").readlink() == Path(
        "/usr/bin/transactional-update"
    )
    marker.unlink()
    thin = s.root / "var/cache/salt/minion/tmpk2l8thin"  # Salt's mkdtemp(dir=cachedir)
    thin.mkdir(parents=True)
    (thin / "salt-call").write_text(CALL_STANDIN)
    t = "/var/cache/salt/minion/tmpk2l8thin"

    def call(fun: str, *args: str) -> str:
        r = s.tu(
            *SALT, "--continue", "--quiet", "run",
            "python3", f"{t}/salt-call", "--metadata", "--local", "--log-file", f"{t}/log",
            "--cachedir", f"{t}/cache", "--out", "json", "-l", "quiet", "--", fun, *args,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        return r.stdout

    out = call("test.ping")
    want = {"in_transaction": True, "TRANSACTIONAL_UPDATE": "true", "out": "json"}
    assert out == json.dumps({"local": {"return": want, "retcode": 0}}, indent=4) + "\n"
    assert s.numbers()[-1] == base and not marker.exists()  # no change: dropped
    out = call("file.touch", "/etc/tu-salt-state")
    assert json.loads(out)["local"]["return"] == want
    assert s.default_number() == base + 1
    assert (s.snapshot(base + 1) / "etc/tu-salt-state").exists()
    assert marker.read_text() == REBOOT_NEEDED


def _xml(text: str) -> Document:
    return parseString(text)  # noqa: S318 - zypper's output in a test, as Ansible parses it


def _ansible(*zypper: str) -> tuple[str, ...]:
    """community.general.zypper's get_cmd() on a transactional system (quiet=True)."""
    return (
        "--continue", "--drop-if-no-change", "--quiet", "run",
        "/usr/bin/zypper", "--non-interactive", "--xmlout", "--quiet", *zypper,
    )  # fmt: skip


@pytest.mark.parametrize("rpm_system", ["zypper"], indirect=True)
def test_ansible_zypper(rpm_system: System, tmp_path: Path) -> None:
    s = rpm_system
    _publish(s, [make_rpm(tmp_path, "tu-rpm-hello", "1.0")])
    search = _ansible(
        "--disable-repositories", "search", "--type", "package",
        "--match-exact", "--details", "--installed-only", "tu-rpm-hello",
    )  # fmt: skip
    install = _ansible(
        "install", "--type", "package", "--auto-agree-with-licenses", "--no-recommends",
        "tu-rpm-hello",
    )  # fmt: skip
    # Not installed: zypper exits 104, which the tool passes through, and its XML is stdout.
    r = s.tu(*search)
    assert r.returncode == 104, r.stderr
    assert _xml(r.stdout).getElementsByTagName("stream")
    assert s.numbers() == [1]
    r = s.tu(*install)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("<?xml") and r.stdout.endswith("</stream>\n"), r.stdout
    solvables = _xml(r.stdout).getElementsByTagName("solvable")
    assert [x.getAttribute("name") for x in solvables] == ["tu-rpm-hello"]
    assert s.numbers() == [1, 2] and _rpm_version(s, 2, "tu-rpm-hello") == "1.0-1"
    # Installed now: the same XML as without --quiet, byte for byte, but for our result line.
    quiet = s.tu(*search)
    assert quiet.returncode == 0, quiet.stderr
    loud = s.tu(*search[:2], *search[3:])  # without the tool's --quiet (zypper's stays)
    assert loud.returncode == 0, loud.stderr
    assert loud.stdout == quiet.stdout + "nothing changed; no snapshot was kept\n"
    assert _xml(quiet.stdout).getElementsByTagName("solvable")[0].getAttribute("status") == (
        "installed"
    )
    assert s.numbers() == [1, 2]


@pytest.mark.parametrize("rpm_system", ["zypper"], indirect=True)
def test_cloud_init(rpm_system: System, tmp_path: Path) -> None:
    s = rpm_system
    _publish(s, [make_rpm(tmp_path, "tu-rpm-hello", "1.0"), make_rpm(tmp_path, "tu-rpm-b", "1.0")])
    # cloud-init: package_command("install", pkgs) on a transactional system.
    r = s.tu("-n", "-d", "pkg", "install", "--auto-agree-with-licenses", "tu-rpm-hello", "tu-rpm-b")
    assert r.returncode == 0, r.stderr
    assert s.numbers() == [1, 2]
    log = json.loads(s.tu("--json", "changelog", "2").stdout)
    assert ["zypper", "--non-interactive", "install", "--auto-agree-with-licenses",
            "tu-rpm-hello", "tu-rpm-b"] in [c["argv"] for c in log["commands"]]  # fmt: skip
    # update_package_sources/upgrade: "-n -d up"; nothing newer: no snapshot.
    r = s.tu("-n", "-d", "up")
    assert r.returncode == 0, r.stderr
    assert s.numbers() == [1, 2]


def test_cloud_init_on_apt(managed_system: System, tmp_path: Path) -> None:
    s = managed_system
    local_repo(s, [make_deb(tmp_path, "tu-hello", "1.0")])
    # zypper's licence flag has no apt counterpart: accepted, and nothing is passed to apt.
    r = s.tu("-n", "-d", "pkg", "install", "--auto-agree-with-licenses", "tu-hello")
    assert r.returncode == 0, r.stderr
    assert s.numbers() == [1, 2] and _dpkg_version(s, 2, "tu-hello") == "1.0"
    log = json.loads(s.tu("--json", "changelog", "2").stdout)
    assert log["commands"][-1]["argv"] == ["apt-get", "-y", "install", "tu-hello"]
    r = s.tu("-n", "-d", "up")
    assert r.returncode == 0, r.stderr
    assert s.numbers() == [1, 2]


@pytest.mark.parametrize("rpm_system", ["zypper"], indirect=True)
def test_salt_module_package_functions_on_zypper(rpm_system: System, tmp_path: Path) -> None:
    s = rpm_system
    _publish(s, [make_rpm(tmp_path, "tu-rpm-hello", "1.0")])
    r = s.tu(*SALT, "pkg", "install", "tu-rpm-hello")
    assert r.returncode == 0, r.stderr
    assert s.numbers() == [1, 2] and _rpm_version(s, 2, "tu-rpm-hello") == "1.0-1"
    r = s.tu(*SALT, "--continue", "pkg", "update", "tu-rpm-hello")
    assert r.returncode == 0, r.stderr
    assert s.numbers() == [1, 2]
    r = s.tu(*SALT, "--continue", "pkg", "remove", "tu-rpm-hello")
    assert r.returncode == 0, r.stderr
    assert s.numbers() == [1, 2, 3] and _rpm_version(s, 3, "tu-rpm-hello") is None
    assert json.loads(s.tu("--json", "changelog", "3").stdout)["base"] == 2
    r = s.tu(*SALT, "patch")
    assert r.returncode == 0, r.stderr
    assert s.numbers() == [1, 2, 3]


def test_register_and_migration_are_refused(managed_system: System) -> None:
    s = managed_system
    for argv in (
        ("--no-selfupdate", "-n", "-d", "register", "-p", "sle-module-containers/15.5/x86_64"),
        ("register", "-r", "CODE", "-e", "a@example.org"),
        ("migration",),
        ("cleanup", "register", "--status"),  # refused before anything of the chain runs
    ):
        r = s.tu(*argv)
        assert r.returncode == 1, (argv, r.stdout, r.stderr)
        assert r.stdout == ""
        assert r.stderr.splitlines()[0].startswith("error: ")
        assert "is not supported on this distribution" in r.stderr.splitlines()[0]
    assert s.numbers() == [1]


def test_topgrade_and_no_command(managed_system: System, tmp_path: Path) -> None:
    s = managed_system
    local_repo(s, [make_deb(tmp_path, "tu-hello", "1.0")])
    # topgrade: "-n dup" (apt-get dist-upgrade here); nothing to upgrade: no snapshot.
    r = s.tu("-n", "dup")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "apt: nothing to upgrade; no snapshot was kept"
    r = s.tu("--json", "-n", "dup")
    assert ["apt-get", "-s", "dist-upgrade"] in [
        c["argv"] for c in json.loads(r.stdout)["commands"]
    ]
    # No command at all: UPDATE_METHOD (up), like openSUSE's tool.
    r = s.tu("-n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "apt: nothing to update; no snapshot was kept"
    # openSUSE's aliases: package in, update.
    assert s.tu("package", "in", "tu-hello").returncode == 0
    assert s.numbers() == [1, 2]
    r = s.tu("--continue", "update")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "apt: nothing to update; no snapshot was kept"


def test_quiet_keeps_errors_on_stderr(managed_system: System) -> None:
    r = managed_system.tu("--quiet", "run", "--", "sh", "-c", "exit 4")
    assert (r.returncode, r.stdout) == (4, "")
    assert r.stderr.startswith("error: command exited with 4"), r.stderr
    assert len(r.stderr.splitlines()) == 2  # one error line and its hint
