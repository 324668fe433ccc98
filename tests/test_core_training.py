"""DAT step, loaders, trainer, resume, checkpoints, non-finite losses."""
import contextlib
import copy
import json
import os

import pytest
import torch
from torch import nn

from common.checkpoint import CheckpointError, load_checkpoint
from common.config import build_config, load_config
from common.data import InfiniteLoader
from common.dataset_specific import convert_dataset_specific, convert_heads
from common.engine import NonFiniteLossError, train_step
from common.toy import ToyNet, ToySegmentation
from common.trainer import train

NAMES = ["a", "b"]


def model_and_batches(seed=0):
    torch.manual_seed(seed)
    m = ToyNet(num_classes=4, width=8)
    convert_dataset_specific(m, NAMES)
    convert_heads(m, {"a": 4, "b": 3})
    da = ToySegmentation(size=4, height=16, width=16, num_classes=4, style=0.0, name="a")
    db = ToySegmentation(size=4, height=16, width=16, num_classes=3, style=2.0, name="b")
    batches = {"a": {"inputs": torch.stack([da[i]["inputs"] for i in range(2)]),
                     "labels": torch.stack([da[i]["labels"] for i in range(2)])},
               "b": {"inputs": torch.stack([db[i]["inputs"] for i in range(3)]),
                     "labels": torch.stack([db[i]["labels"] for i in range(3)])}}
    ce = lambda out, batch: nn.functional.cross_entropy(out, batch["labels"], ignore_index=255)
    return m, batches, {"a": ce, "b": ce}


def grads_after(mode, lr=0.0):
    m, batches, crit = model_and_batches()
    opt = torch.optim.SGD(m.parameters(), lr=lr)
    losses = train_step(m, batches, crit, opt, mode=mode, weights={"a": 1.0, "b": 0.5})
    return losses, {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}, m


def test_fused_equals_dat_losses_and_gradients():  # one forward: tests/test_fused_step.py
    l_dat, g_dat, _ = grads_after("dat")
    l_fused, g_fused, _ = grads_after("fused")
    assert l_dat.keys() == l_fused.keys()
    for k in l_dat:
        assert abs(l_dat[k] - l_fused[k]) < 1e-5
    assert g_dat.keys() == g_fused.keys()
    for k in g_dat:
        assert torch.allclose(g_dat[k], g_fused[k], atol=1e-5), k


def test_dat_gives_every_shared_parameter_a_gradient_from_every_dataset():
    m, batches, crit = model_and_batches()
    shared = [(n, p) for n, p in m.named_parameters() if ".branches." not in n]
    for name in NAMES:
        m.zero_grad()
        opt = torch.optim.SGD(m.parameters(), lr=0.0)
        train_step(m, {name: batches[name]}, crit, opt, mode="dat")
        for n, p in shared:
            assert p.grad is not None and p.grad.abs().sum() > 0, (name, n)
    _, grads, _ = grads_after("dat")
    for n, p in m.named_parameters():
        assert n in grads, f"{n} got no gradient under dat"


def test_sequential_steps_after_each_dataset():
    m, batches, crit = model_and_batches()
    before = copy.deepcopy(m.state_dict())
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    losses = train_step(m, batches, crit, opt, mode="sequential")
    assert set(losses) == set(NAMES)
    assert not torch.equal(before["conv1.weight"], m.state_dict()["conv1.weight"])


def test_nonfinite_loss_stops_without_touching_weights_or_skips():
    m, batches, crit = model_and_batches()
    batches["b"]["inputs"][0] = float("nan")
    before = copy.deepcopy(m.state_dict())
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with pytest.raises(NonFiniteLossError, match=r"step 7 on dataset 'b'"):
        train_step(m, batches, crit, opt, mode="dat", step=7)
    for k, v in m.state_dict().items():
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(v, before[k]), k
    losses = train_step(m, batches, crit, opt, mode="dat", on_nonfinite="skip")
    assert losses["b"] != losses["b"]  # NaN marks the skipped dataset


def test_infinite_loader_cycles_and_resumes_exactly():
    ds = ToySegmentation(size=5, height=8, width=8, augment=True)
    full = InfiniteLoader(ds, batch_size=2, seed=3)
    seq = [next(full)["inputs"] for _ in range(7)]  # crosses epoch boundaries (2 batches/epoch)
    part = InfiniteLoader(ds, batch_size=2, seed=3)
    for _ in range(3):
        next(part)
    resumed = InfiniteLoader(ds, batch_size=2, seed=3)
    resumed.load_state_dict(part.state_dict())
    for i in range(3, 7):
        assert torch.equal(next(resumed)["inputs"], seq[i])
    assert full.epoch == 3


