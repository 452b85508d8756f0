"""One transaction: fork a snapshot, change it in a chroot, make it the default if all went well.

The promise: the booted snapshot and the default subvolume are never half-changed.  The fork is the
only thing a transaction writes until the single atomic step that makes it the default; any failure,
signal or crash before that leaves the default as it was, and the fork is deleted (or, with
``--keep``, kept for inspection and never made the default).  A fork left behind by a killed
process still carries the in-progress mark; ``cleanup`` removes it.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from transactional_update.core import reboot_needed
from transactional_update.core.chroot import ChrootSession, command_env, plan_for
from transactional_update.core.context import Context
from transactional_update.core.lock import Lock
from transactional_update.errors import Interrupted, SnapshotError, TUError, UsageError
from transactional_update.log import step
from transactional_update.record import applied, changelog, state
from transactional_update.snapshots import btrfs, etcvol, leftovers
from transactional_update.snapshots.system import (
    CONTINUE_DEFAULT,
    FAILED,
    IN_PROGRESS,
    ManagedRoot,
    require_finished,
)

if TYPE_CHECKING:
    from transactional_update.config.settings import Manager
    from transactional_update.etc.carry import Carried

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    description: str
    continue_from: int | None = None  # None or CONTINUE_DEFAULT: the default; or a number
    from_booted: bool = False  # None above: the booted snapshot instead of the default
    keep: bool = False
    drop_if_no_change: bool = False
    summarize: bool = True  # append the change summary to the description (not to the admin's)


@dataclass
class Ran:
    argv: list[str]
    returncode: int
    duration: float
    interactive: bool = False


@dataclass
class Result:
    number: int | None = None  # the new default; None when dropped or failed
    base: int | None = None
    previous_default: int | None = None
    dropped: bool = False
    reason: str = ""  # why nothing was kept, when dropped
    summary: str = ""
    shadowed_writes: list[str] = field(default_factory=list)
    commands: list[Ran] = field(default_factory=list)
    reboot: str | None = None  # the reboot the change needs (Transaction.needs_reboot)
    live_etc: list[dict[str, Any]] = field(default_factory=list)  # etc.carry.Carried.record()


class NothingToDo(Exception):
    """Raised inside a transaction when a dry run finds nothing to change."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(
        f"interrupted by {signal.Signals(signum).name}",
        "the snapshot was discarded; the default is unchanged",
    )


