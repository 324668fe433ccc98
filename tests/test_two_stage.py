"""``two_stage`` (the paper's Table 6 domain-adaptation baseline): A, then B with
B's own BN (a copy of A's at the switch) and head, the convolutions frozen
(``strategy.freeze_conv``) or updated; config checks; the study's schedule."""
import contextlib
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import yaml

import common.trainer as trainer
from common.build import begin_stage
from common.checkpoint import load_checkpoint
from common.config import ConfigError, build_config
from common.study import load_study, plan, resolve_run, samples_per_dataset
from common.trainer import setup, train

SWITCH = 3


def cfg_dict(freeze=True, **train):
    return {"task": "toy", "model": {"name": "toynet", "width": 8, "dropout": 0.2},
            "data": {"a": {"type": "toy", "batch_size": 2, "size": 6, "height": 16, "width": 16},
                     "b": {"type": "toy", "batch_size": 3, "size": 5, "height": 16, "width": 16,
                           "style": 1.0, "num_classes": 3}},
            "strategy": {"name": "two_stage", "switch_at": SWITCH, "freeze_conv": freeze},
            # weight decay and momentum on: neither may move a frozen weight
            "train": dict({"iterations": 6, "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-2,
                           "checkpoint_every": 1, "keep_checkpoints": 10, "eval_every": 0,
                           "progress": False, "log_every": 1, "tb_images": False}, **train)}


def two_stage_cfg(tmp_path, freeze=True, **train):
    return build_config(cfg_dict(freeze, **train), source=str(tmp_path / "two_stage.yaml"))


def part(state, kind):
    """The entries of a state dict: A's or B's BN branches, A's or B's head, or
    the shared convolutions."""
    if kind == "conv":
        return {k: v for k, v in state.items() if k.startswith("conv")}
    what, name = kind.split("_")
    prefix = "bn" if what == "bn" else "cls"
    return {k.replace(f".branches.{name}.", "."): v for k, v in state.items()
            if k.startswith(prefix) and f".branches.{name}." in k}


def same(x, y):
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("freeze", [True, False])
def test_stages_train_what_they_should_and_b_starts_from_a(tmp_path, monkeypatch, freeze):
    cfg = two_stage_cfg(tmp_path, freeze)
    init = {k: v.clone() for k, v in
            setup(cfg, str(tmp_path), torch.device("cpu"), contextlib.nullcontext).model.state_dict().items()}
    seen = []  # (datasets of the step, the weights before it)
    real_step = trainer.train_step

    def spy(model, batches, *args, **kwargs):
        seen.append((list(batches), {k: v.clone() for k, v in model.state_dict().items()}))
        return real_step(model, batches, *args, **kwargs)

    monkeypatch.setattr(trainer, "train_step", spy)
    train(cfg, str(tmp_path / "run"))
    assert [names for names, _ in seen] == [["a"]] * SWITCH + [["b"]] * (6 - SWITCH)
    stage1 = load_checkpoint(str(tmp_path / f"run/checkpoints/iter_{SWITCH:06d}.pth"))["model"]
    final = load_checkpoint(str(tmp_path / "run/checkpoints/latest.pth"))["model"]
    # stage 1 trains A and the convolutions, never B's branch or head
    assert not same(part(stage1, "bn_a"), part(init, "bn_a")) and not same(part(stage1, "conv"), part(init, "conv"))
    assert same(part(stage1, "bn_b"), part(init, "bn_b")) and same(part(stage1, "cls_b"), part(init, "cls_b"))
    # the first step on B starts from A's trained BN (statistics and affine) and B's own untrained head
    at_switch = seen[SWITCH][1]
    assert same(part(at_switch, "bn_b"), part(stage1, "bn_a"))
    assert same(part(at_switch, "cls_b"), part(init, "cls_b"))
    # stage 2 trains B's BN and head; A's BN and head are untouched; the convs only without freeze_conv
    assert not same(part(final, "bn_b"), part(stage1, "bn_a")) and not same(part(final, "cls_b"), part(init, "cls_b"))
    assert same(part(final, "bn_a"), part(stage1, "bn_a")) and same(part(final, "cls_a"), part(stage1, "cls_a"))
    assert same(part(final, "conv"), part(stage1, "conv")) == freeze


@pytest.mark.parametrize("at", [SWITCH, SWITCH + 1])
def test_resume_at_or_after_the_switch_is_bit_exact(tmp_path, at):
    # at the switch: the resumed run makes the copy; after it: the copy is in the
    # checkpoint and the convolutions must be frozen again
    train(two_stage_cfg(tmp_path), str(tmp_path / "full"))
    train(two_stage_cfg(tmp_path), str(tmp_path / "resumed"),
          resume=str(tmp_path / f"full/checkpoints/iter_{at:06d}.pth"))
    full = load_checkpoint(str(tmp_path / "full/checkpoints/latest.pth"))
    resumed = load_checkpoint(str(tmp_path / "resumed/checkpoints/latest.pth"))
    assert same(full["model"], resumed["model"])
    assert same(part(full["model"], "conv"),
                part(load_checkpoint(str(tmp_path / f"full/checkpoints/iter_{SWITCH:06d}.pth"))["model"], "conv"))


