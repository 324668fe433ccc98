"""Training output: the log line and its record, progress without a terminal,
resume with a longer schedule, a second run into a work dir, epochs, the best checkpoint."""
import json
import logging
import math
import os
import re
import subprocess
import sys

import pytest
import yaml

from common.checkpoint import load_checkpoint
from common.cli import main
from common.config import ConfigError, build_config
from common.trainer import format_train_line, train

LR = 0.05


def toy_dict(**train):
    return {"task": "toy", "model": {"name": "toynet", "width": 8, "dropout": 0.2},
            "data": {"a": {"type": "toy", "batch_size": 2, "size": 6, "height": 16, "width": 16},
                     "b": {"type": "toy", "batch_size": 3, "size": 5, "height": 16, "width": 16,
                           "style": 1.0, "num_classes": 3}},
            "strategy": {"name": "cdcl"},
            "train": dict({"iterations": 4, "lr": LR, "checkpoint_every": 2, "eval_every": 0,
                           "progress": False, "log_every": 2, "tb_images": False, "threads": 1}, **train)}


def toy_cfg(tmp_path, **train):
    return build_config(toy_dict(**train), source=str(tmp_path / "toy.yaml"))


def write_cfg(tmp_path, **train):
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(toy_dict(**train), sort_keys=False))
    return str(path)


def records(work, kind="train"):
    return [r for r in map(json.loads, open(os.path.join(work, "log.jsonl"))) if r["type"] == kind]


LINE = re.compile(r"iter (\d+)/(\d+), (.*)$")


def parse_line(text):
    """``iter 4/4, epoch 1.33, loss/a 1.2, ...`` -> (4, 4, {"epoch": "1.33", "loss/a": "1.2", ...})."""
    m = LINE.search(text)
    assert m, text
    fields = dict(part.split(" ", 1) for part in m.group(3).split(", "))
    return int(m.group(1)), int(m.group(2)), fields


def log_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("iter ")]


