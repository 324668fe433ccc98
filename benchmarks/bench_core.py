"""Training-step time: DAT vs fused DAT vs a plain single-dataset network.

Small conv net (ToyNet, width 32), two datasets, batch 4 each, 3x128x128 inputs.
Five variants of a step, run alternately in one process (the order rotated
every round), each reported by median and minimum:

* ``dat``: the CDCL model (dataset-aware BN, one head per dataset), one
  forward per dataset, summed losses, one backward;
* ``plain-dat``: the same network with ordinary BatchNorm and one head, the
  same two forwards: ``dat / plain-dat`` is the cost of dataset-aware BN;
* ``fused``: ``train.mode=fused`` as it runs on this device (on a CPU the
  per-dataset forwards of dat, see ``common.engine.PER_DATASET_FORWARD_DEVICES``);
* ``fused-1fwd``: the fused step forced to one forward over the concatenated
  batch (``one_forward=True``), what fused runs on an accelerator;
* ``plain-8``: the plain network, one forward at the total batch (8):
  ``fused-1fwd / plain-8`` is the cost of dataset-aware BN in one forward.

Ratios are given by medians, by minimums and by per-round pairs (the median
of a/b over rounds; robust to load that changes between rounds).

    python benchmarks/bench_core.py [--steps 20] [--threads 2] [--size 128] [--width 32] [--cpu-time]

On a loaded machine ``--threads 1 --cpu-time`` gives the steadiest ratios
(CPU time of the one compute thread; time waiting for a core left out).
"""
import argparse
import time

import torch
from torch import nn

from common.dataset_specific import convert_dataset_specific, convert_heads
from common.engine import PER_DATASET_FORWARD_DEVICES, train_step
from common.toy import ToyNet
from timing import alternate, machine_line, med, paired, ratio_line, summary


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--cpu-time", action="store_true",
                    help="time by process CPU time, not wall time (use with --threads 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    s, b = args.size, 4
    ce = lambda out, batch: nn.functional.cross_entropy(out, batch["labels"], ignore_index=255)
    batches = {n: {"inputs": torch.randn(b, 3, s, s), "labels": torch.randint(0, 4, (b, s, s))}
               for n in ("a", "b")}
    plain_batch = {"plain": {"inputs": torch.cat([x["inputs"] for x in batches.values()]),
                             "labels": torch.cat([x["labels"] for x in batches.values()])}}
    criteria = {"a": ce, "b": ce}

    plain = ToyNet(num_classes=4, width=args.width)
    opt_p = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9)
    cdcl = convert_heads(convert_dataset_specific(ToyNet(num_classes=4, width=args.width), ["a", "b"]),
                         {"a": 4, "b": 4})
    opt_c = torch.optim.SGD(cdcl.parameters(), lr=0.01, momentum=0.9)

    times = alternate({
        "dat": lambda: train_step(cdcl, batches, criteria, opt_c, "dat"),
        "plain-dat": lambda: train_step(plain, batches, criteria, opt_p, "dat"),
        "fused": lambda: train_step(cdcl, batches, criteria, opt_c, "fused"),
        "fused-1fwd": lambda: train_step(cdcl, batches, criteria, opt_c, "fused", one_forward=True),
        "plain-8": lambda: train_step(plain, plain_batch, {"plain": ce}, opt_p, "dat"),
    }, args.steps, warmup=3, clock=time.process_time if args.cpu_time else time.perf_counter)
    overhead = med(times["dat"]) / med(times["plain-dat"]) - 1.0
    overhead_1fwd = med(times["fused-1fwd"]) / med(times["plain-8"]) - 1.0
    speedup = med(times["dat"]) / med(times["fused"])
    speedup_1fwd = med(times["dat"]) / med(times["fused-1fwd"])
    fused_runs = "per-dataset forwards" if "cpu" in PER_DATASET_FORWARD_DEVICES else "one forward"
    print(machine_line())
    print(f"threads={torch.get_num_threads()} input=3x{s}x{s} batch={b}+{b} width={args.width} "
          f"steps={args.steps} each, alternated, {'CPU' if args.cpu_time else 'wall'} time; "
          f"train.mode=fused on the CPU runs {fused_runs}")
    print(summary(times))
    print(f"time dat / plain-dat (dataset-aware BN, DAT):             {ratio_line(times, 'dat', 'plain-dat')}")
    print(f"time fused-1fwd / plain-8 (dataset-aware BN, one forward): {ratio_line(times, 'fused-1fwd', 'plain-8')}")
    print(f"speed of fused as run here, x dat (time dat / fused):      {ratio_line(times, 'dat', 'fused')}")
    print(f"speed of fused-1fwd, x dat (time dat / fused-1fwd):        {ratio_line(times, 'dat', 'fused-1fwd')}")
    print(f"dataset-aware BN overhead (medians): DAT {100 * overhead:+.1f}%, one forward {100 * overhead_1fwd:+.1f}%")
    ms = {k: 1000 * med(v) for k, v in times.items()}
    mins = {k: 1000 * min(v) for k, v in times.items()}
    print(f"RESULT dat_ms={ms['dat']:.2f} plain_dat_ms={ms['plain-dat']:.2f} fused_ms={ms['fused']:.2f} "
          f"fused1_ms={ms['fused-1fwd']:.2f} plain_ms={ms['plain-8']:.2f} "
          f"dat_min_ms={mins['dat']:.2f} plain_dat_min_ms={mins['plain-dat']:.2f} fused_min_ms={mins['fused']:.2f} "
          f"fused1_min_ms={mins['fused-1fwd']:.2f} plain_min_ms={mins['plain-8']:.2f} "
          f"dsbn_overhead={overhead:.4f} dsbn_overhead_1fwd={overhead_1fwd:.4f} "
          f"fused_speedup={speedup:.3f} fused_speedup_paired={paired(times, 'dat', 'fused'):.3f} "
          f"fused1_speedup={speedup_1fwd:.3f}")


if __name__ == "__main__":
    main()