class Transaction:
    """``with Transaction(ctx, opts) as tx: tx.run([...])`` — commits on a clean exit."""

    def __init__(self, ctx: Context, opts: Options) -> None:
        self.ctx = ctx
        self.opts = opts
        self.lock = Lock(ctx.managed.snapshots_dir, ctx.config.lock_wait)
        self.session: ChrootSession | None = None
        self.number: int | None = None
        self.result = Result()
        self._old_handlers: dict[int, Any] = {}
        self._conflicts: list[dict[str, Any]] = []  # live /etc merges to note once committed

    # -- the steps, in order ---------------------------------------------------------------------

    def __enter__(self) -> Transaction:
        if os.environ.get("TRANSACTIONAL_UPDATE") == "true":
            raise UsageError(
                "transactional-update cannot run inside a transaction",
                "leave the transactional-update shell first",
            )
        self._trap_signals()
        try:
            self.lock.acquire()
            base = self._choose_base()
            self._start_chroot()  # its namespaces are made while snapper creates the fork
            self._fork(base)
            self._enter_chroot()
        except BaseException as exc:
            self._abort(exc)
            self._finish()
            raise
        return self

    def run(
        self,
        argv: Sequence[str],
        extra_env: dict[str, str] | None = None,
        *,
        interactive: bool = False,
    ) -> int:
        """Run *argv* in the snapshot with the terminal; returns its exit code."""
        assert self.session is not None
        log.debug("in snapshot %s: %s", self.number, shlex.join(argv))
        res = self.session.run(argv, command_env(os.environ, extra_env))
        self.result.commands.append(Ran(list(argv), res.returncode, res.duration, interactive))
        return res.returncode

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> bool:
        try:
            if isinstance(e, NothingToDo):
                self._drop(e.reason)
                return True
            if e is None:
                try:
                    self._commit()
                except BaseException as exc:
                    self._abort(exc)
                    raise
            else:
                self._abort(e)
        finally:
            self._finish()
        return False

    def capture(
        self, argv: Sequence[str], extra_env: dict[str, str] | None = None
    ) -> tuple[int, str]:
        """Run *argv* in the snapshot and return its exit code and output (stdout and stderr)."""
        assert self.session is not None
        import tempfile  # here: only dry runs need it

        # A file, not a pipe: the output of a dry run can exceed a pipe's buffer.
        with tempfile.TemporaryFile() as out:
            res = self.session.run(
                argv, command_env(os.environ, extra_env), stdout=out.fileno(), stderr=out.fileno()
            )
            out.seek(0)
            text = out.read().decode(errors="replace")
        log.debug("dry run %s: exit %d", shlex.join(argv), res.returncode)
        self.result.commands.append(Ran(list(argv), res.returncode, res.duration))
        return res.returncode, text

    def needs_reboot(self, level: str) -> None:
        """Record that the change needs a reboot of *level* (``"reboot"``: a full one).

        Only while the transaction is open: the commit writes it into the changelog and
        snapper's userdata (where ``status`` finds it), and :attr:`Result.reboot` keeps it for
        the report.
        """
        assert self.session is not None
        self.result.reboot = level

    def _drop(self, reason: str) -> None:
        """End without a snapshot and without an error (nothing to change)."""
        if self.session is not None:
            self.session.kill()
            self.session = None
        log.info("%s; dropping snapshot %s", reason, self.number)
        if self.number is not None:
            self._delete()
        self.result.dropped = True
        self.result.reason = reason

    # -- the steps' details ----------------------------------------------------------------------

    def _choose_base(self) -> int:
        managed = self.ctx.managed
        applied.refuse_interrupted(self.ctx.root)  # whose /etc is live would be unclear
        # The running snapshot: the booted one, or the one apply made live over it.
        booted, default = managed.live(), managed.default()
        assert booted is not None  # open_root refuses a root that is not a snapshot
        self.result.previous_default = default
        base, level, why = choose_base(
            booted, default, self.opts.continue_from, self.opts.from_booted
        )
        if why:
            log.log(level, "%s", why)
        managed.require_snapshot_dir(base)
        require_finished(
            self.ctx.snapper.get_snapshot(base),
            "continue from a finished snapshot; remove it with: cleanup",
        )
        self.result.base = base
        return base

    def _fork(self, base: int) -> None:
        with step(f"creating snapshot from {base}"):
            self.number = self.ctx.snapper.create_snapshot(
                base,
                read_only=False,
                description=self.opts.description,
                cleanup="number",
                userdata={IN_PROGRESS: "yes"},
            )
        self.lock.note(f"snapshot {self.number}")
        log.info("working in snapshot %d (from %d)", self.number, base)
        self._give_etc(base)

    def _give_etc(self, base: int) -> None:
        """The fork's own /etc: the live one, or its base's with the live changes merged."""
        assert self.number is not None
        managed = self.ctx.managed
        if not etcvol.has_own_etc(managed.snapshot_dir(base)):
            return  # a system made before the writable /etc: snapper copied /etc with the rest
        from transactional_update.core import live_etc
        from transactional_update.etc import carry

        booted = managed.live()  # whose /etc is the live one (apply binds the applied one's)
        assert booted is not None
        live_etc.catch_up_hidden(self.ctx)
        carried = carry.begin(
            self.ctx.root,
            booted,
            base,
            managed.snapshot_dir(base),
            self.number,
            managed.snapshot_dir(self.number),
        )
        self._took_live(carried)

    def _took_live(self, carried: Carried | None) -> None:
        if carried is None or carried.empty:
            return
        record = carried.record()
        self.result.live_etc.append(record)
        self._conflicts.append(record)
        for c in record["conflicts"]:
            log.warning(
                "/etc conflict: %s changed live and in snapshot %d (%s); the snapshot's version "
                "is kept, the live one is %s",
                c["path"],
                self.number,
                c["reason"],
                c["live"],
            )
        for f in record["failed"]:
            log.warning(
                "/etc: %s not carried into snapshot %d: %s", f["path"], self.number, f["error"]
            )

    def _start_chroot(self) -> None:
        plan = plan_for(self.ctx.root, self.ctx.config.bind_dirs)
        self.session = ChrootSession(None, plan)
        self.session.start()

    def _enter_chroot(self) -> None:
        assert self.number is not None and self.session is not None
        self.session.open(self.ctx.managed.snapshot_dir(self.number))

    def _commit(self) -> None:
        """Seal the fork, record it, make it the default, and only then say so.

        Everything reported as done is on disk before :attr:`Result.number` is set: the btrfs
        transaction holding the new default is committed (a power cut right after the success
        line keeps it), and GRUB's menu is rewritten only after that, so it never names a
        default that a power cut could still take back.  The commit intent is durable before
        the in-progress mark is dropped, so a cut between them and the btrfs commit leaves a
        complete snapshot that is not the default as a *lost commit*, which ``status`` names and
        ``cleanup`` or ``rollback N`` resolve (see :mod:`snapshots.leftovers`), never one nobody
        lists.
        """
        assert self.session is not None and self.number is not None
        fork_dir = self.ctx.managed.snapshot_dir(self.number)
        untouched = self._close_chroot()
        etc_files = self._etc_changes(fork_dir, untouched)
        self._carry_live(fork_dir)
        self._seal(fork_dir)
        entry = self._record(
            self.ctx.managed.snapshot_dir(self._base()), fork_dir, untouched, etc_files
        )
        if self.opts.drop_if_no_change and entry.files_error is None and _no_change(entry.files):
            log.info("nothing changed; dropping snapshot %d", self.number)
            self._delete()
            self.result.dropped = True
            return
        # The intent before the in-progress mark goes: a cut at any point from here on leaves
        # a snapshot that status names (stale while marked, a lost commit once finished).
        leftovers.write_intent(
            self.ctx.root, self.number, self._base(), btrfs.subvolume_id(fork_dir)
        )
        self._describe(entry)
        self._make_default(fork_dir)
        self._follow_default(entry)
        reboot_needed.mark(self.ctx.root, self.result.reboot or reboot_needed.FULL)
        self._note_conflicts()
        log.info("snapshot %d is the new default; reboot to use it", self.result.number)

    def _note_conflicts(self) -> None:
        """The committed snapshot's /etc conflicts, where ``status`` shows them."""
        if not self._conflicts:
            return
        from transactional_update.record import conflicts

        assert self.number is not None
        for merged in self._conflicts:
            try:
                conflicts.note(self.ctx.root, self.number, merged["at"], merged["conflicts"])
            except OSError as exc:
                log.warning("cannot note the /etc conflicts for status: %s", exc)

    def _base(self) -> int:
        assert self.result.base is not None
        return self.result.base

    def _close_chroot(self) -> bool:
        """End the chroot; whether the commands left the fork untouched."""
        assert self.session is not None
        report = self.session.close()
        self.session = None
        self.result.shadowed_writes = report.shadowed_writes
        for path in report.shadowed_writes:
            log.warning(
                "written outside the snapshot, discarded: %s "
                "(a separate subvolume on the running system)",
                path,
            )
        return report.untouched

    def _etc_changes(self, fork_dir: Path, untouched: bool) -> list[dict[str, Any]] | None:
        """What the commands changed in the fork's own /etc (None: it has none), compared with
        its state when they started, before the live changes are merged in."""
        start = etcvol.info_dir(fork_dir) / etcvol.START
        if not btrfs.is_subvolume(start):
            return None
        try:
            if untouched:
                return []
            return _as_dicts(_etc_file_changes(start, fork_dir / etcvol.ETC))
        except TUError as err:
            log.warning("cannot compare /etc with its state at the start: %s", err.message)
            return []
        finally:
            etcvol.drop(fork_dir, etcvol.START)

    def _carry_live(self, fork_dir: Path) -> None:
        """The live /etc's changes since the fork, into it (again at shutdown and boot)."""
        assert self.number is not None
        booted = self.ctx.managed.live()
        if booted is None or not etcvol.has_own_etc(fork_dir):
            return
        from transactional_update.etc import carry

        try:
            with step("merging the live /etc's changes"):
                carried = carry.merge_live(
                    self.ctx.root, booted, self.number, fork_dir, carry.Moment.COMMIT
                )
        except (TUError, OSError) as exc:
            # The sync point stays where it was: the shutdown's or the boot's merge carries them.
            why = exc.message if isinstance(exc, TUError) else str(exc)
            log.warning(
                "the live /etc's changes were not merged now (%s); they follow at the "
                "shutdown or the next boot (sync-etc)",
                why,
            )
            return
        self._took_live(carried)

    def _seal(self, fork_dir: Path) -> None:
        booted = self.ctx.managed.booted()
        if booted is not None and btrfs.is_read_only(self.ctx.managed.snapshot_dir(booted)):
            # Now, not after the changelog: btrfs send needs it read-only too, and each flip of
            # the flag commits a btrfs transaction.
            btrfs.set_read_only(fork_dir, True)

    def _describe(self, entry: changelog.Entry) -> None:
        """The summary into snapper's metadata (dropping the in-progress mark) and the changelog."""
        assert self.number is not None
        summary = entry.summary()
        description = self.opts.description
        if self.opts.summarize:
            description = f"{description} · {summary}"
        self.ctx.snapper.set_snapshot(
            self.number, description=description, userdata=changelog.userdata(entry)
        )
        changelog.save(self.ctx.root, entry)
        self.result.summary = summary

    def _make_default(self, fork_dir: Path) -> None:
        """The commit point: one atomic btrfs operation, made durable before anything is said."""
        assert self.number is not None
        root = self.ctx.root
        running = working_snapshot(self.ctx.managed, root)
        if running is not None:  # before the commit point: nothing may fail after it
            state.record_working(root, running)
        btrfs.set_default(fork_dir)
        self.result.number = self.number  # from here on nothing may undo the fork (_abort)
        # In the same btrfs transaction as the new default when /var is on this filesystem (the
        # MicroOS layout): a cut before the sync below brings the fsynced intent back (btrfs
        # replays its log) together with the old default.
        leftovers.clear_intent(root)
        try:
            btrfs.sync(root)
        except TUError as exc:
            exc.message = f"snapshot {self.number} is the new default, but {exc.message}"
            exc.hint = "run `sync` before relying on it; a power cut now may undo the change"
            raise

    def _follow_default(self, entry: changelog.Entry) -> None:
        """What follows the default (GRUB's menu) follows it; what failed goes into the record."""
        # Entry fields (e.g. boot_menu) that a subscriber names; Any: replace() checks each type
        notes: dict[str, Any] = {
            k: v for f in self.ctx.default_changed() for k, v in f.notes.items()
        }
        if notes:
            try:
                changelog.save(self.ctx.root, replace(entry, **notes))
            except OSError as exc:
                log.warning("cannot record %s in the changelog: %s", ", ".join(notes), exc)

    def _record(
        self,
        base_dir: Path,
        fork_dir: Path,
        untouched: bool,
        etc_files: list[dict[str, Any]] | None = None,
    ) -> changelog.Entry:
        """The changelog entry: what ran, and what changed according to btrfs and the databases.

        A snapshot the commands left *untouched* (its btrfs generation did not move) holds
        exactly what its base held: nothing to compare, and the comparing modules stay unloaded.
        A fork with its own /etc has *etc_files* from comparing it with its start: btrfs send
        does not look into nested subvolumes.
        """
        assert self.number is not None and self.result.base is not None
        files: list[dict[str, Any]] = []
        files_error = None
        packages: list[dict[str, Any]] = []
        if not untouched:
            files, files_error = _file_changes(base_dir, fork_dir)
            packages = _package_changes(base_dir, fork_dir, self.ctx.config.package_manager)
        if etc_files is not None:
            files += etc_files  # file_changes(own_etc=False) left this /etc out
        commands = [
            changelog.Command(c.argv, c.returncode, round(c.duration, 3), c.interactive)
            for c in self.result.commands
        ]
        entry = changelog.new_entry(
            self.number,
            self.result.base,
            self.opts.description,
            commands,
            self.result.shadowed_writes,
        )
        return replace(
            entry,
            packages=packages,
            files=files,
            files_error=files_error,
            reboot=self.result.reboot,
            live_etc=list(self.result.live_etc),
        )

    def _abort(self, exc: BaseException) -> None:
        if self.session is not None:
            self.session.kill()
            self.session = None
        if self.number is None or self.result.number is not None:
            return  # nothing forked, or the fork is the default already: nothing to undo
        reason = (
            exc.message
            if isinstance(exc, TUError)
            else (
                "interrupted"
                if isinstance(exc, KeyboardInterrupt)
                else f"{type(exc).__name__}: {exc}"
            )
        )
        if self.opts.keep:
            try:
                # snapper forbids "," and "=" in userdata values
                failed = {FAILED: reason.replace(",", ";").replace("=", ":")}
                self.ctx.snapper.set_snapshot(self.number, userdata=failed)
                if isinstance(exc, TUError):
                    exc.hint = (
                        f"snapshot {self.number} was kept for inspection (--keep); "
                        "the default is unchanged"
                    )
                log.warning(
                    "transaction failed (%s); snapshot %d kept for inspection, not the default",
                    reason,
                    self.number,
                )
                return
            except TUError as err:
                log.error("cannot mark snapshot %d as failed: %s; deleting it", self.number, err)
        log.warning(
            "transaction failed (%s); snapshot %d discarded, the default is unchanged",
            reason,
            self.number,
        )
        self._delete()

    def _delete(self) -> None:
        assert self.number is not None
        fork_dir = self.ctx.managed.snapshot_dir(self.number)
        try:
            subvol = btrfs.subvolume_id(fork_dir)
        except TUError:
            subvol = None
        leftovers.clear_intent(self.ctx.root)  # it may name this fork, which is going
        try:
            self.ctx.snapper.delete_snapshots([self.number])
        except TUError as err:
            log.error(
                "snapper could not delete snapshot %d (%s); `cleanup` will retry", self.number, err
            )
            return
        if subvol is not None:
            # btrfs frees a deleted subvolume's space later; a disk-full abort must leave room
            # for the very next transaction, so wait for the cleaner here.
            btrfs.wait_cleaned(self.ctx.root, {subvol}, timeout=30.0)
        self.number = None

    def _trap_signals(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, _raise_interrupted)

    def _finish(self) -> None:
        self.lock.release()
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers.clear()


