"""The fused step: its one-forward path (each BatchNorm branch on its own rows)
equals DAT exactly, and on a CPU the fused mode runs DAT's per-dataset forwards."""
import pytest
import torch

import common.engine as engine
from common.engine import train_step
from test_core_training import model_and_batches  # the toy model and two datasets' batches


def after_step(mode, **kw):
    m, batches, crit = model_and_batches()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    losses = train_step(m, batches, crit, opt, mode=mode, weights={"a": 1.0, "b": 0.5}, **kw)
    grads = {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}
    return losses, grads, m.state_dict()


def test_one_forward_fused_equals_dat_losses_gradients_and_statistics():
    l_dat, g_dat, s_dat = after_step("dat")
    l_one, g_one, s_one = after_step("fused", one_forward=True)
    assert l_dat.keys() == l_one.keys() and all(abs(l_dat[k] - l_one[k]) < 1e-5 for k in l_dat)
    assert g_dat.keys() == g_one.keys()
    for k in g_dat:
        assert torch.allclose(g_dat[k], g_one[k], atol=1e-5), k
    for k in s_dat:  # weights after the step, each branch's running statistics and batch count
        assert torch.allclose(s_dat[k].float(), s_one[k].float(), atol=1e-6), k


def test_fused_on_a_cpu_runs_the_per_dataset_forwards_and_still_needs_equal_shapes(monkeypatch):
    assert "cpu" in engine.PER_DATASET_FORWARD_DEVICES
    m, batches, crit = model_and_batches()
    seen = []

    def forward(model, batch):
        seen.append(batch["inputs"].shape[0])
        return model(batch["inputs"])
    opt = torch.optim.SGD(m.parameters(), lr=0.0)
    train_step(m, batches, crit, opt, "fused", forward=forward)
    assert seen == [2, 3]
    seen.clear()
    train_step(m, batches, crit, opt, "fused", forward=forward, one_forward=True)
    assert seen == [5]
    seen.clear()
    monkeypatch.setattr(engine, "PER_DATASET_FORWARD_DEVICES", frozenset())  # as on an accelerator
    train_step(m, batches, crit, opt, "fused", forward=forward)
    assert seen == [5]
    monkeypatch.undo()
    batches["b"]["inputs"] = batches["b"]["inputs"][:, :, :8]
    with pytest.raises(ValueError, match="same input shape"):
        train_step(m, batches, crit, opt, "fused", forward=forward)


# Both ranks of a DDP run (gloo) with synchronised BatchNorm branches: one step
# of dat and one of fused with one forward, from the same weights.
TWO_RANKS = '''
import sys
import torch
import torch.distributed as dist
from torch import nn
from common.dataset_specific import convert_dataset_specific, convert_heads
from common.engine import train_step
from common.sync_bn import convert_sync_batchnorm
from common.toy import ToyNet

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.set_num_threads(1)
ce = lambda out, batch: nn.functional.cross_entropy(out, batch["labels"])
out = {}
for mode, one in (("dat", None), ("fused", True)):
    torch.manual_seed(0)
    m = convert_heads(convert_dataset_specific(ToyNet(num_classes=4, width=8), ["a", "b"]), {"a": 4, "b": 3})
    m = convert_sync_batchnorm(m)
    g = torch.Generator().manual_seed(rank)
    batches = {n: {"inputs": torch.randn(k, 3, 8, 8, generator=g) * (1 + rank + (n == "b")),
                   "labels": torch.randint(0, c, (k, 8, 8), generator=g)}
               for n, k, c in (("a", 2, 4), ("b", 3, 3))}
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    losses = train_step(nn.parallel.DistributedDataParallel(m), batches, {"a": ce, "b": ce}, opt, mode,
                        one_forward=one)
    out[mode] = {"losses": losses, "state": {k: v.clone() for k, v in m.state_dict().items()}}
torch.save(out, sys.argv[1] + "/rank%d.pt" % rank)
dist.destroy_process_group()
'''


def test_one_forward_fused_equals_dat_under_ddp_with_synchronised_branches(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    import torch.distributed as dist
    if not dist.is_available():
        pytest.skip("this torch build has no torch.distributed")
    (tmp_path / "two_ranks.py").write_text(TWO_RANKS)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "two_ranks.py"), str(tmp_path)],
                              env=dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
                                       MASTER_PORT=str(port), RANK=str(r), WORLD_SIZE="2"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    try:
        outputs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for res in ranks:
        assert all(abs(res["dat"]["losses"][k] - res["fused"]["losses"][k]) < 1e-5 for k in ("a", "b"))
        for k, v in res["dat"]["state"].items():  # weights after the step, synchronised statistics
            assert torch.allclose(v.float(), res["fused"]["state"][k].float(), atol=1e-5), k
    for k, v in ranks[0]["fused"]["state"].items():  # the replicas agree: gradients were all-reduced
        assert torch.allclose(v.float(), ranks[1]["fused"]["state"][k].float(), atol=1e-6), k
    assert ranks[0]["dat"]["losses"]["a"] != ranks[1]["dat"]["losses"]["a"]  # the ranks saw different data
