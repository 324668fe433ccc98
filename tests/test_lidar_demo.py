"""`cdcl demo` is the study configs/studies/demo_lidar.yaml run by the study code:
every method per seed, paired seeds, the study's report, its first table printed.
(The trainings are replaced by a stub here; tests/test_lidar_task.py trains for real
and tests/test_study.py runs studies of real trainings.)"""
import argparse
import json
import os

import pytest


def test_demo_runs_the_demo_study_and_prints_its_table(tmp_path, monkeypatch, capsys):
    import common.config
    import common.study
    from cdcl3d import demo

    calls = []

    def fake_execute(runs, jobs=1, poll=0.5):
        for r in runs:
            cfg = common.config.load_config(r.config_path)
            calls.append((r.method, tuple(cfg.names), cfg.train.seed, cfg.train.iterations, jobs))
            base = 0.1 + 0.01 * cfg.train.seed + (0.05 if cfg.strategy.name == "cdcl" else 0.0)
            res = {n: {"miou": base, "class_names": ["a", "b"], "iou": {"a": base, "b": base}} for n in cfg.names}
            os.makedirs(r.run_dir, exist_ok=True)
            with open(os.path.join(r.run_dir, "results.json"), "w") as f:
                json.dump(res, f)
        return []

    monkeypatch.setattr(common.study, "execute", fake_execute)
    monkeypatch.setattr(demo, "render_examples", lambda *a, **k: None)
    monkeypatch.setattr(demo, "_ensure_data", lambda *a, **k: None)
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(out=str(tmp_path / "out"), seeds=[0, 1, 2], quick=True, task="3d", jobs=2)
    assert demo.run_demo(args) == 0
    assert len(calls) == 9
    for seed in (0, 1, 2):
        assert ("single_semantickitti", ("semantickitti",), seed, 30, 2) in calls
        assert ("single_nuscenes", ("nuscenes",), seed, 30, 2) in calls
        assert ("cdcl", ("semantickitti", "nuscenes"), seed, 30, 2) in calls
    out = tmp_path / "out" / "lidar_quick"
    rep = json.loads((out / "report.json").read_text())
    for name in ("semantickitti", "nuscenes"):
        v = rep["vs_baseline"][name]["cdcl"]
        assert v["mean"] == pytest.approx(0.05) and v["improved"] == 3
        assert rep["summary"][name]["cdcl"]["std"] == pytest.approx(0.01)  # sample std over seeds (n - 1)
    printed = capsys.readouterr().out
    assert "## Single-dataset training vs CDCL" in printed and "| CDCL |" in printed
    assert "+5.0 [" in printed and str(out / "report.md") in printed
