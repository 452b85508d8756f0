"""Pure logic of the boot menu: kernel choice, kernel arguments, quoting, splicing, grubenv.

Rendered menus are checked with the real ``grub-script-check`` (Debian's grub-common) when it is
installed; ``./tu-dev`` installs it.
"""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from transactional_update.boot import bootmenu, grub, grubenv
from transactional_update.boot.bootmenu import Flavour, Kernel, SnapshotFiles
from transactional_update.config import settings as config
from transactional_update.errors import ConfigError, UsageError
from transactional_update.provision.create_system import parse_size, partition_script
from transactional_update.snapshots.snapper import Snapshot, SnapshotType
from transactional_update.snapshots.system import FAILED, IN_PROGRESS

HOSTILE = "it's $(reboot); } \\ ${root} `id` \"q\" a\nmenuentry 'x' { echo pwned }\t#;"

needs_check = pytest.mark.skipif(
    shutil.which("grub-script-check") is None, reason="needs grub-script-check (grub-common)"
)


def snap(n: int, desc: str = "", **userdata: str) -> Snapshot:
    return Snapshot(
        n, SnapshotType.SINGLE, None, datetime(2026, 1, n, 8, 30, tzinfo=UTC), "root", desc,
        "number", userdata,
    )  # fmt: skip


KERNEL = Kernel("6.1.0-28-amd64", "/boot/vmlinuz-6.1.0-28-amd64", "/boot/initrd.img-6.1.0-28-amd64")


def files(kernel: Kernel | None = KERNEL, **defaults: str) -> SnapshotFiles:
    return SnapshotFiles(kernel, "/boot", dict(defaults), "Debian GNU/Linux 12 (bookworm)")


def build(snaps: list[Snapshot], **kw: object) -> bootmenu.Menu:
    args: dict[str, object] = {
        "fs_uuid": "0b5e7c1a-0000-4000-8000-000000000001",
        "store": "@/.snapshots",
        "booted": 1,
        "default": max(s.number for s in snaps),
        "flavour": Flavour.UPSTREAM,
        "title": "Snapshots",
        "limit": 20,
    }
    args.update(kw)
    file_map = args.pop("files", {})
    assert isinstance(file_map, dict)
    return bootmenu.build(
        snaps,
        lambda n: file_map.get(n, files()),
        lambda n: None,
        **args,  # type: ignore[arg-type]
    )


