"""SalsaNext on CPU: training iterations/s and inference time per scan.

Width 1.0 (the published network, 20 classes), batch 1, a 5x64x2048 range
image (one SemanticKITTI scan). Training: SGD step with the SalsaNext loss
(weighted CE + Lovász-softmax). Inference: the plain network in eval mode,
and the deployed CDCL form: dataset-aware BN over two datasets
(``convert_dataset_specific``), collapsed to one dataset (``collapse``), then
BatchNorm folded (``fold_bn``). Timings are medians (and minima) after a
warm-up; inference runs of the two models alternate in one process (order
rotated each round) so that load from other processes hits both alike.

    python benchmarks/bench_salsanext.py [--quick]
"""
import argparse
import copy
import statistics
import time

import torch

from cdcl3d.losses import LidarSegLoss
from cdcl3d.models import build_salsanext, count_parameters
from timing import alternate, machine_line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="64x512 input, fewer iterations")
    ap.add_argument("--train-iters", type=int, default=None)
    ap.add_argument("--infer-iters", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    h, w = (64, 512) if args.quick else (64, 2048)
    train_iters = args.train_iters or (1 if args.quick else 2)
    infer_iters = args.infer_iters or (2 if args.quick else 3)
    num_classes = 20

    model = build_salsanext(num_classes)
    n_params = count_parameters(model)
    x = torch.randn(1, 5, h, w)
    y = torch.randint(0, num_classes, (1, h, w))
    y[:, :4] = 255
    criterion = LidarSegLoss(torch.rand(num_classes) + 0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = criterion(model(x), y)
        loss.backward()
        opt.step()

    model.train()
    train_step()  # warm-up
    t_train = []
    for _ in range(train_iters):
        t0 = time.perf_counter()
        train_step()
        t_train.append(time.perf_counter() - t0)
    train_it_s = 1.0 / statistics.median(t_train)

    model.eval()
    folded = None
    folded_note = ""
    try:
        from common.dataset_specific import collapse, convert_dataset_specific, route
        from common.fold import fold_bn

        # The converter clones the trained BN (weights and running statistics)
        # into every branch, so all three forms compute the same function.
        cdcl = convert_dataset_specific(copy.deepcopy(model), ["semantickitti", "nuscenes"]).eval()
        with torch.no_grad(), route(cdcl, "semantickitti"):
            ref = cdcl(x)
        folded = fold_bn(collapse(cdcl, "semantickitti")).eval()
        with torch.no_grad():
            err = max((folded(x) - ref).abs().max().item(), (model(x) - ref).abs().max().item())
        folded_note = (f"collapsed+folded: {count_parameters(folded):,} params, "
                       f"{getattr(folded, 'folded_bn', '?')} BN folded, max |diff| vs routed and plain = {err:.2e}")
    except ImportError as exc:  # the core's converters are not there yet
        folded_note = f"common.dataset_specific unavailable ({exc}); folded timing skipped"

    models = {"plain": model}
    if folded is not None:
        models["folded"] = folded
    with torch.inference_mode():
        t_inf = alternate({k: (lambda m=m: m(x)) for k, m in models.items()}, infer_iters, warmup=1)
    infer_ms = statistics.median(t_inf["plain"]) * 1000
    folded_ms = statistics.median(t_inf["folded"]) * 1000 if folded is not None else float("nan")

    print(machine_line())
    print(f"SalsaNext width 1.0, {num_classes} classes: {n_params:,} parameters")
    print(f"input 1x5x{h}x{w}, threads={torch.get_num_threads()}, "
          f"train iters={train_iters}, inference iters={infer_iters} (medians after warm-up)")
    print(f"  train: {statistics.median(t_train):.2f} s/it  -> {train_it_s:.3f} it/s  (min {min(t_train):.2f} s)")
    print(f"  inference plain : {infer_ms:.0f} ms/scan   (min {min(t_inf['plain']) * 1000:.0f})")
    if folded is not None:
        print(f"  inference folded: {folded_ms:.0f} ms/scan   (min {min(t_inf['folded']) * 1000:.0f})")
    print(f"  {folded_note}")
    if folded is not None and getattr(folded, "folded_bn", None) == 0:
        # SalsaNext puts every BN after a LeakyReLU (conv -> act -> bn), so no
        # BN can be folded into the preceding conv, and folding into the next
        # conv is inexact at its zero-padded border: the two timings measure
        # the same network and fold_speedup is ~1 up to noise.
        print("  note: no BN folded (all BNs follow an activation); fold_speedup is ~1 by construction")
    speedup = infer_ms / folded_ms if folded is not None else float("nan")
    folded_min = min(t_inf["folded"]) * 1000 if folded is not None else float("nan")
    print(f"RESULT train_it_per_s={train_it_s:.3f} infer_ms={infer_ms:.0f} infer_min_ms={min(t_inf['plain']) * 1000:.0f} "
          f"infer_folded_ms={folded_ms:.0f} infer_folded_min_ms={folded_min:.0f} fold_speedup={speedup:.2f}")


if __name__ == "__main__":
    main()
