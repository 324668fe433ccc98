"""Every shipped experiment file loads and validates; the paper's settings are what the docs say."""
import glob
import os

import pytest

from common.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# experiment configs only: configs/studies/ holds study files (tests/test_study.py)
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
                 if "_base_" not in p and os.sep + "studies" + os.sep not in p)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_loads(path):
    cfg = load_config(path)
    assert cfg.names and cfg.train.iterations >= 1


def test_lidar_configs_differ_from_generated_ones_in_roots_and_schedule():
    real = load_config(os.path.join(ROOT, "configs/3d/cdcl_salsanext_semantickitti_nuscenes.yaml"))
    synth = load_config(os.path.join(ROOT, "configs/3d/synth_cdcl.yaml"))
    assert real.names == synth.names == ["semantickitti", "nuscenes"]
    assert real.strategy.name == synth.strategy.name == "cdcl" and real.train.mode == synth.train.mode == "dat"
    assert real.model["width"] == 1.0 and real.data["semantickitti"].params["sensor"]["width"] == 2048
    assert synth.data["semantickitti"].root == "data/synth/lidar/semantickitti"
    assert synth.data["nuscenes"].root == "data/synth/lidar/nuscenes"
    for name in ("sequential", "shared_bn", "conv_not_shared", "finetune"):
        ab = load_config(os.path.join(ROOT, f"configs/3d/ablation_{name}.yaml"))
        assert (ab.train.mode if name == "sequential" else ab.strategy.name) == name