def script_check(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    f = tmp_path / "menu.cfg"
    f.write_text(text)
    return subprocess.run(
        ["grub-script-check", str(f)], capture_output=True, text=True, check=False
    )


# --- kernels and arguments -----------------------------------------------------------------------


def test_pick_kernel_takes_the_newest_version_and_its_initrd() -> None:
    names = [
        "vmlinuz-6.1.0-9-amd64",
        "vmlinuz-6.1.0-28-amd64",
        "initrd.img-6.1.0-9-amd64",
        "initrd.img-6.1.0-28-amd64",
        "config-6.1.0-28-amd64",
        "System.map-6.1.0-28-amd64",
    ]
    assert bootmenu.pick_kernel(names) == KERNEL


def test_pick_kernel_other_distributions_and_missing_initrd() -> None:
    k = bootmenu.pick_kernel(["vmlinuz-6.4.0-1-default", "initrd-6.4.0-1-default"])
    assert k == Kernel(
        "6.4.0-1-default", "/boot/vmlinuz-6.4.0-1-default", "/boot/initrd-6.4.0-1-default"
    )
    k = bootmenu.pick_kernel(["vmlinuz-6.9.1-200.fc40", "initramfs-6.9.1-200.fc40.img"])
    assert k is not None and k.initrd == "/boot/initramfs-6.9.1-200.fc40.img"
    assert bootmenu.pick_kernel(["vmlinuz-5.10"]) == Kernel("5.10", "/boot/vmlinuz-5.10", None)
    assert bootmenu.pick_kernel(["config-6.1", "grub", "vmlinuz-"]) is None
    # A file name with a newline is never put into the menu.
    assert bootmenu.pick_kernel(["vmlinuz-9\nx"]) is None


def test_grub_defaults_are_read_without_running_them() -> None:
    texts = [
        'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX=""\n'
        "GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`\n",
        'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX console=ttyS0,115200"  # serial\n'
        'export GRUB_CMDLINE_LINUX_DEFAULT="${GRUB_CMDLINE_LINUX_DEFAULT} splash"\n'
        'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT $(rm -rf /)"\n',
    ]
    got = bootmenu.parse_grub_defaults(texts)
    assert got == {
        "GRUB_CMDLINE_LINUX": " console=ttyS0,115200",
        "GRUB_CMDLINE_LINUX_DEFAULT": "quiet splash $(rm -rf /)",
    }


def test_kernel_args_pin_only_snapshot_entries_and_drop_admin_subvolumes() -> None:
    defaults = {"GRUB_CMDLINE_LINUX": "rootflags=subvol=@,compress=zstd console=ttyS0"}
    main = bootmenu.kernel_args("U", None, defaults)
    assert main == ("root=UUID=U", "ro", "rootflags=compress=zstd", "console=ttyS0")
    pinned = bootmenu.kernel_args("U", "@/.snapshots/4/snapshot", {})
    assert pinned == ("root=UUID=U", "ro", "rootflags=subvol=@/.snapshots/4/snapshot")
    assert not any("subvol" in a for a in bootmenu.kernel_args("U", None, {}))


# --- the model -----------------------------------------------------------------------------------


def test_main_entry_pins_the_default_snapshot_with_its_own_kernel() -> None:
    """Kernel and root of one snapshot: an unpinned entry would mount whatever btrfs' default is
    at boot, the wrong root for this kernel after a cut between the commit and the menu write."""
    k5 = Kernel("6.2", "/boot/vmlinuz-6.2", "/boot/initrd.img-6.2")
    menu = build([snap(1), snap(5)], default=5, files={5: files(k5)})
    assert menu.main is not None
    assert menu.main.number == 5
    assert menu.main.linux_path == "/@/.snapshots/5/snapshot/boot/vmlinuz-6.2"
    assert menu.main.initrd_path == "/@/.snapshots/5/snapshot/boot/initrd.img-6.2"
    assert "rootflags=subvol=@/.snapshots/5/snapshot" in menu.main.args
    assert menu.main.title == "Debian GNU/Linux 12 (bookworm)"
    entry1 = next(e for e in menu.entries if e.number == 1)
    assert "rootflags=subvol=@/.snapshots/1/snapshot" in entry1.args
    assert entry1.linux_path == "/@/.snapshots/1/snapshot/boot/vmlinuz-6.1.0-28-amd64"


def test_submenu_order_limit_marks_and_left_out() -> None:
    snaps = [
        snap(1, "first root filesystem"),
        snap(2, "old"),
        snap(3, "no kernel"),
        snap(4, "kept failure", **{FAILED: "boom"}),
        snap(5, "running", **{IN_PROGRESS: "yes"}),
        snap(6, "pkg install htop", important="yes"),
        snap(7, "newest"),
    ]
    menu = build(snaps, default=6, booted=1, limit=3, files={3: files(None)})
    # default and booted always, then the newest others up to the limit; newest first
    assert [e.number for e in menu.entries] == [7, 6, 1]
    # 3 lies beyond the limit: not even looked into
    assert [(x.number, x.reason) for x in menu.left_out] == [
        (4, "a failed transaction kept for inspection"),
        (5, "an unfinished transaction"),
    ]
    titles = {e.number: e.title for e in menu.entries}
    assert titles[6] == "Snapshot 6 · 2026-01-06 08:30 · pkg install htop (default, important)"
    assert titles[1] == "Snapshot 1 · 2026-01-01 08:30 · first root filesystem (booted)"
    assert titles[7] == "Snapshot 7 · 2026-01-07 08:30 · newest"
    no_kernel = {3: files(None)}
    assert [e.number for e in build(snaps, default=6, limit=0, files=no_kernel).entries] == [6, 1]
    everything = build(snaps, default=6, limit=99, files=no_kernel)
    assert [e.number for e in everything.entries] == [7, 6, 2, 1]
    assert [x.number for x in everything.left_out] == [3, 4, 5]
    assert everything.left_out[0].reason == "no kernel in /boot"
    # limit 4 passes over 3 (no kernel) to 2
    assert [e.number for e in build(snaps, default=6, limit=4, files=no_kernel).entries] == [
        7,
        6,
        2,
        1,
    ]


def test_changelog_summary_joins_an_admins_description() -> None:
    menu = bootmenu.build(
        [snap(1), snap(2, "weekly patch")],
        lambda n: files(),
        lambda n: "+1 pkg, 3 files" if n == 2 else None,
        fs_uuid="U", store="@/.snapshots", booted=1, default=2, flavour=Flavour.UPSTREAM,
        title="Snapshots", limit=5,
    )  # fmt: skip
    assert menu.entries[0].title.endswith("weekly patch · +1 pkg, 3 files (default)")


def test_no_main_entry_when_the_default_cannot_boot() -> None:
    assert build([snap(1), snap(2)], default=2, files={2: files(None)}).main is None
    menu = build([snap(1)], default=None)
    assert menu.main is None
    assert menu.notes == ("no main entry: the default subvolume is not a snapper snapshot",)


# --- rendering and quoting -----------------------------------------------------------------------


def test_grub_quote() -> None:
    assert bootmenu.grub_quote("plain") == "'plain'"
    assert bootmenu.grub_quote("it's") == "'it'\\''s'"
    assert bootmenu.grub_quote("") == "''"


def test_template_refuses_unquoted_values() -> None:
    assert bootmenu._finalize(bootmenu.Raw("tu-x")) == "tu-x"
    assert bootmenu._finalize("$x") == "'$x'"
    assert bootmenu._finalize(7) == "7"
    with pytest.raises(TypeError):
        bootmenu._finalize(None)
    with pytest.raises(TypeError):
        bootmenu._finalize(["a"])


@needs_check
def test_hostile_descriptions_render_as_valid_literal_script(tmp_path: Path) -> None:
    defaults = {"GRUB_CMDLINE_LINUX": "'a b' c$d"}
    menu = build(
        [snap(1, HOSTILE), snap(2, "ok")],
        default=2,
        title="Snap'shots }",
        files={1: files(KERNEL, **defaults)},
    )
    text = bootmenu.render(menu)
    assert script_check(text, tmp_path).returncode == 0, text
    expected_title = bootmenu.one_line(f"Snapshot 1 · 2026-01-01 08:30 · {HOSTILE} (booted)")
    assert bootmenu.grub_quote(expected_title) in text
    assert "submenu 'Snap'\\''shots }' --id tu-snapshots {" in text
    assert " 'a b' 'c$d'\n" in text  # kernel arguments: one quoted word each
    # Each line of the script starts with GRUB words of ours: nothing from the description
    # became a command of its own.
    for line in text.splitlines():
        word = line.strip().split(" ", 1)[0]
        assert word in {
            "", "#", "menuentry", "submenu", "}", "set", "insmod", "search", "echo", "linux",
            "initrd",
        }, line  # fmt: skip


@needs_check
def test_rendered_menu_passes_grub_script_check_in_every_shape(tmp_path: Path) -> None:
    for menu in (
        build([snap(1), snap(2)]),
        build([snap(1)], default=None),
        build([snap(1), snap(2)], default=2, files={2: files(None), 1: files(None)}),
        build([snap(1), snap(2)], flavour=Flavour.PATCHED),
    ):
        # as in grub.cfg, after 00_header (a file of comments only "will do nothing": exit 1)
        text = "set default=0\n" + bootmenu.render(menu)
        assert script_check(text, tmp_path).returncode == 0, text
    broken = bootmenu.render(build([snap(1)])) + "menuentry 'x' {\n"
    assert script_check(broken, tmp_path).returncode != 0


def test_json_model() -> None:
    data = bootmenu.to_json(build([snap(1), snap(2, HOSTILE)], default=2))
    assert data["main"]["number"] == 2
    assert data["main"]["next_entry"] == "tu-default"
    assert data["entries"][0]["description"] == HOSTILE
    assert data["entries"][0]["next_entry"] == "tu-snapshots>tu-snapshot-2"
    assert data["grub"] == "upstream"


def test_detect_flavour_by_the_btrfs_module(tmp_path: Path) -> None:
    assert bootmenu.detect_flavour(tmp_path) is Flavour.UPSTREAM
    mod = tmp_path / "usr/share/grub2/x86_64-efi/btrfs.mod"
    mod.parent.mkdir(parents=True)
    mod.write_bytes(b"\x7fELF...btrfs_relative_path\x00btrfs_subvol\x00")
    assert bootmenu.detect_flavour(tmp_path) is Flavour.PATCHED
    (tmp_path / "usr/sbin").mkdir(parents=True)
    (tmp_path / "usr/sbin/grub2-mkconfig").touch()
    tools = grub.detect(tmp_path)
    assert (tools.grub_dir, tools.mkconfig, tools.flavour) == (
        "boot/grub2",
        "grub2-mkconfig",
        Flavour.PATCHED,
    )


# --- grub.cfg section and grubenv ----------------------------------------------------------------

CFG = """\
### BEGIN /etc/grub.d/00_header ###
set default="0"
### END /etc/grub.d/00_header ###

### BEGIN /etc/grub.d/09_transactional-update ###
# old menu
menuentry 'old' {
}
### END /etc/grub.d/09_transactional-update ###

### BEGIN /etc/grub.d/40_custom ###
### END /etc/grub.d/40_custom ###
"""


def test_splice_replaces_only_our_section() -> None:
    new = grub.splice(CFG, "# new menu\n")
    assert new is not None
    assert "# old menu" not in new and "# new menu\n### END /etc/grub.d/09_" in new
    assert new.startswith("### BEGIN /etc/grub.d/00_header ###\nset default")
    assert new.endswith("### BEGIN /etc/grub.d/40_custom ###\n### END /etc/grub.d/40_custom ###\n")
    assert grub.section(new) == "# new menu\n"
    assert grub.section(CFG) == "# old menu\nmenuentry 'old' {\n}\n"
    assert grub.splice("set default=0\n", "x") is None
    assert grub.splice(CFG.replace("### END /etc/grub.d/09", "### END /etc/grub.d/99"), "x") is None


def test_grubenv_format_matches_grub_editenv(tmp_path: Path) -> None:
    env = tmp_path / "grubenv"
    grubenv.write(env, {"saved_entry": "0"})
    grubenv.update(env, next_entry="tu-snapshots>tu-snapshot-3")
    data = env.read_bytes()
    assert len(data) == 1024
    assert grubenv.parse(data) == {
        "saved_entry": "0",
        "next_entry": "tu-snapshots>tu-snapshot-3",
    }
    if shutil.which("grub-editenv"):
        out = subprocess.run(
            ["grub-editenv", str(env), "list"], capture_output=True, text=True, check=True
        ).stdout
        assert out == "saved_entry=0\nnext_entry=tu-snapshots>tu-snapshot-3\n"
        subprocess.run(["grub-editenv", str(env), "unset", "next_entry"], check=True)
        assert grubenv.read(env) == {"saved_entry": "0"}
    grubenv.update(env, saved_entry=None)
    assert grubenv.read(env) == {}
    with pytest.raises(UsageError):
        grubenv.format_block({"x": "a\nb"})
    with pytest.raises(UsageError):
        grubenv.format_block({"x": "y" * 1100})


# --- configuration and create-system's pure parts ------------------------------------------------


def test_boot_menu_config_keys() -> None:
    c = config.build({"BOOT_MENU_TITLE": ("Older states", "f:1"), "BOOT_MENU_LIMIT": ("5", "f:2")})
    assert (c.boot_menu_title, c.boot_menu_limit) == ("Older states", 5)
    assert (config.Config().boot_menu_title, config.Config().boot_menu_limit) == ("Snapshots", 20)
    with pytest.raises(ConfigError, match="BOOT_MENU_LIMIT='-1' is not a number"):
        config.build({"BOOT_MENU_LIMIT": ("-1", "f:1")})
    with pytest.raises(ConfigError, match="is not a one-line title"):
        config.build({"BOOT_MENU_TITLE": ("a\nb", "f:1")})


def test_defaults_text_and_kernel_args() -> None:
    text = grub.defaults_text(serial=True, cmdline="quiet")
    assert 'GRUB_TERMINAL="console serial"' in text
    assert (
        'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX fsck.repair=yes console=tty0 '
        'console=ttyS0,115200 quiet"' in text
    )
    # fsck.repair=yes on every managed system, also without other arguments, and first, so that
    # an admin's own fsck.repair= comes later and wins
    plain = grub.defaults_text()
    assert plain.splitlines()[-1] == 'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX fsck.repair=yes"'
    defaults = bootmenu.parse_grub_defaults(['GRUB_CMDLINE_LINUX="quiet"', plain])
    args = bootmenu.kernel_args("u", None, defaults)
    assert args[-2:] == ("quiet", "fsck.repair=yes")
    assert "GRUB_FONT=/boot/grub/fonts/unicode.pf2" in text
    with pytest.raises(UsageError, match="need quoting"):
        grub.defaults_text(cmdline='init="/bin/sh"')


def test_partition_script_and_sizes() -> None:
    script = partition_script("/dev/loop7")
    assert script.splitlines() == [
        "label: gpt",
        '/dev/loop7p1 : size=1MiB, type=21686148-6449-6E6F-744E-656564454649, name="bios-boot"',
        '/dev/loop7p4 : size=64MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="tu-esp"',
        '/dev/loop7p2 : size=128MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="tu-grub"',
        '/dev/loop7p3 : type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name="tu-root"',
    ]
    assert partition_script("/dev/sda").splitlines()[1].startswith("/dev/sda1 : ")
    assert parse_size("8G") == 8 << 30
    assert parse_size("4096M") == 4 << 30
    for bad in ("8X", "", "1G", "-5G"):
        with pytest.raises(UsageError):
            parse_size(bad)
