"""A training run's work dir: checked before any work, owned by one run.

``claim_work_dir(work_dir)`` checks that the folder can hold a run's outputs
(not a file, writable, no folder where a file is written), takes its lock,
and removes temp files that interrupted runs left behind. It returns the
lock; ``release()`` (or leaving a ``with`` block) gives it back::

    with claim_work_dir("work_dirs/cdcl"):
        ...  # train

The lock is ``WORK_DIR/cdcl.lock`` holding the owner's pid and host, and a
POSIX record lock on it held for the run: the kernel drops that lock when the
owner dies, however it dies (kill -9 included), so a lock file whose owner is
gone is taken over, and a live owner is never mistaken for a dead one (pid
reuse). Where the file system has no locks, a lock file of a dead pid on this
host is taken over; one from another host is refused (the message says how
to take it over).
"""
from __future__ import annotations

import errno
import glob
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from typing import List, Optional

from .errors import PathError
from .utils import path_error

logger = logging.getLogger("cdcl")

LOCK_NAME = "cdcl.lock"
# what ``cdcl train`` writes besides iter_*.pth: a folder there (or a file for a folder) fails late
OUTPUT_FILES = ("config.yaml", "env.json", "log.jsonl", "results.json", os.path.join("checkpoints", "latest.pth"),
                os.path.join("checkpoints", "best.pth"))
OUTPUT_FOLDERS = ("checkpoints", "tb")
PROBE = ".cdcl-write-test-"  # check_work_dir's probe files
_TEMP = re.compile(r"\.tmp\.\d+$")  # atomic_write_bytes' <name>.tmp.<pid>
_HELD = set()  # work dirs locked by this process (POSIX locks do not exclude their own process)


class WorkDirLock:
    """The lock of one work dir, held until :meth:`release`."""

    def __init__(self, path: str, fd: int) -> None:
        self.path, self.fd = path, fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            if _same_file(self.fd, self.path):
                os.remove(self.path)  # before the lock goes: nobody takes a file about to vanish
        except OSError:
            pass
        os.close(self.fd)  # drops the record lock
        self.fd = None
        _HELD.discard(self.path)

    def __enter__(self) -> "WorkDirLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def claim_work_dir(work_dir: str) -> WorkDirLock:
    """Check ``work_dir``, lock it and remove stale temp files; see the module docstring."""
    check_work_dir(work_dir)
    lock = lock_work_dir(work_dir)
    try:
        removed = remove_stale_temp_files(work_dir)
    except BaseException:
        lock.release()
        raise
    if removed:
        logger.info("removed %d temp file(s) left by interrupted runs in %s", len(removed), work_dir)
    return lock


def check_work_dir(work_dir: str) -> None:
    """Raise :class:`PathError` unless ``work_dir`` can hold a run's outputs."""
    if os.path.exists(work_dir) and not os.path.isdir(work_dir):
        raise PathError(f"work dir {work_dir} is a file, not a folder: choose another --work-dir")
    for name in OUTPUT_FOLDERS:
        p = os.path.join(work_dir, name)
        if os.path.exists(p) and not os.path.isdir(p):
            raise PathError(f"{p} is a file where cdcl train writes a folder: move it away")
    for name in OUTPUT_FILES:
        p = os.path.join(work_dir, name)
        if os.path.isdir(p):
            raise PathError(f"{p} is a folder where cdcl train writes a file: move it away")
    for folder in (work_dir, os.path.join(work_dir, "checkpoints")):
        try:
            os.makedirs(folder, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=PROBE, dir=folder)
            os.close(fd)
            os.remove(probe)
        except OSError as exc:
            raise PathError(f"cannot write in work dir {folder}: {exc.strerror or exc}") from None


