"""Name -> builder tables that the task packages fill in.

``common`` never imports ``cdcl2d`` or ``cdcl3d``. Each task package exposes a
``register()`` function under the ``cdcl.plugins`` entry-point group (see
``setup.py``); :func:`load_plugins` calls them once. The tables:

* ``TASKS``: name -> :class:`common.task.Task` instance (what the trainer needs
  from a task: datasets, model, loss, evaluation).
* ``COMMANDS``: name -> :class:`Command` (a ``cdcl`` sub-command).
* ``SYNTH``: name -> :class:`Command` (a ``cdcl synth NAME`` target).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, Generic, Iterator, TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")


class Registry(Generic[T]):
    """A checked name -> object table."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: Dict[str, T] = {}

    def register(self, name: str, obj: T) -> T:
        if name in self._items and self._items[name] is not obj:
            raise KeyError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        return obj

    def get(self, name: str) -> T:
        load_plugins()
        if name not in self._items:
            valid = ", ".join(sorted(self._items)) or "(none)"
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {valid}")
        return self._items[name]

    def __contains__(self, name: str) -> bool:
        load_plugins()
        return name in self._items

    def names(self) -> list:
        load_plugins()
        return sorted(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


@dataclass
class Command:
    """A ``cdcl`` sub-command. ``add_arguments(parser)`` declares its options
    (each with a ``help``), ``run(args) -> int`` executes it, ``example`` is
    one real command line ending its ``--help``. Heavy imports belong inside
    ``run``."""

    help: str
    add_arguments: Callable[[Any], None]
    run: Callable[[Any], int]
    example: str = ""


TASKS: Registry = Registry("task")
COMMANDS: Registry = Registry("command")
SYNTH: Registry = Registry("synth target")

_loaded = False


def load_plugins() -> None:
    """Call every ``cdcl.plugins`` entry point once (idempotent)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    from importlib.metadata import entry_points

    from . import toy
    toy.register()

    try:
        eps = entry_points(group="cdcl.plugins")
    except TypeError:  # python < 3.10
        eps = entry_points().get("cdcl.plugins", [])
    for ep in eps:
        try:
            ep.load()()
        except Exception as exc:  # a broken plugin must not hide the others
            logger.warning("cdcl plugin %s failed to load: %s", ep.name, exc)
