"""torchrun + DDP (gloo, CPU) with per-dataset synchronised BatchNorm."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from common.dataset_specific import DatasetSpecific, convert_dataset_specific, route
from common.sync_bn import GroupBatchNorm, convert_sync_batchnorm
from common.toy import ToyNet

CFG = """
task: toy
model: {name: toynet, width: 8, dropout: 0.0}
data:
  a: {type: toy, batch_size: BS, size: 8, height: 16, width: 16}
  b: {type: toy, batch_size: BS, size: 8, height: 16, width: 16, style: 1.0, num_classes: 3}
strategy: {name: cdcl, sync_bn: true}
train: {iterations: 3, lr: 0.05, progress: false, checkpoint_every: 2, log_every: 1, threads: 1,
        weight_decay: 0.0, eval_every: 0}
eval: {max_samples: 2}
"""


def test_sync_conversion_keeps_wrappers_and_matches_plain_bn_in_one_process():
    torch.manual_seed(0)
    m = convert_dataset_specific(ToyNet(num_classes=3, width=8), ["a", "b"])
    ref = ToyNet(num_classes=3, width=8)
    ref.load_state_dict({k.replace(".branches.a", ""): v for k, v in m.state_dict().items()
                         if ".branches.b" not in k})
    s = convert_sync_batchnorm(m)
    assert isinstance(s.bn1, DatasetSpecific) and all(isinstance(b, GroupBatchNorm)
                                                      for b in s.bn1.branches.values())
    x = torch.randn(2, 3, 8, 8)
    with route(s, "a"):
        y = s(x)
    assert torch.allclose(y, ref(x), atol=1e-6)  # not distributed: plain BatchNorm behaviour


def test_torchrun_two_processes_equal_single_process_global_batch(tmp_path):
    if not dist.is_available():
        pytest.skip("this torch build has no torch.distributed (some macOS/Windows wheels)")
    (tmp_path / "ddp.yaml").write_text(CFG.replace("BS", "2"))
    (tmp_path / "single.yaml").write_text(CFG.replace("BS", "4"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "common.cli", "train", str(tmp_path / "ddp.yaml"), "--work-dir", str(tmp_path / "ddp")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = subprocess.run([sys.executable, "-m", "common.cli", "train", str(tmp_path / "single.yaml"),
                        "--work-dir", str(tmp_path / "single")], capture_output=True, text=True,
                       timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    log = [json.loads(l) for l in open(tmp_path / "ddp/log.jsonl")]
    ddp_rec = [x for x in log if x["type"] == "ddp"]
    assert ddp_rec and ddp_rec[0]["world_size"] == 2 and ddp_rec[0]["replicas_identical"]
    a = torch.load(tmp_path / "ddp/checkpoints/latest.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "single/checkpoints/latest.pth", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), atol=1e-5), k
    # each dataset's statistics were synchronised separately: branches differ
    assert not torch.allclose(a["bn1.branches.a.running_mean"], a["bn1.branches.b.running_mean"])
    # --resume under torchrun: continuing from step 2 reaches the same weights
    cmd = cmd[:-2] + ["--work-dir", str(tmp_path / "resumed"), "--resume",
                      str(tmp_path / "ddp/checkpoints/iter_000002.pth")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    c = torch.load(tmp_path / "resumed/checkpoints/latest.pth", weights_only=True)["model"]
    for k in a:
        assert torch.equal(a[k], c[k]), k


# One rank of a two-process run on the toy task, whose loss on dataset ``a`` is
# NaN on rank 1 only, at step 5: the other rank sees a finite loss.
NAN_ON_ONE_RANK = '''
import logging
import sys

import torch.distributed as dist

from common.config import load_config
from common.registry import TASKS
from common.toy import ToyTask
from common.trainer import train


class NanOnRank1AtStep5(ToyTask):
    name = "toy_nan_on_rank1"

    def build_criterion(self, name, cfg, dataset, model_cfg):
        criterion = super().build_criterion(name, cfg, dataset, model_cfg)
        calls = [0]

        def nan_once(output, batch):
            loss = criterion(output, batch)
            calls[0] += 1  # once per step in every mode
            if name == "a" and dist.get_rank() == 1 and calls[0] == 6:
                loss = loss * float("nan")
            return loss

        return nan_once


logging.basicConfig(level=logging.INFO)
TASKS.register("toy_nan_on_rank1", NanOnRank1AtStep5())
train(load_config(sys.argv[1], sys.argv[3:]), sys.argv[2])
'''


def _run_two_ranks(tmp_path, overrides, timeout=120):
    """Both ranks of ``NAN_ON_ONE_RANK`` as plain processes (no torchrun, so each
    rank's exit status and stderr are its own); a rank still running after
    ``timeout`` seconds (a deadlock) fails the test, and both are killed."""
    import socket
    import time

    script, cfg = tmp_path / "nan_on_one_rank.py", tmp_path / "cfg.yaml"
    script.write_text(NAN_ON_ONE_RANK)
    cfg.write_text(CFG.replace("task: toy", "task: toy_nan_on_rank1").replace("BS", "2"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs, logs = [], []
    for r in range(2):
        env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2")
        logs.append(open(tmp_path / f"rank{r}.txt", "w+"))
        procs.append(subprocess.Popen([sys.executable, str(script), str(cfg), str(tmp_path / "run"),
                                       *overrides], env=env, stdout=logs[-1], stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    hung = [r for r, p in enumerate(procs) if p.poll() is None]
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    outputs = []
    for f in logs:
        f.seek(0)
        outputs.append(f.read())
        f.close()
    assert not hung, f"rank(s) {hung} still running after {timeout} s (deadlock)\n" + \
        "\n".join(f"--- rank {r}\n{o[-3000:]}" for r, o in enumerate(outputs))
    return [p.returncode for p in procs], outputs


@pytest.mark.parametrize("mode", ["dat", "fused", "sequential"])
def test_nan_loss_on_one_rank_is_skipped_by_every_rank(tmp_path, mode):
    if not dist.is_available():
        pytest.skip("this torch build has no torch.distributed (some macOS/Windows wheels)")
    codes, out = _run_two_ranks(tmp_path, ["train.on_nonfinite=skip", f"train.mode={mode}",
                                           "train.iterations=8", "train.checkpoint_every=100"])
    assert codes == [0, 0], "\n".join(o[-3000:] for o in out)
    log = [json.loads(l) for l in open(tmp_path / "run/log.jsonl")]
    train_recs = [x for x in log if x["type"] == "train"]
    assert [x["step"] for x in train_recs] == list(range(1, 9))  # one record per step
    skipped = [x for x in train_recs if x["skipped"]]
    assert [x["step"] for x in skipped] == [6]  # step 5, logged once, after it ran
    assert math.isnan(skipped[0]["loss/a"]) and math.isfinite(skipped[0]["loss/b"])
    assert out[0].count("step 5 skipped") == 1 and "skipped" not in out[1]
    ddp_rec = [x for x in log if x["type"] == "ddp"]
    assert ddp_rec and ddp_rec[0]["replicas_identical"]


def test_nan_loss_on_one_rank_stops_every_rank(tmp_path):
    if not dist.is_available():
        pytest.skip("this torch build has no torch.distributed (some macOS/Windows wheels)")
    codes, out = _run_two_ranks(tmp_path, ["train.on_nonfinite=stop", "train.iterations=8"])
    for r in range(2):
        assert codes[r] != 0 and "NonFiniteLossError" in out[r], f"rank {r}:\n{out[r][-3000:]}"
    assert "step 5 on dataset 'a'" in out[1]
