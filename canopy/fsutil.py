"""Atomic file and folder writes: readers see the old output or the new one, never half."""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from canopy.errors import UserError, is_disk_full, note_disk_full


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary sibling, fsync, then rename over."""
    path = Path(path)
    refuse_replacing_non_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path.parent)
    # The pid in the name tells a later run whether the writer is gone (then it is stale).
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-",
                               suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a normal file is wanted
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if is_disk_full(err):
            note_disk_full(err, path.parent, len(data))
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@dataclass(frozen=True)
class OutputKind:
    """What a command writes into an output folder, so that a folder it did not write is
    never replaced (a typo in `paths.*` must not delete the user's files)."""

    what: str  # "tiles folder": for messages
    option: str  # the param and option that choose the folder, for messages
    recognise: Callable[[Path], bool]  # True for an existing folder this output left


def check_replaceable(target: Path, kind: OutputKind) -> None:
    """Return if an output swap may replace `target`: nothing is there, an empty folder, or a
    folder that `kind` recognises as its own. Otherwise raise the one line that names the
    path and what is in it. Never a device, a file, a mount point, a top-level or home
    folder, or the folder this process works in (or one holding it)."""
    target = Path(target)
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return
    except OSError as err:
        _refuse(target, kind, f"it cannot be inspected: {err.strerror}")
    if stat.S_ISLNK(info.st_mode):
        try:
            info = os.stat(target)
        except OSError:
            _refuse(target, kind, f"it is a broken symbolic link to {os.readlink(target)}")
    if not stat.S_ISDIR(info.st_mode):
        _refuse(target, kind, f"it is {describe_non_folder(info)}")
    try:
        names = sorted(os.listdir(target))
    except OSError as err:
        _refuse(target, kind, f"it cannot be listed: {err.strerror}")
    reason = _protected_folder(target)
    if reason:
        _refuse(target, kind, f"{reason}, holding {_listing(target, names)}" if names else reason)
    if names and not kind.recognise(target):
        _refuse(target, kind, f"it holds {_listing(target, names)}")


def describe_non_folder(info: os.stat_result) -> str:
    mode = info.st_mode
    if stat.S_ISREG(mode):
        return f"a file of {info.st_size} bytes"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "neither a file nor a folder"


def _protected_folder(target: Path) -> str | None:
    """Why replacing the folder `target` would break more than an output, or None."""
    resolved = target.resolve()
    if resolved.parent == resolved or resolved.parent == Path(resolved.anchor):
        return "it is a top-level system folder"
    if os.path.ismount(resolved):
        return "it is a mount point"
    for name, where in (("the folder canopy runs in", Path.cwd), ("your home folder", Path.home)):
        with contextlib.suppress(OSError, RuntimeError):  # no working folder, no home
            held = where().resolve()
            if held == resolved or resolved in held.parents:
                return f"it is {name}" if held == resolved else f"it contains {name}"
    return None


def _listing(folder: Path, names: list[str], shown: int = 4) -> str:
    def label(name: str) -> str:
        return f"{name}/" if (folder / name).is_dir() else name

    listed = ", ".join(label(name) for name in names[:shown])
    rest = len(names) - shown
    return f"{listed} and {rest} more" if rest > 0 else listed


def _refuse(target: Path, kind: OutputKind, what: str):
    raise UserError(f"{target} is not a {kind.what} that Canopy wrote ({what}): refusing to "
                    f"replace it; point {kind.option} at a new or empty folder, or move it "
                    "away yourself")


def refuse_replacing_non_file(path: Path) -> None:
    """A file output may replace a file (or nothing), never a folder, device or FIFO."""
    try:
        info = os.stat(path)
    except OSError:
        return  # nothing there (or a broken link, which the rename replaces)
    if stat.S_ISREG(info.st_mode):
        return
    what = "a folder" if stat.S_ISDIR(info.st_mode) else describe_non_folder(info)
    raise UserError(f"{path} is {what}, not a file: refusing to replace it with a file; "
                    "choose another output path")


@contextlib.contextmanager
def atomic_dir(target: Path, kind: OutputKind) -> Iterator[Path]:
    """Yield an empty staging folder that replaces `target` only if the block succeeds.

    The staging folder is a hidden sibling of `target` (same filesystem, so the final rename
    is atomic). On any exception, Ctrl-C included, the staging folder is removed and the
    previous `target` is left untouched. Only an output of `kind` (or an empty folder) is
    ever replaced: anything else is refused before the work starts, and again just before
    the swap (it may have appeared meanwhile).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted_swap(target)
    check_replaceable(target, kind)
    _remove_stale_staging(target)
    staging = Path(tempfile.mkdtemp(dir=target.parent,
                                    prefix=f"{_staging_prefix(target)}{os.getpid()}-"))
    try:
        staging.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; the output should not be
        yield staging
        check_replaceable(target, kind)
        replace_dir(staging, target)
    except OSError as err:
        if is_disk_full(err):
            if err.filename is not None and str(err.filename).startswith(str(staging)):
                err.filename = None  # the hidden staging folder's name means nothing to users
            note_disk_full(err, target.parent)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# The hidden siblings an output swap makes: `.<name>.staging-<pid>-<random>` while the new
# output is built, `.<name>.old-<pid>-<random>` for the old output between the two renames of
# replace_dir. The pid tells later runs, and readers, whether the writer is still alive.
def _staging_prefix(target: Path) -> str:
    return f".{target.name}.staging-"


def _old_prefix(target: Path) -> str:
    return f".{target.name}.old-"


def _writer_pid(sibling: Path, prefix: str) -> int | None:
    """The pid in a staging or moved-aside name; None for names without one (written by
    versions that did not record it)."""
    pid = sibling.name[len(prefix):].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def _siblings(target: Path, prefix: str) -> list[Path]:
    return sorted(target.parent.glob(f"{glob.escape(prefix)}*"))


def _remove_stale_staging(target: Path) -> None:
    """Remove staging folders left by runs that were killed (their process is gone)."""
    prefix = _staging_prefix(target)
    for stale in _siblings(target, prefix):
        pid = _writer_pid(stale, prefix)
        if pid is not None and not _process_alive(pid):
            shutil.rmtree(stale, ignore_errors=True)


_TEMP_FILE = re.compile(r"^\..+\.(\d+)-[^.]*\.tmp$")


def remove_stale_temp_files(folder: Path) -> None:
    """Remove the temporary files atomic_write_bytes left in `folder` when its process was
    killed (their pid is in the name and the process is gone), so no output carries them."""
    for stale in Path(folder).glob(".*.tmp"):
        match = _TEMP_FILE.match(stale.name)
        if match and not _process_alive(int(match.group(1))):
            with contextlib.suppress(OSError):
                stale.unlink()


def recover_interrupted_swap(target: Path) -> None:
    """Undo what a run killed inside replace_dir left: the old output moved aside to
    `.<name>.old-<pid>-*` and nothing at `target` (then the old output goes back), or the new
    output in place and the old one not yet removed (then it is removed)."""
    leftovers = [p for p in _siblings(target, _old_prefix(target)) if _writer_gone(p, target)]
    if not leftovers:
        return
    if not (target.exists() or target.is_symlink()):
        newest = max(leftovers, key=lambda p: p.lstat().st_mtime)
        os.replace(newest, target)
        leftovers.remove(newest)
        fsync_dir(target.parent)
    for old in leftovers:
        _remove(old)


def _writer_gone(leftover: Path, target: Path) -> bool:
    pid = _writer_pid(leftover, _old_prefix(target))
    # Names without a pid come from versions that did not record it: long gone.
    return pid is None or not _process_alive(pid)


def refuse_half_swapped(target: Path, command: str) -> None:
    """For a reader that finds its input `target` missing: when a writer's moved-aside old
    output or staging folder lies beside it, raise the one line that says what happened and
    what to run (`command` writes `target`, e.g. "canopy etl"); else return, and the reader
    says the input is missing as usual."""
    target = Path(target)
    if target.exists() or target.is_symlink():
        return
    for prefix, what in ((_old_prefix(target), "was killed mid-swap"),
                         (_staging_prefix(target), "was killed before its output was in place")):
        for sibling in _siblings(target, prefix):
            pid = _writer_pid(sibling, prefix)
            if pid is not None and _process_alive(pid):
                raise UserError(f"{target} is missing while `{command}` (pid {pid}) writes it "
                                f"({sibling.name} is beside it): wait for it to finish, then "
                                "run again")
            raise UserError(f"{target} is missing but {sibling.name} is beside it: a "
                            f"`{command}` {what}; re-run `{command}` (it restores or replaces "
                            "the output)")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def replace_dir(new: Path, target: Path) -> None:
    """Swap folder `new` into place at `target`, removing the old one afterwards."""
    old = None
    if target.exists() or target.is_symlink():
        # The pid tells the next run whether this swap is still under way (see
        # recover_interrupted_swap).
        old = Path(tempfile.mkdtemp(dir=target.parent,
                                    prefix=f"{_old_prefix(target)}{os.getpid()}-"))
        os.rmdir(old)
        os.replace(target, old)
    os.replace(new, target)
    fsync_dir(target.parent)
    if old is not None:
        _remove(old)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def output_lock(target: Path, command: str) -> Iterator[None]:
    """Hold the lock of output folder `target` for the block, or refuse in one line.

    Two runs writing one output (two `canopy train` on one models folder: the second resumes
    from the first's checkpoint while it still trains) corrupt each other. The lock is a POSIX
    record lock on a hidden sibling file, `.<name>.lock`, holding the holder's pid and command
    for the message. The kernel drops it when its process ends, however it ends, so the lock
    of a killed run is simply taken by the next one. A POSIX lock, not an flock: forked
    children (the DataLoader's workers) do not inherit it, so workers orphaned by a `kill -9`
    cannot keep holding it. The holder removes the file on release, so nothing stays beside
    the output.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    fd = _acquire(lock_path, target)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{command} (pid {os.getpid()})".encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)  # still held: nobody can lock this file between the two calls
        os.close(fd)


def _acquire(lock_path: Path, target: Path) -> int:
    """An fd holding the lock of `lock_path`, which still names the locked file (a holder
    that just released may have unlinked the file we opened: then lock the new one)."""
    import fcntl

    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EAGAIN):
                os.close(fd)
                raise
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another run"
            os.close(fd)
            raise UserError(f"{target} is being written by {holder}: wait for it to finish or "
                            "stop it, then run again") from None
        try:
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def details_path(metrics_file: Path) -> Path:
    """Where the details for people go beside a DVC metrics file:
    metrics/evaluate.json -> metrics/evaluate_details.json (judge.json likewise)."""
    return metrics_file.with_name(f"{metrics_file.stem}_details{metrics_file.suffix or '.json'}")
