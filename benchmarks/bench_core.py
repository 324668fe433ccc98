"""Training-step time: DAT vs fused DAT vs a plain single-dataset network.

Small conv net (ToyNet, width 32), two datasets, batch 4 each, 3x128x128 inputs.
Baseline: the same net with ordinary BatchNorm and one head at the same total
batch (8). Reports the routing overhead of dataset-aware BN (fused vs plain)
and the speed-up of fused over sequential-forward DAT. The three steps run
alternately in one process (rounds of plain, fused, dat with the order
rotated), each reported by median and minimum; ratios are of medians.

    python benchmarks/bench_core.py [--steps 20] [--threads 2]
"""
import argparse

import torch
from torch import nn

from common.dataset_specific import convert_dataset_specific, convert_heads
from common.engine import train_step
from common.toy import ToyNet
from timing import alternate, machine_line, med, summary


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--width", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    s, b = args.size, 4
    ce = lambda out, batch: nn.functional.cross_entropy(out, batch["labels"], ignore_index=255)
    batches = {n: {"inputs": torch.randn(b, 3, s, s), "labels": torch.randint(0, 4, (b, s, s))}
               for n in ("a", "b")}
    plain_batch = {"plain": {"inputs": torch.cat([x["inputs"] for x in batches.values()]),
                             "labels": torch.cat([x["labels"] for x in batches.values()])}}

    plain = ToyNet(num_classes=4, width=args.width)
    opt_p = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9)
    cdcl = convert_heads(convert_dataset_specific(ToyNet(num_classes=4, width=args.width), ["a", "b"]),
                         {"a": 4, "b": 4})
    opt_c = torch.optim.SGD(cdcl.parameters(), lr=0.01, momentum=0.9)

    times = alternate({"plain": lambda: train_step(plain, plain_batch, {"plain": ce}, opt_p, "dat"),
                       "fused": lambda: train_step(cdcl, batches, {"a": ce, "b": ce}, opt_c, "fused"),
                       "dat": lambda: train_step(cdcl, batches, {"a": ce, "b": ce}, opt_c, "dat")},
                      args.steps, warmup=3)
    t_plain, t_fused, t_dat = med(times["plain"]), med(times["fused"]), med(times["dat"])
    overhead = t_fused / t_plain - 1.0
    speedup = t_dat / t_fused
    print(machine_line())
    print(f"threads={torch.get_num_threads()} input=3x{s}x{s} batch={b}+{b} width={args.width} "
          f"steps={args.steps} each, alternated (plain = plain BN at batch 8; fused / dat = dataset-aware BN)")
    print(summary(times))
    print(f"dataset-aware BN overhead (fused vs plain, medians): {100 * overhead:+.1f}%")
    print(f"fused vs dat (medians): fused is {speedup:.2f}x as fast; by minimum "
          f"{min(times['dat']) / min(times['fused']):.2f}x")
    print(f"RESULT plain_ms={1000 * t_plain:.2f} fused_ms={1000 * t_fused:.2f} dat_ms={1000 * t_dat:.2f} "
          f"plain_min_ms={1000 * min(times['plain']):.2f} fused_min_ms={1000 * min(times['fused']):.2f} "
          f"dat_min_ms={1000 * min(times['dat']):.2f} dsbn_overhead={overhead:.4f} fused_speedup={speedup:.3f}")


if __name__ == "__main__":
    main()
