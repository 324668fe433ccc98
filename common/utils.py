"""Small helpers shared by the core."""
from __future__ import annotations

import contextlib
import errno
import os
import random
import tempfile
from typing import Any

import numpy as np
import torch

from .errors import PathError


def to_device(obj: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move every tensor inside nested dicts/lists/tuples to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, dict):
        return {k: to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device, non_blocking) for v in obj)
    return obj


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write a file so that a crash leaves either the old or the new content.

    The data goes to ``<path>.tmp.<pid>``, then is renamed over ``path``. The
    temp file is removed on any failure; a full disk or a folder that refuses
    writes raise :class:`PathError` ("no space left on <folder>")."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            _write_all(f, data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(exc, OSError):
            raise path_error(exc, path) from exc
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def _write_all(f, data: bytes) -> None:
    f.write(data)


def _fsync_dir(folder: str) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
_REFUSED = (errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ENOTDIR, errno.ENOENT)


def path_error(exc: OSError, path: str, action: str = "write") -> OSError:
    """``exc`` as a one-line :class:`PathError` when the user can fix it (a full
    disk, a read-only or missing folder, a folder where a file goes); other
    OS errors (I/O errors) come back unchanged."""
    if isinstance(exc, PathError):
        return exc
    if exc.errno in _NO_SPACE:
        err = PathError(f"no space left on {os.path.dirname(os.path.abspath(path))}: "
                        f"cannot {action} {os.path.basename(path)} ({exc.strerror or exc})")
    elif exc.errno in _REFUSED:
        err = PathError(f"cannot {action} {path}: {exc.strerror or exc}")
    else:
        return exc
    err.errno = exc.errno
    return err


def check_writable(path: str, what: str = "path", folder: bool = False) -> None:
    """Raise :class:`PathError` unless ``path`` can be written: a file (its
    folder is created if needed and must accept a new file; ``path`` must not
    be a folder) or, with ``folder=True``, a folder to write files into (not
    a file). Called before long work whose result would otherwise be lost."""
    target = os.path.abspath(path)
    if folder:
        if os.path.exists(target) and not os.path.isdir(target):
            raise PathError(f"{what} {path} is a file, not a folder")
        parent = target
    else:
        if os.path.isdir(target):
            raise PathError(f"{what} {path} is a folder, not a file")
        parent = os.path.dirname(target)
    try:
        os.makedirs(parent, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".cdcl-write-test-", dir=parent)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise PathError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
