"""Pure logic of the core: mount plans, configuration, argv handling, cleanup choice, paths."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath

import pytest

from transactional_update.cli.options import arrange as normalize_continue
from transactional_update.config import conffile
from transactional_update.config import settings as config
from transactional_update.core import chroot
from transactional_update.core.cleanup import NumberLimits, number_candidates
from transactional_update.core.rollback import parse_target
from transactional_update.errors import ConfigError, UsageError
from transactional_update.paths import resolve_under
from transactional_update.record import state
from transactional_update.snapshots.snapinfo import Snapshot, SnapshotType
from transactional_update.snapshots.system import snapshot_number

ROOT = PurePosixPath("/mnt/sys")
MOUNTS = [
    "/",
    "/mnt/sys",
    "/mnt/sys/.snapshots",
    "/mnt/sys/var",
    "/mnt/sys/home",
    "/mnt/sys/root",
    "/mnt/sys/opt",
    "/mnt/sys/srv",
    "/mnt/sys/usr/local",
    "/mnt/sys/boot/grub",
    "/mnt/sys/boot/efi",
    "/mnt/sys/var/lib/docker",
]


def test_plan_shadows_data_subvolumes_and_binds_shared_state() -> None:
    plan = chroot.plan_mounts(
        ROOT,
        MOUNTS,
        ["/opt"],
        existing=["/opt", "/root", "/var/cache", "/var/log", "/var/lib/apt"],
        var_links={"/var/lib/dpkg": "../../usr/share/dpkg/database"},
        resolv_conf="nameserver 127.0.0.1\n",
    )
    got = [
        (m.kind.value, m.target, m.source)
        for m in plan
        if m.kind not in (chroot.Kind.FILE, chroot.Kind.TEXT)
    ]
    assert got == [
        ("proc", "/proc", ""),
        ("rbind", "/sys", "/sys"),
        ("rbind", "/dev", "/dev"),
        ("tmpfs", "/run", ""),
        ("tmpfs", "/tmp", ""),
        ("bind", "/.snapshots", "/mnt/sys/.snapshots"),
        ("shadow", "/home", ""),
        ("shadow", "/srv", ""),
        ("shadow", "/usr/local", ""),
        ("shadow", "/var", ""),
        ("tmpfs", "/var/tmp", ""),
        ("link", "/var/lib/dpkg", "../../usr/share/dpkg/database"),
        ("bind", "/boot/efi", "/mnt/sys/boot/efi"),
        ("bind", "/boot/grub", "/mnt/sys/boot/grub"),
        ("bind", "/opt", "/mnt/sys/opt"),
        ("bind", "/root", "/mnt/sys/root"),
        ("bind", "/var/cache", "/mnt/sys/var/cache"),
        ("bind", "/var/log", "/mnt/sys/var/log"),
        ("bind", "/var/lib/apt", "/mnt/sys/var/lib/apt"),
    ]
    files = [(m.target, m.read_only) for m in plan if m.kind is chroot.Kind.FILE]
    assert files == [("/etc/resolv.conf", True), ("/usr/sbin/policy-rc.d", True)]
    assert plan[-1].kind is chroot.Kind.TEXT and plan[-1].target == chroot.SHELL_RC


def test_plan_for_the_host_root_ignores_api_filesystems() -> None:
    plan = chroot.plan_mounts(
        PurePosixPath("/"), ["/", "/proc", "/sys", "/dev/pts", "/run/user/0", "/tmp", "/var"], []
    )
    assert [m.target for m in plan if m.kind is chroot.Kind.SHADOW] == ["/var"]


def test_plan_leaves_file_mount_points_alone() -> None:
    # systemd binds /run/machine-id over an empty /etc/machine-id on a read-only root (found by
    # the VM tests: a tmpfs cannot shadow a file, so every transaction failed on such a system)
    mounts = ["/", "/var", "/etc/machine-id"]
    plan = chroot.plan_mounts(PurePosixPath("/"), mounts, [], file_mounts=["/etc/machine-id"])
    assert [m.target for m in plan if m.kind is chroot.Kind.SHADOW] == ["/var"]
    assert not [m for m in plan if m.target == "/etc/machine-id"]


def test_mountinfo_decodes_escapes() -> None:
    line = "36 35 0:32 / /mnt/with\\040space rw,relatime shared:1 - btrfs /dev/loop0 rw\n"
    assert chroot.parse_mountinfo(line) == ["/mnt/with space"]


def test_command_env_marks_the_transaction_and_drops_the_rest() -> None:
    env = chroot.command_env({"TERM": "xterm", "SECRET": "x", "LANG": "de_DE.UTF-8"})
    assert env["TRANSACTIONAL_UPDATE"] == "true"
    assert env["SYSTEMD_OFFLINE"] == "1"
    assert env["TERM"] == "xterm" and env["LANG"] == "de_DE.UTF-8"
    assert "SECRET" not in env


def test_resolve_under_keeps_symlinks_inside_the_root(tmp_path: Path) -> None:
    (tmp_path / "usr/share/db").mkdir(parents=True)
    (tmp_path / "var/lib").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg").symlink_to("../../usr/share/db")
    (tmp_path / "evil").symlink_to("/etc")
    (tmp_path / "up").symlink_to("../../../../..")
    assert resolve_under(tmp_path, "/var/lib/dpkg/status") == tmp_path / "usr/share/db/status"
    assert resolve_under(tmp_path, "/evil/passwd") == tmp_path / "etc/passwd"
    assert resolve_under(tmp_path, "/up/etc") == tmp_path / "etc"
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(OSError, match="too many levels"):
        resolve_under(tmp_path, "/loop")


def test_config_parses_layers_and_rejects_bad_values(tmp_path: Path) -> None:
    (tmp_path / "usr/etc").mkdir(parents=True)
    (tmp_path / "etc/transactional-update.conf.d").mkdir(parents=True)
    (tmp_path / "usr/etc/transactional-update.conf").write_text('BINDDIRS="/opt /srv"\n')
    (tmp_path / "etc/transactional-update.conf.d/10-x.conf").write_text("REBOOT_METHOD=kexec\n")
    (tmp_path / "etc/transactional-update.conf").write_text(
        "# comment\nSNAPPER_BACKEND=cli\nPACKAGE_MANAGER=dnf\n"
    )
    cfg = config.load(tmp_path)
    assert cfg.package_manager is not None and cfg.package_manager.value == "dnf"
    assert cfg.bind_dirs == ("/opt", "/srv")
    assert cfg.reboot_method is config.RebootMethod.KEXEC
    assert cfg.snapper_backend.value == "cli"
    (tmp_path / "etc/transactional-update.conf").write_text("REBOOT_METHOD=sometimes\n")
    with pytest.raises(ConfigError) as err:
        config.load(tmp_path)
    assert err.value.message == (
        "/etc/transactional-update.conf:1: REBOOT_METHOD='sometimes' is not one of: "
        "auto, systemd, kexec, notify, kured, rebootmgr, fleetlock, etcd-lock, none"
    )
    assert err.value.exit_code == 6


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("BINDDIRS=opt\n", "BINDDIRS entry 'opt' is not an absolute directory"),
        ("BINDDIRS=/../etc\n", "BINDDIRS entry '/../etc' is not an absolute directory"),
        ("just words\n", "expected KEY=VALUE"),
        ('X="unterminated\n', "No closing quotation"),
        ("LOCK_WAIT=soon\n", "LOCK_WAIT='soon' is not a number of seconds"),
    ],
)
def test_config_errors_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^f:1: ") as err:
        config.build(conffile.parse(text, "f"))
    assert message in err.value.message


def test_continue_takes_a_number_only_when_one_follows() -> None:
    assert normalize_continue(["-c", "run", "--", "-c", "5"]) == [
        "--continue=default",
        "run",
        "--",
        "-c",
        "5",
    ]
    assert normalize_continue(["--continue", "7", "shell"]) == ["--continue=7", "shell"]
    # No command at all: openSUSE's UPDATE_METHOD (options.NO_COMMAND).
    assert normalize_continue(["-c"]) == ["--continue=default", "auto-update"]
    # A command's own -c is not the global option, with or without "--".
    assert normalize_continue(["-c", "2", "run", "sh", "-c", "exit 3"]) == [
        "--continue=2",
        "run",
        "sh",
        "-c",
        "exit 3",
    ]
    assert normalize_continue(["--description", "-c", "run", "true"]) == [
        "--description",
        "-c",
        "run",
        "true",
    ]


def test_rollback_target_parsing() -> None:
    assert parse_target(None) is None
    assert parse_target("last") == "last"
    assert parse_target("12") == 12
    with pytest.raises(UsageError, match="'x1' is not a snapshot number or 'last'"):
        parse_target("x1")


def test_snapshot_number_from_subvolume_path() -> None:
    assert snapshot_number("@/.snapshots/12/snapshot") == 12
    assert snapshot_number(".snapshots/3/snapshot") == 3
    assert snapshot_number("@") is None
    assert snapshot_number("@/.snapshots/3/snapshot/x") is None


def _snap(n: int, cleanup: str = "number", userdata: dict[str, str] | None = None) -> Snapshot:
    date = datetime(2026, 1, 1, tzinfo=UTC) - timedelta(hours=10)
    return Snapshot(n, SnapshotType.SINGLE, None, date, "root", f"s{n}", cleanup, userdata or {})


def test_number_cleanup_keeps_limits_and_protected() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    snaps = [_snap(1, cleanup=""), *(_snap(n) for n in range(2, 9))]
    snaps.append(_snap(9, userdata={"important": "yes"}))
    snaps.append(_snap(10, userdata={"transactional-update-in-progress": "yes"}))
    limits = NumberLimits(limit=2, limit_important=1, min_age=0)
    # 8 is newest plain; 7 is kept by the limit; 3 is protected (booted); 9 is important.
    assert number_candidates(snaps, {3}, limits, now) == [2, 4, 5, 6]
    young = NumberLimits(limit=2, limit_important=1, min_age=11 * 3600)
    assert number_candidates(snaps, {3}, young, now) == []


def test_state_file_round_trip(tmp_path: Path) -> None:
    state.record_working(tmp_path, 3)
    state.record_working(tmp_path, 5)
    state.record_working(tmp_path, 3)
    assert state.last_working(tmp_path) == [3, 5]
    assert (tmp_path / state.STATE_FILE).read_text() == "LAST_WORKING_SNAPSHOTS='3 5'\n"


def test_quick_queries_are_only_plain_status_and_list() -> None:
    from transactional_update.cli.entry import parse_query

    assert parse_query(["status"]) == (Path("/"), False, "status")
    assert parse_query(["--root", "/mnt", "--json", "list"]) == (Path("/mnt"), True, "list")
    assert parse_query(["--root=/mnt", "status"]) == (Path("/mnt"), False, "status")
    for argv in (["status", "list"], ["-v", "status"], ["cleanup", "status"], ["--root"], []):
        assert parse_query(argv) is None


def _click_parse(argv: list[str]) -> tuple[dict[str, object], str, dict[str, object]]:
    """What the full command line makes of ``[OPTIONS] COMMAND …``: options, command, its params."""
    from transactional_update.cli import app as cli

    ctx = cli.cli.make_context("transactional-update", normalize_continue(argv))
    rest = list(ctx.protected_args) + list(ctx.args) if hasattr(ctx, "protected_args") else []
    sub = cli.cli.get_command(ctx, rest[0])
    assert sub is not None
    sub_ctx = sub.make_context(rest[0], rest[1:], parent=ctx)
    assert not sub_ctx.protected_args and not sub_ctx.args, "one command only"
    return dict(ctx.params), rest[0], dict(sub_ctx.params)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # click 8.2 deprecates protected_args
@pytest.mark.parametrize(
    "argv",
    [
        ["run", "true"],
        ["--root", "/mnt", "run", "--", "ls", "-l"],
        ["--root=/mnt", "--json", "-vv", "run", "grep", "-x", "--", "-y", "f"],
        ["-d", "-k", "--description", "a 'b' $c", "-q", "run", "sh", "-c", "exit 3"],
        ["--debug", "-nd", "--keep", "--drop-if-no-change", "run", "status", "list"],
        ["--verbose", "--quiet", "--non-interactive", "run", "--", "--", "x"],
        ["pkg", "install", "hello", "./local.deb"],
        ["-i", "--refresh", "pkg", "rm", "hello"],
        ["-in", "pkg", "update"],
        ["--json", "--root", "/mnt", "up"],
        ["-n", "dup"],
        ["--interactive", "patch"],
    ],
)
def test_quick_transactions_parse_as_the_full_command_line(argv: list[str]) -> None:
    from transactional_update.cli.entry import parse_transaction

    quick = parse_transaction(argv)
    assert quick is not None
    opts, command, args = quick
    params, click_command, sub = _click_parse(argv)
    assert command == click_command
    if command == "run":
        assert args == list(sub["command"])  # type: ignore[call-overload]
    elif command == "pkg":
        assert args == [sub["action"], *sub["names"]]  # type: ignore[misc]
    else:
        assert args == []
    assert Path(str(opts.get("root", "/"))) == params["root"]
    assert bool(opts.get("json")) == params["json"]
    assert opts["verbose"] == params["verbose"]
    for key in (
        "debug",
        "quiet",
        "non_interactive",
        "interactive",
        "refresh",
        "drop_if_no_change",
        "keep",
    ):
        assert bool(opts.get(key)) == params[key], key
    assert opts.get("description") == params["description"]


def test_quick_transactions_leave_everything_else_to_click() -> None:
    from transactional_update.cli.entry import parse_transaction

    for argv in (
        ["run"],
        ["run", "--help"],
        ["run", "-x", "y"],
        ["-c", "run", "true"],
        ["-c", "3", "run", "true"],
        ["--root", "run", "true"],  # --root's value would be "run"
        ["--root"],
        ["--root=", "run", "true"],
        ["--description", "a", "--description", "b", "run", "true"],
        ["-vx", "run", "true"],
        ["--version"],
        ["cleanup", "run", "true"],
        ["up", "reboot"],  # a chain
        ["pkg"],
        ["pkg", "purge", "x"],
        ["pkg", "install", "--help"],
        ["pkg", "install", "--", "x"],
        ["status"],
        [],
    ):
        assert parse_transaction(argv) is None, argv


def test_rootfs_cache_names_fit_a_file_name() -> None:
    from transactional_update.provision.image import rootfs_name

    assert rootfs_name("bookworm", ["dnf", "rpm"]) == "debian-bookworm-minbase+dnf+rpm.tar"
    many = [f"package-with-a-long-name-{i}" for i in range(20)]
    name = rootfs_name("bookworm", many)
    assert len(name) <= 200 and name.startswith("debian-bookworm-minbase+20pkgs-")
    assert name != rootfs_name("bookworm", many[:-1])


def test_write_atomic_keeps_the_old_file_when_the_write_fails(tmp_path: Path) -> None:
    from transactional_update.files import write_atomic

    target = tmp_path / "state"
    write_atomic(target, "old\n")
    assert target.read_text() == "old\n"
    # A target that cannot be replaced (a directory in its place): the error propagates, the
    # temporary file is gone, and what was there stays.
    blocked = tmp_path / "blocked"
    (blocked / "keep").mkdir(parents=True)
    with pytest.raises(OSError):
        write_atomic(blocked, b"new")
    assert (blocked / "keep").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocked", "state"]


def test_created_systems_get_a_machine_id_of_their_own(tmp_path: Path) -> None:
    from transactional_update.provision.image import _give_identity

    first, second, kept = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    (first / "etc").mkdir(parents=True)
    (first / "etc/machine-id").write_text("")  # as mmdebstrap leaves it
    (second / "etc").mkdir(parents=True)  # no file at all
    (kept / "etc").mkdir(parents=True)
    (kept / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    for snap in (first, second, kept):
        _give_identity(snap)
    ids = [(s / "etc/machine-id").read_text() for s in (first, second, kept)]
    assert all(len(i) == 33 and i.endswith("\n") and int(i, 16) for i in ids)
    assert ids[0] != ids[1]
    assert ids[2] == "0123456789abcdef0123456789abcdef\n"


def test_prune_only_text() -> None:
    from transactional_update.core.cleanup import PruneResult, prune_text
    from transactional_update.core.context import Followup

    def menu(done: bool | None) -> list[Followup]:
        return [Followup("boot_menu", "the boot menu", done)]

    assert prune_text(PruneResult()) == "no changelog entry of a deleted snapshot"
    assert prune_text(PruneResult(followups=menu(None))) == (
        "no changelog entry of a deleted snapshot"
    )
    assert prune_text(PruneResult(pruned=[2, 5], followups=menu(True))) == (
        "dropped the changelog entries of 2 deleted snapshot(s): 2 5; the boot menu is current"
    )
    assert prune_text(PruneResult(followups=menu(False))) == (
        "no changelog entry of a deleted snapshot; the boot menu was not refreshed"
    )
    assert prune_text(PruneResult(skipped="another transaction is running (pid 7)")) == (
        "skipped: another transaction is running (pid 7); "
        "the next transaction or cleanup catches up"
    )