def test_loader_shards_by_rank():
    ds = ToySegmentation(size=8, height=8, width=8)
    ids = []
    for r in range(2):
        ld = InfiniteLoader(ds, batch_size=2, seed=0, rank=r, world_size=2)
        ids += [i for _ in range(2) for i in next(ld)["id"]]
    assert len(set(ids)) == 8


def toy_cfg(tmp_path, **train):
    d = {"task": "toy", "model": {"name": "toynet", "width": 8, "dropout": 0.2},
         "data": {"a": {"type": "toy", "batch_size": 2, "size": 6, "height": 16, "width": 16},
                  "b": {"type": "toy", "batch_size": 3, "size": 5, "height": 16, "width": 16,
                        "style": 1.0, "num_classes": 3}},
         "strategy": {"name": "cdcl"},
         "train": dict({"iterations": 6, "lr": 0.05, "checkpoint_every": 3, "eval_every": 0,
                        "progress": False, "log_every": 1}, **train)}
    return build_config(d, source=str(tmp_path / "toy.yaml"))


def test_train_writes_outputs_and_finite_losses(tmp_path):
    cfg = toy_cfg(tmp_path)
    res = train(cfg, str(tmp_path / "run"))
    assert set(res) == {"a", "b"} and 0 <= res["a"]["miou"] <= 1
    for f in ("config.yaml", "log.jsonl", "checkpoints/latest.pth", "checkpoints/best.pth", "tb"):
        assert os.path.exists(tmp_path / "run" / f), f
    records = [json.loads(l) for l in open(tmp_path / "run" / "log.jsonl")]
    train_recs = [r for r in records if r["type"] == "train"]
    assert len(train_recs) == 6 and all(r["loss/a"] == r["loss/a"] for r in train_recs)
    # the saved config reloads to the same experiment
    again = load_config(str(tmp_path / "run" / "config.yaml"))
    assert again.to_dict() == cfg.to_dict()


def test_resume_equals_uninterrupted(tmp_path):
    full = train(toy_cfg(tmp_path), str(tmp_path / "full"))
    w_full = load_checkpoint(str(tmp_path / "full/checkpoints/latest.pth"))["model"]
    train(toy_cfg(tmp_path, iterations=6), str(tmp_path / "part"))  # writes step 3 and 6
    # simulate an interruption at step 3: resume from the periodic checkpoint
    train(toy_cfg(tmp_path), str(tmp_path / "part"), resume=str(tmp_path / "part/checkpoints/iter_000003.pth"))
    w_res = load_checkpoint(str(tmp_path / "part/checkpoints/latest.pth"))["model"]
    for k in w_full:
        assert torch.equal(w_full[k], w_res[k]), k
    assert full