def _no_change(files: Sequence[dict[str, Any]]) -> bool:
    from transactional_update.record.filediff import transient

    return all(transient(f["path"]) for f in files)


def _file_changes(base_dir: Path, fork_dir: Path) -> tuple[list[dict[str, Any]], str | None]:
    from transactional_update.record import filediff

    try:
        # The fork's own /etc is compared with its start instead (Transaction._etc_changes): the
        # base's may be the live /etc, edited since.
        changes = filediff.file_changes(base_dir, fork_dir, own_etc=False)
    except TUError as err:  # e.g. a writable base cannot be sent
        return [], err.message
    return _as_dicts(changes), None


def _etc_file_changes(start: Path, etc: Path) -> list[Any]:
    from transactional_update.record import filediff

    return filediff.etc_changes(start, etc)


def _as_dicts(changes: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"path": f.path, "kind": str(f.kind), "dir": f.is_dir} for f in changes]


def _package_changes(
    base_dir: Path, fork_dir: Path, forced: Manager | None
) -> list[dict[str, Any]]:
    from transactional_update.record import pkgdb, pkgdiff

    try:
        manager = pkgdb.manager_for(fork_dir, forced)
        return [
            {"name": p.name, "kind": str(p.kind), "old": p.old, "new": p.new}
            for p in pkgdiff.package_changes(base_dir, fork_dir, manager)
        ]
    except TUError as err:
        log.debug("no package changes recorded: %s", err)
        return []