def lock_work_dir(work_dir: str) -> WorkDirLock:
    """Take ``WORK_DIR/cdcl.lock``, or raise :class:`PathError` naming the owner."""
    path = os.path.abspath(os.path.join(work_dir, LOCK_NAME))
    if path in _HELD:
        raise PathError(f"work dir {work_dir} is in use by another run in this process")
    for _ in range(10):  # retried only when the file is replaced under us
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise PathError(f"cannot write in work dir {work_dir}: {exc.strerror or exc}") from None
        try:
            owner = _owner(fd)
            if not _try_lock(fd, work_dir, owner):
                raise PathError(_in_use(work_dir, owner, path))
            if not _same_file(fd, path):  # released and removed between open and lock
                os.close(fd)
                continue
            if owner and owner.get("pid") != os.getpid():
                logger.warning("work dir %s: taking over the lock of pid %s on %s (that run is gone)",
                               work_dir, owner.get("pid"), owner.get("host"))
            me = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode("utf-8"), 0)
        except BaseException:
            os.close(fd)
            raise
        _HELD.add(path)
        return WorkDirLock(path, fd)
    raise PathError(f"cannot lock work dir {work_dir}: {path} keeps changing")


def remove_stale_temp_files(work_dir: str) -> List[str]:
    """Remove ``*.tmp.<pid>`` files (and write probes) in the work dir and its
    checkpoints: the lock makes this run their only writer, so any such file
    was left by an interrupted run."""
    removed = []
    for folder in (work_dir, os.path.join(work_dir, "checkpoints")):
        found = glob.glob(os.path.join(glob.escape(folder), "*.tmp.*"))
        found += glob.glob(os.path.join(glob.escape(folder), PROBE + "*"))
        for p in found:
            if (_TEMP.search(p) or os.path.basename(p).startswith(PROBE)) and os.path.isfile(p):
                try:
                    os.remove(p)
                    removed.append(p)
                except FileNotFoundError:
                    pass
    return removed


def _try_lock(fd: int, work_dir: str, owner: Optional[dict]) -> bool:
    """Lock ``fd``; False while another live process holds it."""
    import fcntl

    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return False
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise PathError(f"cannot lock work dir {work_dir}: {exc.strerror or exc}") from None
    # no record locks on this file system: judge by the pid and host in the file
    if not owner or owner.get("pid") == os.getpid():
        return True
    if owner.get("host") != socket.gethostname():
        return False
    return not _alive(int(owner.get("pid", 0)))


def _owner(fd: int) -> Optional[dict]:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        owner = json.loads(text) if text.strip() else None
        return owner if isinstance(owner, dict) else None
    except (OSError, ValueError):
        return None


def _in_use(work_dir: str, owner: Optional[dict], path: str) -> str:
    who = (f"pid {owner.get('pid')} on {owner.get('host')}, since {owner.get('started')}"
           if owner else "owner unknown")
    return (f"work dir {work_dir} is in use by another cdcl run ({who}); wait for it to end, "
            f"stop it, or choose another --work-dir (remove {path} if that run is gone)")


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def previous_run(work_dir: str) -> List[str]:
    """The outputs of an earlier run in ``work_dir`` (paths relative to it):
    its log, checkpoints, results, TensorBoard logs and saved environment."""
    found = [name for name in OUTPUT_FILES if os.path.isfile(os.path.join(work_dir, name))]
    found += sorted(os.path.relpath(p, work_dir) for p in glob.glob(
        os.path.join(glob.escape(os.path.join(work_dir, "checkpoints")), "iter_*.pth")))
    if os.path.isdir(os.path.join(work_dir, "tb")) and os.listdir(os.path.join(work_dir, "tb")):
        found.append("tb" + os.sep)
    return found


def refuse_previous_run(work_dir: str) -> None:
    """A work dir with a log or a checkpoint holds a run: training into it
    again needs ``--resume`` or ``--overwrite`` (a :class:`PathError` says so)."""
    found = previous_run(work_dir)
    if [name for name in found if name not in ("config.yaml", "env.json")]:
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise PathError(f"work dir {work_dir} already holds a run ({shown}): `--resume auto` continues it, "
                        "`--overwrite` removes its outputs and starts again at step 0, or choose another "
                        "--work-dir")


def remove_previous_run(work_dir: str) -> None:
    """``--overwrite``: remove what :func:`previous_run` finds, nothing else."""
    found = previous_run(work_dir)
    for name in found:
        path = os.path.join(work_dir, name)
        try:
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise path_error(exc, path, "remove") from exc
    if found:
        logger.info("--overwrite: removed the previous run's %s from %s", ", ".join(found), work_dir)
