"""``cdcl study``: the interval math, the study file's checks, and a toy study
that is interrupted, resumed, run with two jobs and reported."""
import json
import math
import os

import pytest
from scipy import stats as st

from common import stats
from common.cli import main
from common.config import ConfigError, load_yaml
from common.study import build_report, load_study, plan, samples_per_dataset, resolve_run

TRAIN = "train: {iterations: 3, lr: 0.05, checkpoint_every: 3, eval_every: 0, log_every: 1, progress: false, " \
        "tb_images: false}\n"
A = "  a: {type: toy, batch_size: 2, size: 4, height: 16, width: 16, num_classes: 4}\n"
B = "  b: {type: toy, batch_size: 2, size: 4, height: 16, width: 16, style: 1.0, num_classes: 3}\n"


def write_toy_study(tmp_path, methods=None, extra=""):
    (tmp_path / "single.yaml").write_text("task: toy\nmodel: {name: toynet, width: 4}\ndata:\n" + A
                                          + "strategy: {name: single}\n" + TRAIN)
    (tmp_path / "joint.yaml").write_text("_base_: single.yaml\ndata:\n" + B + "strategy: {name: cdcl}\n")
    (tmp_path / "finetune.yaml").write_text("_base_: single.yaml\ndata:\n" + B
                                            + "strategy: {name: finetune, switch_at: 2}\n")
    methods = methods or ("  single: {config: single.yaml}\n"
                          "  joint: {config: joint.yaml, label: CDCL, flags: {BN: specific}}\n")
    (tmp_path / "study.yaml").write_text(
        "title: toy\nseeds: [0, 1]\ndatasets: [a]\nbaseline: single\nmethods:\n" + methods
        + "tables:\n  - {title: Table 1, rows: [single, CDCL], flags: [BN]}\n" + extra)
    return str(tmp_path / "study.yaml")


# -- the math ---------------------------------------------------------------------

def test_mean_ci_matches_hand_computation():
    # values 1, 2, 3, 6: mean 3, sample variance (4 + 1 + 0 + 9) / 3 = 14/3
    ci = stats.mean_ci([1.0, 2.0, 3.0, 6.0])
    half = st.t.ppf(0.975, 3) * math.sqrt(14 / 3) / 2  # t_{0.975,3} = 3.182
    assert ci["n"] == 4 and ci["mean"] == pytest.approx(3.0)
    assert ci["std"] == pytest.approx(math.sqrt(14 / 3))
    assert ci["half"] == pytest.approx(half) and half == pytest.approx(3.4374, abs=1e-4)
    assert (ci["lo"], ci["hi"]) == (pytest.approx(3 - half), pytest.approx(3 + half))
    one = stats.mean_ci([0.5, None])  # None (absent class) is left out; one value: no interval
    assert one["n"] == 1 and one["mean"] == 0.5 and math.isnan(one["half"])


def test_paired_ci_is_narrower_than_unpaired_when_seeds_move_both():
    # the seed moves both methods alike (0.40 .. 0.60); b is better by 0.011, 0.009, 0.011, 0.010
    a = [0.40, 0.50, 0.60, 0.45]
    b = [0.411, 0.509, 0.611, 0.460]
    paired, unpaired = stats.paired_diff(b, a), stats.unpaired_diff(b, a)
    assert paired["mean"] == pytest.approx(unpaired["mean"]) == pytest.approx(0.01025)
    assert paired["half"] < unpaired["half"] / 10
    assert stats.verdict(paired) == "gain" and stats.verdict(unpaired) == "n.s."
    assert paired["improved"] == 4
    # differences: scipy's paired t-test agrees with the interval's verdict
    assert st.ttest_rel(b, a).pvalue < 0.05 < st.ttest_ind(b, a, equal_var=False).pvalue
    # independent noise: pairing buys nothing, the intervals are of similar width
    c = [0.50, 0.40, 0.55, 0.45]
    assert stats.paired_diff(c, a)["half"] == pytest.approx(stats.unpaired_diff(c, a)["half"], rel=0.6)
    assert stats.verdict(stats.paired_diff([0.1, 0.2], [0.3, 0.5])) in ("loss", "n.s.")


# -- the study file ----------------------------------------------------------------