def test_begin_stage_copies_only_at_the_switch_and_freezes_from_it(tmp_path):
    cfg = two_stage_cfg(tmp_path)
    model = setup(cfg, str(tmp_path), torch.device("cpu"), contextlib.nullcontext).model
    with torch.no_grad():
        for bn in (model.bn1, model.bn2, model.bn3):
            bn.branches["a"].weight.add_(1.0)
            bn.branches["a"].running_mean.add_(0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    begin_stage(model, cfg, SWITCH - 1)  # stage 1: nothing happens
    assert same(model.state_dict(), before) and all(p.requires_grad for p in model.parameters())
    begin_stage(model, cfg, SWITCH + 1)  # a resume after the switch: freeze, no copy
    assert same(model.state_dict(), before)
    begin_stage(model, cfg, SWITCH)
    state = model.state_dict()
    assert same(part(state, "bn_b"), part(state, "bn_a")) and same(part(state, "cls_b"), part(before, "cls_b"))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1.weight", "conv2.weight", "conv3.weight"}


@pytest.mark.parametrize("change,key", [
    ({"data": {"b": None}}, "needs exactly 2 trained dataset"),
    ({"strategy": {"switch_at": None}}, "needs 'strategy.switch_at'"),
    ({"strategy": {"switch_at": 0}}, r"'strategy.switch_at' must be >= 1"),
    ({"strategy": {"switch_at": 6}}, r"'strategy.switch_at' \(6\) must be below 'train.iterations' \(6\)"),
    ({"strategy": {"freeze_conv": "yes"}}, r"'strategy.freeze_conv' must be"),
    ({"strategy": {"name": "cdcl"}}, r"'strategy.freeze_conv' freezes .* finetune or two_stage; "
                                     r"strategy 'cdcl' has no switch"),
])
def test_bad_configs_name_the_key(tmp_path, change, key):
    d = cfg_dict()
    for section, values in change.items():
        for k, v in values.items():
            if v is None:
                del d[section][k]
            else:
                d[section][k] = v
    with pytest.raises(ConfigError, match=key):
        build_config(d, source=str(tmp_path / "two_stage.yaml"))


def test_study_gives_two_stage_the_finetune_schedule(tmp_path):
    data = ("data:\n  a: {type: toy, batch_size: 2, size: 4, height: 16, width: 16}\n"
            "  b: {type: toy, batch_size: 2, size: 4, height: 16, width: 16, style: 1.0, num_classes: 3}\n")
    (tmp_path / "joint.yaml").write_text("task: toy\nmodel: {name: toynet, width: 4}\n" + data
                                         + "strategy: {name: cdcl}\ntrain: {iterations: 3}\n")
    (tmp_path / "study.yaml").write_text(
        "seeds: [0]\ndatasets: [a, b]\nbaseline: CDCL\niterations: 5\nmethods:\n"
        "  cdcl: {config: joint.yaml, label: CDCL}\n"
        "  frozen: {config: joint.yaml, overrides: [strategy.name=two_stage, strategy.freeze_conv=true]}\n"
        "  updated: {config: joint.yaml, overrides: [strategy.name=two_stage]}\n")
    study = load_study(str(tmp_path / "study.yaml"))
    cfg = resolve_run(study, study.methods["frozen"], 0)
    assert (cfg.train.iterations, cfg.strategy.switch_at, cfg.strategy.freeze_conv) == (10, 5, True)
    assert samples_per_dataset(cfg) == {"a": 10, "b": 10}
    _, meta = plan(study, str(tmp_path / "out"))  # refuses unequal samples
    assert not meta["fairness"]["unequal"]


def test_ddp_leaves_frozen_convolutions_bit_identical(tmp_path):
    # under DDP the convolutions stop needing gradients in the middle of a run:
    # the reducer must leave their gradients unset, so SGD skips them
    if not dist.is_available():
        pytest.skip("this torch build has no torch.distributed (some macOS/Windows wheels)")
    d = cfg_dict(iterations=4, checkpoint_every=2, threads=1)
    d["strategy"]["switch_at"] = 2
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(d))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "common.cli", "train", str(tmp_path / "ddp.yaml"), "--work-dir", str(tmp_path / "ddp")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    at_switch = load_checkpoint(str(tmp_path / "ddp/checkpoints/iter_000002.pth"))["model"]
    final = load_checkpoint(str(tmp_path / "ddp/checkpoints/latest.pth"))["model"]
    assert same(part(final, "conv"), part(at_switch, "conv")) and not same(part(final, "bn_b"), part(at_switch, "bn_b"))
    log = [json.loads(line) for line in open(tmp_path / "ddp/log.jsonl")]
    assert [x["replicas_identical"] for x in log if x["type"] == "ddp"] == [True]
