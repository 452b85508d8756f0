"""setup-boot-fs without devices: the fstab edit and the fsck.repair= reading."""

from __future__ import annotations

from transactional_update.boot import bootfs, bootmenu, grub
from transactional_update.provision import image

UUID = "ab1c2a69-f497-4b1c-aa8f-24c9df4546fd"
GRUB_UUID = "0f3c5f0e-7b1d-4a43-9a53-2d1f0d3a9c11"


def test_new_fstab_mounts_boot_grub_as_ext4_with_fsck_pass_2() -> None:
    text = image.fstab(UUID, GRUB_UUID)
    assert f"UUID={GRUB_UUID} /boot/grub ext4 defaults,nofail 0 2\n" in text
    entry = bootfs.fstab_entry(text, "/boot/grub")
    assert entry is not None and not bootfs.fstab_wants_change(entry[1])


def test_fixed_fstab_changes_only_the_boot_grub_line() -> None:
    old = image.fstab(UUID, GRUB_UUID).replace(" ext4 defaults,nofail 0 2", " ext2 defaults,nofail")
    old = "# an admin's comment: /boot/grub x\n" + old
    entry = bootfs.fstab_entry(old, "/boot/grub")
    assert entry is not None and bootfs.fstab_wants_change(entry[1])
    new = bootfs.fixed_fstab(old, "/boot/grub")
    changed = [(a, b) for a, b in zip(old.splitlines(), new.splitlines(), strict=True) if a != b]
    assert changed == [
        (
            f"UUID={GRUB_UUID} /boot/grub ext2 defaults,nofail",
            f"UUID={GRUB_UUID} /boot/grub ext4 defaults,nofail 0 2",
        )
    ]
    assert new.endswith("\n")
    # pass 0 (no check at boot) is changed too; options and dump are kept
    text = "LABEL=g  /boot/grub  ext4  noatime,nofail  1  0\n"
    assert bootfs.fixed_fstab(text, "/boot/grub") == "LABEL=g /boot/grub ext4 noatime,nofail 1 2\n"
    assert bootfs.fstab_entry("/dev/vda2 /boot ext4 defaults 0 2\n", "/boot/grub") is None


def test_fsck_repair_value_is_the_last_one_the_defaults_give() -> None:
    def value(*texts: str) -> str | None:
        return bootfs.fsck_repair_value(bootmenu.parse_grub_defaults(texts))

    assert value('GRUB_CMDLINE_LINUX="quiet"') is None
    assert value(grub.defaults_text()) == "yes"
    assert value(grub.defaults_text(), 'GRUB_CMDLINE_LINUX_DEFAULT="fsck.repair=no"') == "no"
    assert value(bootfs.with_fsck_repair(None)) == "yes"
    # our file without the argument (made before it existed) gets one line more, nothing else
    before = grub.defaults_text().replace(
        'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX fsck.repair=yes"\n', ""
    )
    assert value(before) is None
    after = bootfs.with_fsck_repair(before)
    assert after == before + 'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX fsck.repair=yes"\n'
    assert value('GRUB_CMDLINE_LINUX="console=ttyS0"', after) == "yes"
    assert bootfs.with_fsck_repair("X=1").startswith("X=1\nGRUB_CMDLINE_LINUX=")
