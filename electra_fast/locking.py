"""One writer per folder: an exclusive advisory lock that the kernel releases when its process dies.

`pretrain` (OUT, and OUT/data while it prepares it), `prepare` (DATA) and `finetune` (OUT) hold `FOLDER/.lock`
with flock(2) from before their first write to their end, and record their pid and host in it. A second command
on the folder does not wait: it is refused at once (FolderInUse, naming the folder and the holder) and writes
nothing. The kernel drops the lock when the holder exits or is killed, SIGKILL included, so a crash leaves no
stale lock. The file itself stays: removing it would let a third process lock a fresh file while a second still
holds the old one. A folder that the holder created and left empty is removed again, so a command that fails
before writing leaves nothing behind.

Forked children (prepare's tokenizing processes) close their copy of the lock, so that a killed holder's lingering
children do not keep it. Readers of a finished folder take no lock. The lock is advisory: it stops electra-fast
commands, not other programs. On a network filesystem it holds across machines only where the filesystem
carries flock to its server (NFS does, as a whole-file lock, unless mounted `nolock` or `local_lock=flock`;
Lustre only when mounted `-o flock`); where the filesystem refuses locks, the command warns in one line and runs
unprotected.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
from typing import Callable, Iterator

LOCK = ".lock"
# errno values of a filesystem that does not do locks (as opposed to a lock held by someone else)
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}
_held: set[int] = set()  # the lock descriptors this process holds, closed in forked children


class FolderInUse(OSError):
    """Another process holds the folder's lock. An OSError, so that every command's handler of bad input reports it
    in one line with exit status 2."""


@contextlib.contextmanager
def exclusive(folder: str, *, rank: int = 0, broadcast: Callable | None = None) -> Iterator[None]:
    """Holds the lock of `folder` (created if missing) for the duration of the block; raises FolderInUse if another
    process holds it.

    Under torchrun only the rank that writes, 0, takes the lock. With `broadcast` (rank 0's value on every rank)
    every rank takes part: rank 0 hands on its error (a refusal, or a folder it cannot make), and the other ranks
    raise it too (as an OSError of that message) instead of waiting for a rank that has stopped."""
    with contextlib.ExitStack() as stack:
        error = None
        if rank == 0:
            try:
                stack.enter_context(_locked(folder))
            except OSError as e:
                error = e
        message = str(error) if error else None
        if broadcast is not None:
            message = broadcast(message)
        if error:
            raise error
        if message:
            raise OSError(message)
        yield


@contextlib.contextmanager
def _locked(folder: str) -> Iterator[None]:
    created = _missing_folders(folder)
    os.makedirs(folder, exist_ok=True)
    fd = _acquire(folder)
    try:
        yield
    finally:
        try:
            if created and _still_ours(folder, fd) and os.listdir(folder) == [LOCK]:
                os.unlink(os.path.join(folder, LOCK))
                for made in created:  # the folder, then any parents made for it, while they are empty
                    os.rmdir(made)
        except OSError:  # another process has begun to use the folder meanwhile: it is theirs now
            pass
        finally:
            _held.discard(fd)
            os.close(fd)


def _acquire(folder: str) -> int:
    """The descriptor of the locked `folder/.lock`, the holder's pid and host written in it (open but unlocked
    where the filesystem does not do locks)."""
    path = os.path.join(folder, LOCK)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # a holder that wrote nothing has just removed the folder: make it again
            os.makedirs(folder, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise FolderInUse(f"{folder} is locked by another electra-fast process{holder} that is writing to it; "
                              "wait for it to end, or choose another folder") from None
        except OSError as e:
            if e.errno not in _UNSUPPORTED:
                os.close(fd)
                raise
            print(f"warning: the filesystem of {folder} does not support locks ({e.strerror}); nothing stops a "
                  "second run from writing into it", file=sys.stderr)
            return fd
        if _still_ours(folder, fd):
            break
        os.close(fd)  # locked a file that its holder unlinked as we opened it: lock the one there now
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
    _held.add(fd)
    return fd


def _still_ours(folder: str, fd: int) -> bool:
    """Whether `folder/.lock` is still the file open as `fd`."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(os.path.join(folder, LOCK)))
    except FileNotFoundError:
        return False


def _holder(fd: int) -> str:
    """' (pid N on host H)' as the holder recorded it, or '' where it cannot be read (it may not have written yet)."""
    try:
        record = json.loads(os.pread(fd, 4096, 0))
        return f" (pid {int(record['pid'])} on host {record['host']})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _missing_folders(folder: str) -> list[str]:
    """`folder` and its ancestors that do not exist yet, innermost first."""
    missing, path = [], os.path.abspath(folder)
    while not os.path.exists(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def _close_in_child() -> None:
    # The child shares the parent's lock (one open file description): closing the copy leaves the parent's lock
    # held, and lets it go with the parent.
    for fd in _held:
        os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_close_in_child)
