"""`cdcl demo` bookkeeping: every run, the same seeds, results.json/results.md schema.
(Training itself is replaced by a stub here; tests/test_lidar_task.py trains for real.)"""
import argparse
import json

import pytest


def test_demo_runs_every_method_per_seed_and_writes_results(tmp_path, monkeypatch):
    import common.trainer
    from cdcl3d import demo

    calls = []

    def fake_train(cfg, work_dir, resume=None, overwrite=False):
        calls.append((cfg.strategy.name, tuple(cfg.names), cfg.train.seed, cfg.train.iterations))
        base = 0.1 + 0.01 * cfg.train.seed + (0.05 if cfg.strategy.name == "cdcl" else 0.0)
        return {n: {"miou": base} for n in cfg.names}

    monkeypatch.setattr(common.trainer, "train", fake_train)
    monkeypatch.setattr(demo, "render_examples", lambda *a, **k: None)
    monkeypatch.setattr(demo, "_ensure_data", lambda *a, **k: None)
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(out=str(tmp_path / "out"), seeds=[0, 1, 2], quick=True, task="3d")
    assert demo.run_demo(args) == 0
    assert len(calls) == 9
    for seed in (0, 1, 2):
        assert ("single", ("semantickitti",), seed, 30) in calls
        assert ("single", ("nuscenes",), seed, 30) in calls
        assert ("cdcl", ("semantickitti", "nuscenes"), seed, 30) in calls
    res = json.loads((tmp_path / "out/results.json").read_text())
    for name in ("semantickitti", "nuscenes"):
        for method in ("single", "cdcl"):
            r = res[name][method]
            assert set(r) == {"miou_mean", "miou_std", "seeds"} and len(r["seeds"]) == 3
        assert res[name]["cdcl"]["miou_mean"] == pytest.approx(res[name]["single"]["miou_mean"] + 0.05)
    md = (tmp_path / "out/results.md").read_text()
    assert "| semantickitti |" in md and "+5.0" in md
