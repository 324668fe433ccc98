"""Timing that holds up on a shared machine: the variants a benchmark compares
run alternately in one process (A, B, A, B, ... with the order of each round
rotated, so none always runs first), each reported as the minimum and the
median of its repetitions, under a line naming the machine.

    from timing import alternate, machine_line, summary
    print(machine_line())
    times = alternate({"a": run_a, "b": run_b}, repeats=10)   # seconds per call
    print(summary(times))
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable, Dict, List


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what ``platform`` says)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_line() -> str:
    """``machine: <CPU model>, <n> logical CPUs, torch threads <t>, load average <1 5 15>``."""
    threads = "?"
    try:
        import torch
        threads = str(torch.get_num_threads())
    except ImportError:
        pass
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    return (f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, torch threads {threads}, "
            f"load average {load} (1/5/15 min; above ~1.5 on 2 cores the figures are noisy)")


def alternate(fns: Dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
              clock: Callable[[], float] = time.perf_counter) -> Dict[str, List[float]]:
    """Seconds per call of each of ``fns``: ``warmup`` untimed rounds, then
    ``repeats`` rounds of one call each, the order rotated every round.
    ``clock=time.process_time`` counts CPU time instead of wall time: on a
    loaded machine it leaves out the time spent waiting for a core (meaningful
    with one compute thread; with more it counts their spinning too)."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            t0 = clock()
            fns[n]()
            times[n].append(clock() - t0)
    return times


def med(ts: List[float]) -> float:
    return statistics.median(ts)


def paired(times: Dict[str, List[float]], a: str, b: str) -> float:
    """Median over rounds of ``a``'s time / ``b``'s time in the same round:
    the two ran back to back, so a change of load between rounds cancels."""
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def ratio_line(times: Dict[str, List[float]], a: str, b: str) -> str:
    """``a / b`` by medians, by minimums and by per-round pairs (:func:`paired`)."""
    return (f"{med(times[a]) / med(times[b]):.3f} by medians, {min(times[a]) / min(times[b]):.3f} by minimums, "
            f"{paired(times, a, b):.3f} by per-round pairs")


def summary(times: Dict[str, List[float]], unit: float = 1000.0, label: str = "ms") -> str:
    """One line per variant: median and minimum (``unit``: seconds -> ``label``)."""
    width = max(len(n) for n in times)
    return "\n".join(f"  {n:<{width}}  median {med(ts) * unit:9.2f} {label}   min {min(ts) * unit:9.2f} {label}"
                     f"   ({len(ts)} runs)" for n, ts in times.items())