def choose_base(
    booted: int, default: int | None, want: int | None, from_booted: bool
) -> tuple[int, int, str]:
    """The snapshot to fork, and what to log about the choice (level, text; "" for nothing).

    What boots next (the default), so changes stack until a reboot.  ``--continue N`` (*want*)
    names the base; ``--from-booted`` takes the booted snapshot, dropping a pending default's
    changes from what boots next.  A default that is not a snapper snapshot (the top level, or
    a subvolume set by hand) cannot be built on: the booted snapshot is the base then.
    """
    if want is not None and want != CONTINUE_DEFAULT:
        return want, logging.DEBUG, ""
    if default is None:
        if want == CONTINUE_DEFAULT:
            raise SnapshotError(
                "the default subvolume is not a snapper snapshot",
                "pass the snapshot to continue from: --continue N",
            )
        return (
            booted,
            logging.WARNING,
            (
                "the default subvolume is not a snapper snapshot; "
                f"this transaction starts from the booted snapshot {booted}"
            ),
        )
    if default == booted:
        return booted, logging.DEBUG, ""
    if from_booted:
        return (
            booted,
            logging.WARNING,
            (
                f"snapshot {default} (not booted yet) is the pending default; this transaction "
                f"starts from the booted snapshot {booted} (--from-booted) and supersedes it"
            ),
        )
    return (
        default,
        logging.INFO,
        (
            f"building on the pending default snapshot {default} (not booted yet): its "
            f"changes are kept (--from-booted starts from the booted {booted} instead)"
        ),
    )


def default_description(kind: str, argv: Sequence[str] = ()) -> str:
    text = f"{kind}: {shlex.join(argv)}" if argv else kind
    return text if len(text) <= 200 else text[:197] + "..."


def working_snapshot(managed: ManagedRoot, root: Path) -> int | None:
    """The snapshot known to work: the live one (booted, or applied since), but the booted one
    while an applied snapshot's kernel has not run yet (``rollback last`` boots it whole)."""
    live, booted = managed.live(), managed.booted()
    if live != booted:
        record = applied.load(root, live)
        if record is None or record.get("kernel_pending"):
            return booted
    return live
