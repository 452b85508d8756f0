"""etc.accounts: the merge of passwd, group, shadow and gshadow by entry (pure)."""

from __future__ import annotations

import pytest

from transactional_update.etc.accounts import AccountsMerge, merge_accounts

USERS = (
    "root:x:0:0:root:/root:/bin/bash\n"
    "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
    "bin:x:2:2:bin:/bin:/usr/sbin/nologin\n"
)
ALICE = "alice:x:1000:1000:Alice:/home/alice:/bin/bash\n"
POSTFIX = "postfix:x:105:110::/var/spool/postfix:/usr/sbin/nologin\n"


def test_users_added_on_both_sides_both_survive() -> None:
    result = merge_accounts("passwd", USERS, USERS + ALICE, USERS + POSTFIX)
    # Theirs' order first, then the entries added live.
    assert result == AccountsMerge(USERS + POSTFIX + ALICE, ())


def test_a_change_on_one_side_is_taken() -> None:
    ours = USERS.replace("root:/root:/bin/bash", "root:/root:/bin/zsh")
    theirs = USERS.replace("daemon:/usr/sbin", "daemon:/var/lib/daemon") + POSTFIX
    result = merge_accounts("passwd", USERS, ours, theirs)
    assert result is not None
    assert result.text == (
        "root:x:0:0:root:/root:/bin/zsh\n"
        "daemon:x:1:1:daemon:/var/lib/daemon:/usr/sbin/nologin\n"
        "bin:x:2:2:bin:/bin:/usr/sbin/nologin\n" + POSTFIX
    )
    assert result.conflicts == ()


def test_an_entry_changed_differently_on_both_sides_is_theirs_and_reported() -> None:
    ours = USERS.replace("/bin/bash", "/bin/zsh") + ALICE
    theirs = USERS.replace("/bin/bash", "/bin/fish")
    result = merge_accounts("passwd", USERS, ours, theirs)
    assert result == AccountsMerge(theirs + ALICE, ("root",))


def test_deletions() -> None:
    without_bin = USERS.replace("bin:x:2:2:bin:/bin:/usr/sbin/nologin\n", "")
    # Deleted on one side, unchanged on the other: gone, from either side.
    assert merge_accounts("passwd", USERS, without_bin, USERS + POSTFIX) == AccountsMerge(
        without_bin + POSTFIX, ()
    )
    assert merge_accounts("passwd", USERS, USERS + ALICE, without_bin) == AccountsMerge(
        without_bin + ALICE, ()
    )
    # Deleted live, changed by the package: theirs' entry stays, reported.
    changed = USERS.replace("bin:/bin:", "bin:/usr/bin:")
    assert merge_accounts("passwd", USERS, without_bin, changed) == AccountsMerge(changed, ("bin",))
    # Changed live, deleted by the package: theirs (no entry) wins, reported.
    assert merge_accounts("passwd", USERS, changed, without_bin) == AccountsMerge(
        without_bin, ("bin",)
    )


def test_added_on_both_sides_differently_is_theirs() -> None:
    ours = USERS + "svc:x:990:990::/srv:/bin/sh\n"
    theirs = USERS + "svc:x:991:991::/var/lib/svc:/usr/sbin/nologin\n"
    assert merge_accounts("passwd", USERS, ours, theirs) == AccountsMerge(theirs, ("svc",))


def test_a_live_user_whose_uid_the_package_took_is_left_out() -> None:
    ours = USERS + "backup:x:105:34::/var/backups:/usr/sbin/nologin\n"
    result = merge_accounts("passwd", USERS, ours, USERS + POSTFIX)
    assert result == AccountsMerge(USERS + POSTFIX, ("backup",))


def test_shadow() -> None:
    base = "root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n"
    ours = base.replace("root:*:19000", "root:$6$salt$hash:20000") + "alice:!:20000::::::\n"
    theirs = base + "postfix:!:20001::::::\n"
    result = merge_accounts("shadow", base, ours, theirs)
    assert result == AccountsMerge(
        "root:$6$salt$hash:20000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n"
        "postfix:!:20001::::::\nalice:!:20000::::::\n",
        (),
    )


GROUP = "root:x:0:\nsudo:x:27:bob,carol\nusers:x:100:\n"


def test_group_members_changed_on_both_sides_merge() -> None:
    # Live: alice joined sudo, carol left.  Package: dave joined.
    ours = GROUP.replace("sudo:x:27:bob,carol", "sudo:x:27:bob,alice")
    theirs = GROUP.replace("sudo:x:27:bob,carol", "sudo:x:27:bob,carol,dave")
    result = merge_accounts("group", GROUP, ours, theirs)
    assert result == AccountsMerge(GROUP.replace("bob,carol", "bob,dave,alice"), ())


def test_group_other_fields_changed_differently_conflict() -> None:
    ours = GROUP.replace("sudo:x:27:bob,carol", "sudo:x:28:bob,alice")
    theirs = GROUP.replace("sudo:x:27:bob,carol", "sudo:x:29:bob")
    assert merge_accounts("group", GROUP, ours, theirs) == AccountsMerge(theirs, ("sudo",))
    # One side's gid change and both sides' member changes combine.
    ours = GROUP.replace("sudo:x:27:bob,carol", "sudo:x:28:bob,carol,alice")
    theirs = GROUP.replace("sudo:x:27:bob,carol", "sudo:x:27:carol")
    assert merge_accounts("group", GROUP, ours, theirs) == AccountsMerge(
        GROUP.replace("sudo:x:27:bob,carol", "sudo:x:28:carol,alice"), ()
    )


def test_groups_added_on_both_sides_and_gid_clash() -> None:
    ours = GROUP + "alice:x:1000:\nlocal:x:110:\n"
    theirs = GROUP + "postfix:x:110:\n"
    assert merge_accounts("group", GROUP, ours, theirs) == AccountsMerge(
        theirs + "alice:x:1000:\n", ("local",)
    )


def test_gshadow_members_merge() -> None:
    base = "sudo:*::bob,carol\n"
    ours = "sudo:*::bob,carol,alice\n"
    theirs = "sudo:*::carol\n"
    assert merge_accounts("gshadow", base, ours, theirs) == AccountsMerge(
        "sudo:*::carol,alice\n", ()
    )


def test_empty_and_unterminated_files() -> None:
    assert merge_accounts("passwd", "", ALICE, POSTFIX) == AccountsMerge(POSTFIX + ALICE, ())
    unterminated = USERS + POSTFIX.rstrip("\n")
    assert merge_accounts("passwd", USERS, USERS + ALICE, unterminated) == AccountsMerge(
        USERS + POSTFIX + ALICE, ()
    )


def test_a_name_twice_is_not_merged() -> None:
    assert merge_accounts("passwd", USERS, USERS + ALICE + ALICE, USERS) is None


def test_only_account_files() -> None:
    with pytest.raises(ValueError, match="not an account file"):
        merge_accounts("hosts", "", "", "")
