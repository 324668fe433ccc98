"""Training-step time of PSPNet-ResNet-18 on the CPU, plain BN vs dataset-aware BN.

One step = forward (train mode, main + auxiliary head), CE + 0.4 aux CE,
backward, SGD step, on a batch of 2 random 512x512 images (the paper's crop).
"dsbn" is the same network after ``convert_dataset_specific`` over two
datasets (BN and heads), routed to one of them: the price of the
dataset-aware blocks at training time.

    python benchmarks/bench_pspnet.py [--size 512] [--batch 2] [--steps 2] [--warmup 1]

The two models alternate step by step, so background load affects both alike;
the figure is the median step time.

Ends with ``RESULT step_s_plain=.. step_s_dsbn=.. ratio=..``.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from cdcl2d.models import build_pspnet
from common.dataset_specific import convert_dataset_specific, convert_heads, route
from timing import alternate, machine_line, summary


class Stepper:
    """One SGD training step of ``model`` (optionally routed to a dataset)."""

    def __init__(self, model: nn.Module, route_name: Optional[str] = None) -> None:
        self.model = model.train()
        self.route_name = route_name
        self.opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> float:
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        ctx = route(self.model, self.route_name) if self.route_name else contextlib.nullcontext()
        with ctx:
            out = self.model(x)
        loss = F.cross_entropy(out["out"], y, ignore_index=255) \
            + 0.4 * F.cross_entropy(out["aux"], y, ignore_index=255)
        loss.backward()
        self.opt.step()
        return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 19, (args.batch, args.size, args.size))

    plain = build_pspnet(19, backbone="resnet18")
    torch.manual_seed(0)
    dsbn = build_pspnet(19, backbone="resnet18")
    convert_dataset_specific(dsbn, ["cityscapes", "bdd100k"])
    convert_heads(dsbn, {"cityscapes": 19, "bdd100k": 19})
    n_plain = sum(p.numel() for p in plain.parameters())
    n_dsbn = sum(p.numel() for p in dsbn.parameters())
    steppers = {"plain": Stepper(plain), "dsbn": Stepper(dsbn, "cityscapes")}
    # alternately in one process, the order rotated each round, so that load
    # from other processes hits both alike
    times = alternate({k: (lambda st=st: st(x, y)) for k, st in steppers.items()}, args.steps,
                      warmup=args.warmup)
    t_plain, t_dsbn = times["plain"], times["dsbn"]

    sp, sd = statistics.median(t_plain), statistics.median(t_dsbn)
    print(machine_line())
    print(f"PSPNet-R18, batch {args.batch} x 3 x {args.size} x {args.size}, CPU, "
          f"{torch.get_num_threads()} threads, {args.steps} alternated timed steps after {args.warmup} warm-up")
    print(summary(times, 1.0, "s"))
    print(f"plain BN : params {n_plain / 1e6:.2f} M, step times {[round(t, 2) for t in t_plain]} s")
    print(f"DS-BN x2 : params {n_dsbn / 1e6:.2f} M, step times {[round(t, 2) for t in t_dsbn]} s")
    print(f"RESULT step_s_plain={sp:.3f} step_s_dsbn={sd:.3f} step_s_plain_min={min(t_plain):.3f} "
          f"step_s_dsbn_min={min(t_dsbn):.3f} ratio={sd / sp:.3f} ratio_min={min(t_dsbn) / min(t_plain):.3f}")


if __name__ == "__main__":
    main()
