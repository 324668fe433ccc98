"""Progress of a long loop: a tqdm bar for a person at a terminal, log lines otherwise.

A run whose output goes to a file or a pipe (a cluster job, ``| tee``) gets
no ``\\r`` updates: it gets a log line every 10 % of the loop (once the loop
has run a few seconds: quick loops stay quiet) and at least one a minute::

    for batch in track(loader, desc="eval semantickitti"):
        ...

    # redirected output:
    # 12:01:40 INFO cdcl: eval semantickitti: 408/4071 (10%), elapsed 0:00:41, eta 0:06:10

:func:`track` returns an iterable that also passes attribute access and
``len()`` through to what it wraps, so a caller that reads ``loader.dataset``
still works. Under DDP only rank 0 reports.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Any, Iterable, Iterator, Optional

logger = logging.getLogger("cdcl")


def interactive() -> bool:
    """True when a person watches: stdout and stderr (where tqdm draws) are terminals."""
    try:
        return sys.stdout.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


def format_seconds(seconds: float) -> str:
    """``0:03:45``; ``2 days, 3:04:05`` past a day."""
    seconds = max(0, int(round(seconds)))
    days, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    clock = f"{h}:{m:02d}:{s:02d}"
    return f"{days} day{'s' if days > 1 else ''}, {clock}" if days else clock


class track:
    """Iterate ``iterable`` and show how far the loop is (see the module docstring).

    ``total``: the number of items (default ``len(iterable)`` when it has one);
    ``bar``: False keeps the tqdm bar off even at a terminal (log lines then);
    ``every_percent`` / ``every_seconds``: how often a log line comes;
    ``quiet_seconds``: a loop shorter than this logs nothing.
    """

    def __init__(self, iterable: Iterable, desc: str = "", total: Optional[int] = None, unit: str = "it",
                 bar: bool = True, every_percent: float = 10.0, every_seconds: float = 60.0,
                 quiet_seconds: float = 5.0) -> None:
        self.iterable, self.desc, self.unit = iterable, desc, unit
        if total is None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.total = total
        self.bar = bar
        self.every_percent, self.every_seconds, self.quiet_seconds = every_percent, every_seconds, quiet_seconds

    def __len__(self) -> int:
        if self.total is None:
            raise TypeError(f"{self.desc or 'this loop'} has no length")
        return self.total

    def __getattr__(self, name: str) -> Any:
        if name == "iterable":
            raise AttributeError(name)
        return getattr(self.iterable, name)

    def __iter__(self) -> Iterator[Any]:
        from . import dist

        if not dist.is_main():
            yield from self.iterable
            return
        if self.bar and interactive():
            from tqdm import tqdm

            yield from tqdm(self.iterable, total=self.total, desc=self.desc, unit=self.unit,
                            dynamic_ncols=True, leave=False)
            return
        yield from self._logged()

    def _logged(self) -> Iterator[Any]:
        start = last = time.monotonic()
        done, reported = 0, False
        next_percent = self.every_percent
        for item in self.iterable:
            yield item
            done += 1
            now = time.monotonic()
            percent = 100.0 * done / self.total if self.total else None
            due = now - last >= self.every_seconds or (
                percent is not None and percent >= next_percent and now - start >= self.quiet_seconds)
            if due and (self.total is None or done < self.total):
                logger.info("%s", self.line(done, now - start))
                last, reported = now, True
            if percent is not None:
                while next_percent <= percent:
                    next_percent += self.every_percent
        elapsed = time.monotonic() - start
        if reported or elapsed >= self.quiet_seconds:
            logger.info("%s: done, %d in %s", self.desc or "loop", done, format_seconds(elapsed))

    def line(self, done: int, elapsed: float) -> str:
        """``desc: 408/4071 (10%), elapsed 0:00:41, eta 0:06:10`` (without a total: no
        fraction, no eta)."""
        if not self.total:
            return f"{self.desc}: {done} {self.unit}, elapsed {format_seconds(elapsed)}"
        eta = elapsed / done * (self.total - done) if done else 0.0
        return (f"{self.desc}: {done}/{self.total} ({100 * done // self.total}%), "
                f"elapsed {format_seconds(elapsed)}, eta {format_seconds(eta)}")
