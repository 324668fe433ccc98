"""The errors a user can fix: the ``cdcl`` command prints them as one line
(exit 2, no traceback; ``-v`` shows the traceback). Anything else is a bug
and keeps its traceback.

Each is also the builtin type that code catching it before expected, so
``except ValueError`` around a reader or a config still works.
"""
from __future__ import annotations

import re


class UserError(Exception):
    """A problem with the user's input, named in the message (file, key, path)."""

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (_own_message(args[0], type(self).__name__),)
        super().__init__(*args)


def _own_message(msg: str, name: str) -> str:
    """An error raised in a DataLoader worker comes back as ``type(msg)``
    with the worker's traceback in ``msg`` (torch's ``ExceptionWrapper``):
    keep the error's own message, so that it stays one line."""
    if not msg.startswith("Caught ") or "\nOriginal Traceback" not in msg:
        return msg
    found = list(re.finditer(rf"^(?:[\w.]+\.)?{re.escape(name)}: ", msg, re.M))
    return msg[found[-1].end():].rstrip("\n") if found else msg


class DataError(UserError, ValueError):
    """A dataset file is unreadable or inconsistent (sizes, NaN points,
    unknown raw ids, malformed tables), or a split is empty."""


class PathError(UserError, OSError):
    """A path cannot be used as asked: unwritable, a file where a folder is
    expected, no space left, a work dir owned by another run."""


class MissingDependencyError(UserError, ImportError):
    """A library a command needs is not installed; the message names it and
    says how to install it."""


class ShowError(UserError, ValueError):
    """A ``cdcl show`` option that does not fit (a dataset, index or colour
    mode the scan, image or config does not have)."""


class OptionError(UserError, ValueError):
    """A command-line option or argument out of its range (``--scans -1``,
    an unknown name in ``--datasets``)."""


class UnsupportedError(UserError, NotImplementedError):
    """What a command asks of a model or dataset that it cannot do (a FLOP
    count or an ONNX export of the sparse voxel network)."""