def test_log_line_fields_and_its_record(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cdcl")
    work = str(tmp_path / "run")
    train(toy_cfg(tmp_path), work)
    lines = log_lines(caplog)
    assert len(lines) == 2  # steps 2 and 4
    done, total, fields = parse_line(lines[-1])
    assert (done, total) == (4, 4)
    assert list(fields) == ["epoch", "loss/a", "loss/b", "lr", "time", "data_time", "eta", "max_mem"]
    for key in ("epoch", "loss/a", "loss/b", "lr", "time", "data_time"):
        assert math.isfinite(float(fields[key])), key
    assert re.fullmatch(r"\d+:\d\d:\d\d", fields["eta"]) and fields["eta"] == "0:00:00"
    assert re.fullmatch(r"\d+M", fields["max_mem"]) and int(fields["max_mem"][:-1]) > 0
    rec = records(work)[-1]  # the same numbers in log.jsonl
    assert rec["step"] == 4 and rec["window"] == 2 and not rec["skipped"]
    assert float(fields["lr"]) == pytest.approx(rec["lr"], rel=1e-4)
    assert float(fields["loss/a"]) == pytest.approx(rec["loss/a"], abs=1e-4)
    assert float(fields["time"]) == pytest.approx(rec["iter_time"], abs=1e-3)
    assert float(fields["data_time"]) == pytest.approx(rec["data_time"], abs=1e-3)
    assert int(fields["max_mem"][:-1]) == round(rec["max_rss_mb"])
    assert rec["eta_s"] == 0 and 0 <= rec["data_time"] <= rec["iter_time"]


def test_log_line_shows_cuda_memory_and_skipped_steps():
    rec = {"step": 120, "epoch": 1.5, "loss/kitti": 0.5, "lr": 0.01, "iter_time": 0.2, "data_time": 0.01,
           "eta_s": 3725, "max_rss_mb": 812.4, "max_cuda_mb": 2048.0, "skipped_steps": 1}
    line = format_train_line(rec, 2000)
    assert line == ("iter 120/2000, epoch 1.50, loss/kitti 0.5000, lr 1.0000e-02, time 0.200, data_time 0.010, "
                    "eta 1:02:05, max_mem 812M, cuda_mem 2048M, skipped 1")


def test_loss_is_the_mean_over_the_window(tmp_path):
    train(toy_cfg(tmp_path, iterations=6, log_every=1), str(tmp_path / "every"))
    train(toy_cfg(tmp_path, iterations=6, log_every=3), str(tmp_path / "window"))
    every, window = records(str(tmp_path / "every")), records(str(tmp_path / "window"))
    assert [r["step"] for r in window] == [3, 6] and [r["window"] for r in window] == [3, 3]
    for rec in window:
        steps = [r for r in every if rec["step"] - 3 < r["step"] <= rec["step"]]
        for n in ("a", "b"):
            assert rec[f"loss/{n}"] == pytest.approx(sum(r[f"loss/{n}"] for r in steps) / 3, rel=1e-6)
        assert rec["lr"] == steps[-1]["lr"]  # the lr of the logged step


def test_redirected_output_has_log_lines_and_no_carriage_returns(tmp_path):
    cfg = write_cfg(tmp_path, progress=True)  # progress on: a bar only at a terminal
    r = subprocess.run([sys.executable, "-m", "common.cli", "train", cfg, "--work-dir", str(tmp_path / "run")],
                       capture_output=True, timeout=240, env=dict(os.environ, OMP_NUM_THREADS="1"))
    out = (r.stdout + r.stderr).decode()
    assert r.returncode == 0, out[-3000:]
    assert "\r" not in out
    assert [parse_line(line)[:2] for line in out.splitlines() if "iter " in line and "/4," in line] == \
        [(2, 4), (4, 4)]
    # start: the work dir, the environment and the config; where each checkpoint went
    assert f"work dir {tmp_path / 'run'} (attempt 1)" in out
    assert re.search(r"environment: python \d+\.\d+\.\d+, torch \S+ ", out)
    assert "config (saved to " in out and "  iterations: 4" in out
    assert f"checkpoint of iter 4 saved to {os.path.join(str(tmp_path / 'run'), 'checkpoints', 'latest.pth')}" in out


def test_progress_without_a_terminal_logs_every_10_percent(caplog, monkeypatch):
    from common import progress

    caplog.set_level(logging.INFO, logger="cdcl")
    monkeypatch.setattr(progress, "interactive", lambda: False)
    items = list(progress.track(range(40), desc="eval x", quiet_seconds=0))
    assert items == list(range(40))
    lines = [r.getMessage() for r in caplog.records]
    assert [re.match(r"eval x: (\d+)/40 \((\d+)%\)", m).groups() for m in lines[:-1]] == \
        [(str(4 * k), str(10 * k)) for k in range(1, 10)]
    assert lines[-1].startswith("eval x: done, 40 in ")
    caplog.clear()
    list(progress.track(range(40), desc="quick"))  # a loop of less than 5 s says nothing
    assert not caplog.records
    wrapped = progress.track([1, 2, 3], desc="x")
    assert len(wrapped) == 3 and wrapped.count(2) == 1  # len() and attributes of what it wraps


def test_environment_is_saved_and_survives_missing_git_and_packages(tmp_path, monkeypatch):
    from common import environment

    work = str(tmp_path / "run")
    train(toy_cfg(tmp_path, iterations=2), work)
    env = json.load(open(os.path.join(work, "env.json")))
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert env["versions"]["torch"] and "numba" in env["versions"] and "nuscenes-devkit" in env["versions"]
    start = records(work, "start")[0]
    assert start["env"] == env and start["work_dir"] == os.path.abspath(work) and start["iterations"] == 2

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")
    monkeypatch.setattr(environment.subprocess, "run", no_git)
    monkeypatch.setattr(environment, "PACKAGES", ("torch", "no-such-package-here"))
    env = environment.collect_env()
    assert env["git"] is None and env["versions"]["no-such-package-here"] is None
    assert "git commit unknown" in environment.format_env(env)


def test_resume_with_more_iterations_follows_the_poly_schedule_of_the_new_length(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cdcl")
    work = str(tmp_path / "run")
    train(toy_cfg(tmp_path, iterations=4, log_every=1), work)
    first = load_checkpoint(os.path.join(work, "checkpoints", "latest.pth"))
    assert first["optimizer"]["param_groups"][0]["lr"] == 0.0  # the end of a 4-iteration schedule
    train(toy_cfg(tmp_path, iterations=8, log_every=1), work, resume="auto")
    recs = records(work)
    assert [(r["attempt"], r["step"]) for r in recs] == [(1, s) for s in range(1, 5)] + [(2, s) for s in range(5, 9)]
    for r in recs:  # the lr of step k (1-based) is LR * (1 - (k - 1) / N) ** 0.9, N the run's length
        n = 4 if r["attempt"] == 1 else 8
        assert r["lr"] == pytest.approx(LR * (1 - (r["step"] - 1) / n) ** 0.9, rel=1e-6), r
    assert all(r["lr"] > 0 for r in recs)
    assert "resumed at step 4 of a 4-iteration run; train.iterations is now 8" in caplog.text
    last = load_checkpoint(os.path.join(work, "checkpoints", "latest.pth"))
    assert last["step"] == 8 and last["iterations"] == 8
    assert any(not (first["model"][k] == v).all() for k, v in last["model"].items())  # it trained


def test_second_train_into_a_run_needs_resume_or_overwrite(tmp_path, capsys):
    cfg, work = write_cfg(tmp_path), str(tmp_path / "run")
    assert main(["train", cfg, "--work-dir", work]) == 0
    before = {f: open(os.path.join(work, f), "rb").read() for f in ("log.jsonl", "checkpoints/latest.pth")}
    capsys.readouterr()
    assert main(["train", cfg, "--work-dir", work]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"work dir {work} already holds a run" in err and "--resume auto" in err and "--overwrite" in err
    assert all(open(os.path.join(work, f), "rb").read() == data for f, data in before.items())
    with pytest.raises(SystemExit) as exc:  # both at once: argparse refuses
        main(["train", cfg, "--work-dir", work, "--resume", "auto", "--overwrite"])
    assert exc.value.code == 2
    notes = os.path.join(work, "notes.txt")
    open(notes, "w").write("mine")
    assert main(["train", cfg, "--work-dir", work, "--overwrite", "train.iterations=2"]) == 0
    log = [json.loads(line) for line in open(os.path.join(work, "log.jsonl"))]
    assert {r["attempt"] for r in log} == {1} and [r["step"] for r in log if r["type"] == "train"] == [2]
    assert not os.path.exists(os.path.join(work, "checkpoints", "iter_000002.pth"))  # the old run's
    assert load_checkpoint(os.path.join(work, "checkpoints", "latest.pth"))["step"] == 2
    assert open(notes).read() == "mine"  # only the run's own outputs are removed
    assert main(["train", cfg, "--work-dir", work, "--resume", "auto"]) == 0  # continuing needs no flag


def test_epochs_are_converted_once_on_the_reference_dataset(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cdcl")
    # a: 6 samples, batch 2: 3 iterations an epoch; b: 5 samples, batch 3: 1 (the tail dropped)
    work = str(tmp_path / "a")
    cfg = toy_cfg(tmp_path, iterations=None, epochs=1.5, reference="a")
    train(cfg, work)
    assert records(work, "start")[0]["iterations"] == 5 and records(work)[-1]["step"] == 5  # ceil(1.5 * 3)
    assert "train.epochs 1.5 of a: 6 samples / (batch 2 x 1 process) = 3 iterations an epoch -> 5 iterations" \
        in caplog.text
    assert records(work)[-1]["epoch"] == pytest.approx(5 / 3, abs=1e-3)
    saved = yaml.safe_load(open(os.path.join(work, "config.yaml")))["train"]
    assert saved["epochs"] == 1.5 and saved["iterations"] is None  # the config as written
    cfg = toy_cfg(tmp_path, iterations=None, epochs=2, reference="b")
    train(cfg, str(tmp_path / "b"))
    assert records(str(tmp_path / "b"))[-1]["step"] == 2
    with pytest.raises(ConfigError, match=r"'train.iterations' \(4\) and 'train.epochs' \(2\) are both set"):
        toy_cfg(tmp_path, epochs=2)
    with pytest.raises(ConfigError, match="train.epochs"):
        toy_cfg(tmp_path, iterations=None, epochs=0)
    assert toy_cfg(tmp_path, iterations=None).train.iterations == 1000  # neither: the default


def test_best_checkpoint_records_its_metric_and_iteration(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cdcl")
    work = str(tmp_path / "run")
    train(toy_cfg(tmp_path, iterations=6, eval_every=2), work)
    evals = records(work, "eval")
    means = {r["step"]: (r["a/miou"] + r["b/miou"]) / 2 for r in evals}
    best_iter = max(means, key=lambda s: (means[s], -s))  # the first of equal means is kept
    state = load_checkpoint(os.path.join(work, "checkpoints", "best.pth"))
    assert state["best_iter"] == state["step"] == best_iter
    assert state["best_metric"] == pytest.approx(means[best_iter]) and state["best_miou"] == state["best_metric"]
    latest = load_checkpoint(os.path.join(work, "checkpoints", "latest.pth"))
    assert latest["best_iter"] == best_iter  # a resume knows the best
    path = os.path.join(work, "checkpoints", "best.pth")
    assert f"best mIoU {means[best_iter]:.4f} at iter {best_iter} saved to {path} (mean over a, b)" in caplog.text
