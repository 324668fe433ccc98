"""torchrun + DDP (gloo, CPU) with per-dataset synchronised BatchNorm."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from torch import nn

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