def test_unknown_method_key_is_one_line_naming_the_file(tmp_path, capsys):
    path = write_toy_study(tmp_path, "  single: {config: single.yaml, overides: [train.lr=0.1]}\n"
                                     "  joint: {config: joint.yaml, label: CDCL}\n")
    with pytest.raises(ConfigError, match=r"study\.yaml: unknown key 'methods\.single\.overides'; valid keys"):
        load_study(path)
    assert main(["study", path, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "study.yaml" in err and "overides" in err


def test_missing_config_is_one_line_naming_both_files(tmp_path, capsys):
    path = write_toy_study(tmp_path, "  single: {config: single.yaml}\n  joint: {config: nope.yaml, label: CDCL}\n")
    assert main(["study", path]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "study.yaml" in err and "nope.yaml" in err and "not found" in err


def test_unequal_samples_are_refused_and_iterations_equalises_finetune(tmp_path):
    methods = ("  single: {config: single.yaml}\n  joint: {config: joint.yaml, label: CDCL}\n"
               "  finetune: {config: finetune.yaml}\n")
    path = write_toy_study(tmp_path, methods)
    study = load_study(path)
    assert samples_per_dataset(resolve_run(study, study.methods["finetune"], 0)) == {"a": 4, "b": 2}
    with pytest.raises(ConfigError, match="different numbers of samples.*a: single 6, joint 6, finetune 4"):
        plan(study, str(tmp_path / "out"))
    study = load_study(path, ["iterations=5"])  # each dataset 5 steps: finetune 10, switching at 5
    cfg = resolve_run(study, study.methods["finetune"], 1)
    assert (cfg.train.iterations, cfg.strategy.switch_at, cfg.train.seed) == (10, 5, 1)
    runs, meta = plan(study, str(tmp_path / "out"))
    assert meta["fairness"]["samples"] == {"single": {"a": 10}, "joint": {"a": 10, "b": 10},
                                           "finetune": {"a": 10, "b": 10}}
    assert [r.tag for r in runs[:3]] == ["single/seed0", "joint/seed0", "finetune/seed0"]
    with pytest.raises(ConfigError, match="override iterations=N instead"):
        load_study(path, ["iterations=5", "train.iterations=7"])


# -- a toy study: interrupted, resumed, two jobs, report -----------------------------------

def _mious(out, method, seed):
    with open(os.path.join(out, "runs", method, f"seed{seed}", "results.json")) as f:
        return {n: r["miou"] for n, r in json.load(f).items()}


def test_toy_study_resumes_skips_finished_runs_and_reports(tmp_path, capsys):
    path = write_toy_study(tmp_path)
    out = str(tmp_path / "out")
    # "interrupted" after the first seed: only seed 0 exists
    assert main(["study", path, "--out", out, "--seeds", "0"]) == 0
    done = {m: os.path.getmtime(os.path.join(out, "runs", m, "seed0", "results.json")) for m in ("single", "joint")}
    # a run killed after its final checkpoint, before its evaluation: results.json gone
    assert main(["study", path, "--out", out, "--jobs", "2"]) == 0
    os.remove(os.path.join(out, "runs", "joint", "seed1", "results.json"))
    capsys.readouterr()
    assert main(["study", path, "--out", out, "--jobs", "2"]) == 0
    said = capsys.readouterr().out
    assert "single/seed0: finished earlier, skipped" in said and "joint/seed1: resuming" in said
    assert "single/seed1: finished earlier, skipped" in said and "single/seed1: training" not in said
    for m, t in done.items():  # finished runs were not trained again
        assert os.path.getmtime(os.path.join(out, "runs", m, "seed0", "results.json")) == t
    with open(os.path.join(out, "runs", "joint", "seed1", "log.jsonl")) as f:
        starts = [json.loads(l) for l in f if '"start"' in l]
    assert len(starts) == 2 and starts[-1]["resumed_from"]  # resumed, not retrained from step 0

    report = build_report(out)
    s = report["summary"]["a"]
    assert set(s) == {"single", "joint"} and s["joint"]["n"] == 2 and report["missing"] == []
    assert s["single"]["values"] == [_mious(out, "single", k)["a"] for k in (0, 1)]
    v = report["vs_baseline"]["a"]["joint"]
    assert v["mean"] == pytest.approx(s["joint"]["mean"] - s["single"]["mean"])
    assert v["verdict"] in ("gain", "loss", "n.s.") and 0 <= v["improved"] <= 2
    assert set(report["per_class"]["a"]["joint"]) == {f"class{i}" for i in range(4)}
    for f in ("report.md", "report.json", "miou.png", "class_delta.png"):
        assert os.path.getsize(os.path.join(out, f)) > 0
    md = open(os.path.join(out, "report.md")).read()
    assert "## Table 1" in md and "| CDCL | specific |" in md and "Negative transfer" in md
    json.loads(open(os.path.join(out, "report.json")).read())  # strict JSON (no NaN)
    # --report-only rebuilds the same numbers from the runs
    os.remove(os.path.join(out, "report.md"))
    assert main(["study", "--report-only", out]) == 0
    assert os.path.isfile(os.path.join(out, "report.md"))

    # --jobs 2 gives the numbers --jobs 1 gave (seed 0 above ran one at a time)
    out2 = str(tmp_path / "out2")
    assert main(["study", path, "--out", out2, "--seeds", "0", "--jobs", "2"]) == 0
    for m in ("single", "joint"):
        assert _mious(out2, m, 0) == _mious(out, m, 0)


def test_a_run_of_another_config_is_refused(tmp_path):
    path = write_toy_study(tmp_path)
    out = str(tmp_path / "out")
    study = load_study(path, seeds=[0])
    runs, _ = plan(study, out)
    os.makedirs(runs[0].run_dir)
    with open(os.path.join(runs[0].run_dir, "config.yaml"), "w") as f:
        f.write(open(runs[0].config_path).read().replace("lr: 0.05", "lr: 0.07"))
    with pytest.raises(ConfigError, match=r"holds a run of another config \(train.lr: 0.07 in the run, 0.05 now"):
        plan(study, out)


@pytest.mark.parametrize("name", ["lidar_synth", "lidar", "images_synth_cityscapes_bdd100k",
                                  "images_cityscapes_bdd100k", "images_synth_all", "images_all",
                                  "demo_lidar", "demo_images", "lidar3_synth"])
def test_shipped_studies_resolve_with_equal_samples(tmp_path, name):
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "studies",
                        name + ".yaml")
    study = load_study(path, seeds=[0])
    runs, meta = plan(study, str(tmp_path))  # refuses unequal samples
    assert not meta["fairness"]["unequal"] and len(runs) == len(study.methods)
    for d in study.datasets:  # every reported dataset has its baseline
        assert any(m["label"] == study.baseline and d in m["evaluates"] for m in meta["methods"].values())


def test_the_real_data_twin_measures_the_real_semanticposs_and_no_generated_domain():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    real = load_study(os.path.join(root, "configs", "studies", "lidar.yaml")).unseen
    synth = load_study(os.path.join(root, "configs", "studies", "lidar_synth.yaml")).unseen
    assert list(real.domains) == ["semanticposs"]  # null dropped the generated corrupted copies
    poss = real.domains["semanticposs"].base
    assert poss["root"] == "/data/semanticposs/dataset" and poss["sensor"]["width"] == 1800
    assert poss["label_map_from"] == synth.domains["semanticposs"].base["label_map_from"]
    assert synth.domains["semanticposs"].base["root"] == "data/synth/lidar/semanticposs"


# -- the unseen: section (the paper's Table 7) ---------------------------------------------

UNSEEN = ("unseen:\n  methods: [single, joint]\n  tent_steps: 2\n  scans: 2\n"
          "  domains:\n    c: {like: a, style: 0.6}\n")


def _mtimes(out, pattern):
    import glob
    return {p: os.path.getmtime(p) for p in glob.glob(os.path.join(out, pattern))}


def test_adding_the_unseen_section_to_a_finished_study_retrains_nothing(tmp_path, capsys):
    path = write_toy_study(tmp_path)
    out = str(tmp_path / "out")
    assert main(["study", path, "--out", out, "--seeds", "0"]) == 0
    trained = _mtimes(out, "runs/*/seed0/checkpoints/*.pth")
    trained.update(_mtimes(out, "runs/*/seed0/results.json"))
    assert len(trained) >= 4
    # a key added to cdcl after the run (here: one the run's saved config lacks) at its default: still done
    saved = os.path.join(out, "runs", "joint", "seed0", "config.yaml")
    text = open(saved).read()
    assert "  sync_bn: false\n" in text
    with open(saved, "w") as f:
        f.write(text.replace("  sync_bn: false\n", ""))
    with open(path, "a") as f:
        f.write(UNSEEN)
    capsys.readouterr()
    assert main(["study", path, "--out", out, "--seeds", "0"]) == 0
    said = capsys.readouterr().out
    assert "single/seed0: finished earlier, skipped" in said and "joint/seed0: finished earlier, skipped" in said
    assert "training (" not in said and "single/seed0 on c: measuring" in said
    assert {p: os.path.getmtime(p) for p in trained} == trained  # nothing retrained
    with open(os.path.join(out, "runs", "joint", "seed0", "unseen", "c.json")) as f:
        res = json.load(f)
    assert res["candidates"] == ["a"] and "b" in res["other_branches"]  # b's head has 3 classes, c 4
    assert set(res["adapted"]) == {"none", "precise-bn", "tent"}
    assert res["adapted"]["tent"]["steps"] == 2 and res["adapted"]["precise-bn"]["batches"] == 1
    assert res["adapted"]["none"]["miou"] == res["direct"][res["pick"]["bn_distance"]]["miou"]
    # the resolved training configs are the ones the study resolves without the section
    study = load_study(path, seeds=[0])
    os.makedirs(tmp_path / "plain")
    plain = load_study(write_toy_study(tmp_path / "plain"), seeds=[0])
    for m in ("single", "joint"):
        assert resolve_run(study, study.methods[m], 0).to_dict() == resolve_run(plain, plain.methods[m], 0).to_dict()
    md = open(os.path.join(out, "report.md")).read()
    assert "## Table 7: unseen domains" in md and "| CDCL |" in md and "c precise BN" in md


@pytest.mark.parametrize("section, words", [
    ("unseen:\n  domains:\n    c: {like: a, styel: 0.6}\n", ["study.yaml", "unseen.domains.c", "styel"]),
    ("unseen:\n  adapt: [none, bn-adapt]\n  domains:\n    c: {like: a}\n", ["study.yaml", "unseen.adapt", "bn-adapt"]),
    ("unseen:\n  domain:\n    c: {like: a}\n", ["study.yaml", "unknown key 'unseen.domain'"]),
    ("unseen:\n  domains:\n    c: {like: b}\n", ["study.yaml", "unseen.domains.c, method single", "like: b"]),
    ("unseen:\n  domains:\n    c: {like: zz}\n", ["study.yaml", "like: zz", "not a trained dataset"]),
    ("unseen:\n  methods: [nope]\n  domains:\n    c: {like: a}\n", ["study.yaml", "unseen.methods", "nope"]),
    ("unseen:\n  tent_steps: 0\n  domains:\n    c: {like: a}\n", ["study.yaml", "unseen.tent_steps"]),
    ("unseen:\n  domains:\n    c: {config: nope.yaml}\n", ["study.yaml", "nope.yaml", "not found"]),
])
def test_bad_unseen_section_is_one_line_naming_the_study_file(tmp_path, capsys, section, words):
    path = write_toy_study(tmp_path, extra=section)
    with pytest.raises(ConfigError) as err:
        plan(load_study(path), str(tmp_path / "out"))
    for w in words:
        assert w in str(err.value), str(err.value)
    assert main(["study", path, "--out", str(tmp_path / "out")]) == 2
    line = capsys.readouterr().err.strip()
    assert line.count("\n") == 0 and "study.yaml" in line
    assert not os.path.isdir(os.path.join(tmp_path, "out", "runs", "single", "seed0", "checkpoints"))


def test_unseen_lidar_study_measures_skips_and_reports(tmp_path, capsys):
    """Two LiDAR methods x 2 seeds on tiny generated data, the generated
    SemanticPOSS unseen (read through the shipped label_map_from): measured,
    skipped the second time, reported; a cell is what cdcl adapt + cdcl eval give."""
    import yaml

    from cdcl3d.synth import generate_lidar

    root = tmp_path / "data"
    generate_lidar(str(root), seed=0, scans=6, points_scale=0.2, datasets=("semantickitti", "nuscenes", "semanticposs"))
    sensor = {"height": 16, "width": 64}
    base = {"task": "3d", "model": {"name": "salsanext", "width": 0.125, "dropout": 0.0},
            "data": {"semantickitti": {"type": "semantickitti", "root": str(root / "semantickitti"), "batch_size": 2,
                                       "sensor": dict(sensor, fov_up=3.0, fov_down=-25.0)}},
            "strategy": {"name": "single"},
            "train": {"iterations": 2, "lr": 0.01, "progress": False, "checkpoint_every": 100, "log_every": 1,
                      "tb_images": False},
            "eval": {"max_samples": 2, "options": {"knn": False}}}
    (tmp_path / "single.yaml").write_text(yaml.safe_dump(base))
    joint = {"_base_": "single.yaml", "strategy": {"name": "cdcl"},
             "data": {"nuscenes": {"type": "nuscenes", "root": str(root / "nuscenes"), "version": "v1.0-mini",
                                   "batch_size": 2, "sensor": dict(sensor, height=32, use_ring=True)}}}
    (tmp_path / "joint.yaml").write_text(yaml.safe_dump(joint))
    maps = load_yaml(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  "configs", "3d", "synth_unseen_semanticposs.yaml"))  # _base_ merged
    poss = {"type": "semanticposs", "root": str(root / "semanticposs"), "batch_size": 2,
            "sensor": {"preset": "pandora", "width": 64},
            "label_map_from": maps["data"]["semanticposs"]["label_map_from"]}
    study = {"title": "lidar", "seeds": [0, 1], "datasets": ["semantickitti"], "baseline": "single",
             "methods": {"single": {"config": "single.yaml"}, "cdcl": {"config": "joint.yaml", "label": "CDCL"}},
             "unseen": {"methods": ["single", "cdcl"], "tent_steps": 2, "scans": 2, "domains": {"poss": poss}}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    out = str(tmp_path / "out")
    assert main(["study", str(path), "--out", out, "--jobs", "2"]) == 0
    measured = _mtimes(out, "runs/*/seed*/unseen/poss.json")
    assert len(measured) == 4
    capsys.readouterr()
    assert main(["study", str(path), "--out", out, "--jobs", "2"]) == 0
    said = capsys.readouterr().out
    assert "cdcl/seed1 on poss: finished earlier, skipped" in said and "measuring" not in said
    assert {p: os.path.getmtime(p) for p in measured} == measured

    report = json.load(open(os.path.join(out, "report.json")))["unseen"]
    assert report["missing"] == []
    for a in ("none", "precise-bn", "tent"):
        assert report["table"]["poss"][a]["cdcl"]["n"] == 2
    assert report["vs_baseline"]["poss"]["tent"]["cdcl"]["n"] == 2
    choice = report["choice"]["poss"]
    assert choice["single"]["candidates"] == ["semantickitti"]
    assert choice["cdcl"]["candidates"] == ["semantickitti", "nuscenes"] and choice["cdcl"]["n"] == 2
    with open(os.path.join(out, "runs", "cdcl", "seed0", "unseen", "poss.json")) as f:
        res = json.load(f)
    assert res["classes"] == 13 and res["label_maps"] == ["nuscenes", "semantickitti"]
    for b in ("semantickitti", "nuscenes"):  # scored over the classes each map reaches
        assert len(res["direct"][b]["scored_classes"]) < 13
    md = open(os.path.join(out, "report.md")).read()
    assert "## Table 7" in md and "poss TENT" in md and "auto = best" in md
    os.remove(os.path.join(out, "report.md"))
    assert main(["study", "--report-only", out]) == 0
    assert "## Table 7" in open(os.path.join(out, "report.md")).read()

    # the precise-BN cell is cdcl adapt --method precise-bn, then cdcl eval, on the same config and scans
    cfg = os.path.join(out, "runs", "cdcl", "seed0", "unseen", "poss.yaml")
    ckpt = os.path.join(out, "runs", "cdcl", "seed0", "checkpoints", "latest.pth")
    assert main(["adapt", cfg, "--checkpoint", ckpt, "--dataset", "poss", "--batches", "1",
                 "--out", str(tmp_path / "poss.pth")]) == 0
    assert main(["eval", cfg, "--checkpoint", str(tmp_path / "poss.pth"), "--dataset", "poss",
                 "--out", str(tmp_path / "poss_eval.json")]) == 0
    assert json.load(open(tmp_path / "poss_eval.json"))["poss"]["miou"] == pytest.approx(
        res["adapted"]["precise-bn"]["miou"], abs=1e-6)