def test_truncated_checkpoint_is_reported_and_previous_survives(tmp_path):
    train(toy_cfg(tmp_path), str(tmp_path / "run"))
    ck = tmp_path / "run/checkpoints"
    data = (ck / "latest.pth").read_bytes()
    (ck / "broken.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="broken.pth"):
        load_checkpoint(str(ck / "broken.pth"))
    assert load_checkpoint(str(ck / "iter_000003.pth"))["step"] == 3


def test_nan_in_training_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = toy_cfg(tmp_path, iterations=8)
    cfg.data["b"].params["nan_at"] = 0  # sample 0 of b is all NaN
    cfg.data["b"].params["size"] = 3
    with pytest.raises(NonFiniteLossError, match="dataset 'b'"):
        train(cfg, str(tmp_path / "run"))
    skip = toy_cfg(tmp_path, iterations=4, on_nonfinite="skip")
    skip.data["b"].params.update(nan_at=0, size=3)
    train(skip, str(tmp_path / "skip"))
    recs = [json.loads(l) for l in open(tmp_path / "skip/log.jsonl") if '"train"' in l]
    assert any(r["skipped"] for r in recs)


@pytest.mark.parametrize("strategy,mode", [("single", "dat"), ("shared_bn", "dat"),
                                           ("conv_not_shared", "fused"), ("cdcl", "sequential"),
                                           ("finetune", "dat"), ("label_remap", "dat")])
def test_every_strategy_trains(tmp_path, strategy, mode):
    cfg = toy_cfg(tmp_path, iterations=2, mode=mode, checkpoint_every=100)
    cfg.strategy.name = strategy
    if strategy == "single":
        del cfg.data["b"]
    if strategy == "finetune":
        cfg.strategy.switch_at = 1
    if strategy == "label_remap":
        cfg.strategy.label_map = {"b": {0: 1, 1: 2, 2: 3}}
    res = train(cfg, str(tmp_path / strategy))
    assert all(0 <= r["miou"] <= 1 for r in res.values())


def test_unseen_dataset_is_evaluated_and_precise_bn_gives_it_a_branch_of_its_own(tmp_path):
    from common.build import build_dataset
    from common.cli import main
    from common.dataset_specific import collapse, dataset_names
    from common.evaluation import load_model_for_eval

    cfg = toy_cfg(tmp_path, iterations=2)
    d = cfg.to_dict()
    # "c" is never trained on: it is served by b's branch (zero-shot)
    d["data"]["c"] = {"type": "toy", "size": 4, "height": 16, "width": 16, "style": 3.0,
                      "num_classes": 3, "branch": "b"}
    cfg = build_config(d, source="toy")
    assert cfg.names == ["a", "b"] and cfg.eval_names == ["a", "b", "c"]
    res = train(cfg, str(tmp_path / "run"))
    assert set(res) == {"a", "b", "c"}
    ckpt = tmp_path / "run/checkpoints/latest.pth"
    assert dataset_names(load_model_for_eval(cfg, str(ckpt), torch.device("cpu"))) == ["a", "b"]
    out = tmp_path / "pbn.pth"
    assert main(["precise-bn", str(tmp_path / "run" / "config.yaml"), "--checkpoint", str(ckpt),
                 "--dataset", "c", "--batches", "100", "--out", str(out)]) == 0
    before = load_checkpoint(str(ckpt))["model"]
    after = load_checkpoint(str(out))["model"]
    # cdcl adapt --method precise-bn from c's branch b: b is untouched, c gets a copy of it
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert {k for k in after if k not in before} == {k.replace(".branches.b.", ".branches.c.")
                                                     for k in before if ".branches.b." in k}
    # c's bn1 running mean is the mean of conv1's output over all of c's samples
    model = load_model_for_eval(cfg, str(ckpt), torch.device("cpu"))
    ds = build_dataset(cfg, "c", "train", False)
    x = torch.stack([ds[i]["inputs"] for i in range(len(ds))])
    with torch.no_grad():
        feats = collapse(model, "b").conv1(x)
    assert torch.allclose(after["bn1.branches.c.running_mean"], feats.mean((0, 2, 3)), atol=1e-4)
    # a trained dataset: its own branch, in place
    assert main(["precise-bn", str(tmp_path / "run" / "config.yaml"), "--checkpoint", str(ckpt),
                 "--dataset", "a", "--out", str(tmp_path / "a.pth")]) == 0
    changed = {k for k, v in load_checkpoint(str(tmp_path / "a.pth"))["model"].items() if not torch.equal(v, before[k])}
    assert changed and all(".branches.a." in k and k.endswith(("running_mean", "running_var", "num_batches_tracked"))
                           for k in changed)


def test_bf16_autocast_and_gradient_clipping(tmp_path):
    res = train(toy_cfg(tmp_path, iterations=2, amp="bf16", clip_grad=0.5), str(tmp_path / "bf16"))
    recs = [json.loads(l) for l in open(tmp_path / "bf16/log.jsonl") if '"train"' in l]
    assert all(r["loss/a"] == r["loss/a"] and r["loss/b"] == r["loss/b"] for r in recs)
    assert set(res) == {"a", "b"}


@pytest.mark.parametrize("mode", ["dat", "fused", "sequential"])
def test_skipped_step_leaves_batchnorm_statistics_untouched(tmp_path, mode):
    """A NaN batch's forward must not leave NaN running statistics behind:
    the step is skipped as a whole, or every later step would be NaN too."""
    cfg = toy_cfg(tmp_path, iterations=6, on_nonfinite="skip", mode=mode)
    cfg.data["b"].params.update(nan_at=0, size=6)  # batch size 3: one bad batch per epoch
    train(cfg, str(tmp_path / "skip"))
    recs = [json.loads(l) for l in open(tmp_path / "skip/log.jsonl") if '"train"' in l]
    skipped = [r["step"] for r in recs if r["skipped"]]
    assert 0 < len(skipped) < len(recs)
    assert all(r["loss/b"] == r["loss/b"] for r in recs if not r["skipped"])  # finite after a skip
    state = load_checkpoint(str(tmp_path / "skip/checkpoints/latest.pth"))["model"]
    assert all(torch.isfinite(v).all() for k, v in state.items() if "running" in k)


def test_a_dataset_sees_the_same_batches_alone_and_in_a_joint_run(tmp_path):
    """The paired design: dataset b's data order depends on the seed and its
    name, not on its position in data:, so single-b and joint a+b runs of one
    seed draw the same samples of b in the same order."""
    from common.trainer import setup

    joint = toy_cfg(tmp_path)
    single = toy_cfg(tmp_path)
    single.strategy.name = "single"
    del single.data["a"]
    cpu = torch.device("cpu")
    runs = [setup(c, str(tmp_path / n), cpu, contextlib.nullcontext) for n, c in (("j", joint), ("s", single))]
    for _ in range(4):
        bj, bs = (r.loaders.next(["b"])["b"] for r in runs)
        assert bj["id"] == bs["id"] and torch.equal(bj["inputs"], bs["inputs"])
