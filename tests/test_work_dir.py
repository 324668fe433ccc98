"""Nothing written is lost, and a work dir problem is one line before any work.

`cdcl train` on the toy task through the CLI: the final checkpoint comes before
the final evaluation, a work dir is locked by its run, a full disk leaves no
temp file behind, log records carry their attempt, a finished run without
results is finished on resume, and a checkpoint that does not fit the config
is named before anything is overwritten.
"""
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import yaml

import common.utils
from common.checkpoint import load_checkpoint, save_checkpoint
from common.cli import main
from common.errors import DataError
from common.registry import TASKS
from common.toy import ToyTask

# -- a toy task whose validation split holds an unreadable sample ----------------

BAD_VAL = {"on": True}  # switched off to "fix the file" before resuming


class _BadVal(torch.utils.data.Dataset):
    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getattr__(self, name):
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def __getitem__(self, i):
        if BAD_VAL["on"] and i == 1:
            raise DataError(f"val/{self.base.name}/000001.bin: NaN coordinates")
        return self.base[i]


class BadValToy(ToyTask):
    name = "toy_badval"

    def build_dataset(self, name, cfg, split, train):
        ds = super().build_dataset(name, cfg, split, train)
        return ds if train else _BadVal(ds)


if "toy_badval" not in TASKS._items:
    TASKS.register("toy_badval", BadValToy())


def cfg_dict(task="toy", **train):
    return {"task": task, "model": {"name": "toynet", "width": 8, "dropout": 0.2},
            "data": {"a": {"type": "toy", "batch_size": 2, "size": 6, "height": 16, "width": 16},
                     "b": {"type": "toy", "batch_size": 3, "size": 5, "height": 16, "width": 16,
                           "style": 1.0, "num_classes": 3}},
            "strategy": {"name": "cdcl"},
            "train": dict({"iterations": 6, "lr": 0.05, "checkpoint_every": 3, "eval_every": 0,
                           "progress": False, "log_every": 1, "tb_images": False}, **train)}


def write_cfg(tmp_path, d=None, name="toy.yaml", **train):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(d or cfg_dict(**train), sort_keys=False))
    return str(path)


def cli(capsys, *argv):
    """``cdcl`` in this process: (exit code, stdout + stderr)."""
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


def records(work):
    return [json.loads(line) for line in open(os.path.join(work, "log.jsonl"))]


def snapshot(folder):
    """{relative path: bytes} of every file under ``folder``."""
    files = {}
    for root, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(root, n)
            with open(p, "rb") as f:
                files[os.path.relpath(p, folder)] = f.read()
    return files


# -- the final checkpoint comes before the final evaluation ---------------------

def test_failing_final_evaluation_keeps_the_weights_and_resume_only_evaluates(tmp_path, capsys, caplog):
    BAD_VAL["on"] = True
    cfg, work = write_cfg(tmp_path, cfg_dict("toy_badval", checkpoint_every=100)), str(tmp_path / "run")
    code, out = cli(capsys, "train", cfg, "--work-dir", work)
    assert code == 2 and "000001.bin: NaN coordinates" in out and "Traceback" not in out
    assert "the weights of step 6 are saved in " + os.path.join(work, "checkpoints", "latest.pth") in caplog.text
    state = load_checkpoint(os.path.join(work, "checkpoints", "latest.pth"))
    assert state["step"] == 6  # the whole run is saved although its evaluation failed
    failed = [r for r in records(work) if r["type"] == "eval_failed"]
    assert failed and failed[0]["step"] == 6 and "NaN coordinates" in failed[0]["error"]
    assert not os.path.exists(os.path.join(work, "results.json"))

    BAD_VAL["on"] = False  # the file is fixed: resuming only evaluates
    try:
        code, out = cli(capsys, "train", cfg, "--work-dir", work, "--resume", "auto")
    finally:
        BAD_VAL["on"] = True
    assert code == 0, out
    results = json.load(open(os.path.join(work, "results.json")))
    assert set(results) == {"a", "b"}
    again = load_checkpoint(os.path.join(work, "checkpoints", "latest.pth"))
    assert again["step"] == 6
    for k, v in state["model"].items():
        assert torch.equal(v, again["model"][k]), k
    trained = [r["step"] for r in records(work) if r["type"] == "train"]
    assert trained == [1, 2, 3, 4, 5, 6]  # no step ran twice


def test_killed_before_results_resume_finishes_the_evaluation(tmp_path, capsys):
    cfg, work = write_cfg(tmp_path), str(tmp_path / "run")
    assert cli(capsys, "train", cfg, "--work-dir", work)[0] == 0
    results = json.load(open(os.path.join(work, "results.json")))
    os.remove(os.path.join(work, "results.json"))  # killed after the final checkpoint
    code, out = cli(capsys, "train", cfg, "--work-dir", work, "--resume", "auto")
    assert code == 0, out
    assert json.load(open(os.path.join(work, "results.json"))) == results
    evals = [r for r in records(work) if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [6, 6] and evals[0]["attempt"] != evals[1]["attempt"]
    # a finished run with its results: resuming again changes nothing
    before = snapshot(work)
    assert cli(capsys, "train", cfg, "--work-dir", work, "--resume", "auto")[0] == 0
    after = snapshot(work)
    assert {k: v for k, v in after.items() if k != "log.jsonl" and not k.startswith("tb")} == \
        {k: v for k, v in before.items() if k != "log.jsonl" and not k.startswith("tb")}


def test_log_records_carry_the_attempt_that_wrote_them(tmp_path, capsys):
    cfg, work = write_cfg(tmp_path), str(tmp_path / "run")
    assert cli(capsys, "train", cfg, "--work-dir", work)[0] == 0
    ck = os.path.join(work, "checkpoints", "iter_000003.pth")
    assert cli(capsys, "train", cfg, "--work-dir", work, "--resume", ck)[0] == 0
    log = records(work)
    assert all("attempt" in r for r in log)
    starts = [r for r in log if r["type"] == "start"]
    assert [(s["attempt"], s["step"], s["resumed_from"]) for s in starts] == [(1, 0, None), (2, 3, ck)]
    steps = [(r["attempt"], r["step"]) for r in log if r["type"] == "train"]
    assert steps == [(1, s) for s in range(1, 7)] + [(2, s) for s in range(4, 7)]


def test_torn_last_log_line_is_dropped_on_resume(tmp_path, capsys):
    cfg, work = write_cfg(tmp_path), str(tmp_path / "run")
    assert cli(capsys, "train", cfg, "--work-dir", work)[0] == 0
    with open(os.path.join(work, "log.jsonl"), "a") as f:
        f.write('{"step": 7, "type": "tr')  # kill -9 in the middle of a write
    assert cli(capsys, "train", cfg, "--work-dir", work, "--resume",
               os.path.join(work, "checkpoints", "iter_000003.pth"))[0] == 0
    assert max(r["attempt"] for r in records(work)) == 2  # every line parses


# -- the work dir is locked by its run ---------------------------------------------

HOLDER = """
import sys
from common.cli import main
sys.exit(main(["train", sys.argv[1], "--work-dir", sys.argv[2], "train.iterations=1000000",
               "train.checkpoint_every=5", "train.threads=1"]))
"""


def _wait_for(path, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)


def test_second_run_in_a_work_dir_is_refused_and_a_dead_owner_is_taken_over(tmp_path, capsys):
    cfg, work = write_cfg(tmp_path), str(tmp_path / "run")
    (tmp_path / "holder.py").write_text(HOLDER)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    owner = subprocess.Popen([sys.executable, str(tmp_path / "holder.py"), cfg, work], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(os.path.join(work, "checkpoints", "latest.pth"), owner)
        config_before = open(os.path.join(work, "config.yaml")).read()
        code, out = cli(capsys, "train", cfg, "--work-dir", work, "train.iterations=2")
        assert code == 2 and "Traceback" not in out, out
        assert "in use" in out and f"pid {owner.pid}" in out and socket.gethostname() in out
        assert owner.poll() is None  # the owner runs on, its files untouched
        assert open(os.path.join(work, "config.yaml")).read() == config_before
        assert "1000000" in config_before
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    lock = os.path.join(work, "cdcl.lock")
    assert json.load(open(lock))["pid"] == owner.pid  # the dead owner's lock stays behind
    code, out = cli(capsys, "train", cfg, "--work-dir", work, "--overwrite", "train.iterations=2")
    assert code == 0, out
    assert not os.path.exists(lock)  # taken over, then released at the end


RANK = """
import sys
from common.cli import main
sys.exit(main(["train", sys.argv[1], "--work-dir", sys.argv[2]]))
"""


def test_refused_lock_stops_every_rank(tmp_path):
    """Rank 0 refuses the work dir; rank 1 must not wait for it forever."""
    import torch.distributed as dist
    if not dist.is_available():
        pytest.skip("this torch build has no torch.distributed")
    cfg, work = write_cfg(tmp_path, threads=1), str(tmp_path / "run")
    (tmp_path / "holder.py").write_text(HOLDER)
    (tmp_path / "rank.py").write_text(RANK)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    owner = subprocess.Popen([sys.executable, str(tmp_path / "holder.py"), cfg, work], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(os.path.join(work, "checkpoints", "latest.pth"), owner)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ranks = [subprocess.Popen([sys.executable, str(tmp_path / "rank.py"), cfg, work],
                                  env=dict(env, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                                           RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2"),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for r in range(2)]
        outs = []
        for p in ranks:
            try:
                outs.append(p.communicate(timeout=120)[0])
            except subprocess.TimeoutExpired:
                for q in ranks:
                    q.kill()
                pytest.fail("a rank still waits after rank 0 refused the work dir")
        for r, (p, o) in enumerate(zip(ranks, outs)):
            assert p.returncode == 2 and "in use" in o and "Traceback" not in o, f"rank {r}:\n{o[-3000:]}"
        assert owner.poll() is None
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()


# -- a full disk -------------------------------------------------------------------

def test_full_disk_during_a_checkpoint_leaves_no_temp_file(tmp_path, capsys, monkeypatch):
    cfg, work = write_cfg(tmp_path), str(tmp_path / "run")
    real, calls = common.utils._write_all, [0]

    def disk_fills_up(f, data):
        calls[0] += ".pth.tmp." in f.name
        if calls[0] > 2:  # step 3 (latest, iter_000003) fits; step 6 does not
            f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, data)

    monkeypatch.setattr(common.utils, "_write_all", disk_fills_up)
    code, out = cli(capsys, "train", cfg, "--work-dir", work)
    assert code == 2 and "Traceback" not in out, out
    assert "no space left on " + os.path.join(work, "checkpoints") in out
    left = sorted(os.listdir(os.path.join(work, "checkpoints")))
    assert left == ["iter_000003.pth", "latest.pth"], left
    assert load_checkpoint(os.path.join(work, "checkpoints", "latest.pth"))["step"] == 3
    monkeypatch.setattr(common.utils, "_write_all", real)  # space freed
    code, out = cli(capsys, "train", cfg, "--work-dir", work, "--resume", "auto")
    assert code == 0, out
    assert load_checkpoint(os.path.join(work, "checkpoints", "latest.pth"))["step"] == 6


def test_stale_temp_files_are_removed_at_start(tmp_path, capsys):
    cfg, work = write_cfg(tmp_path, iterations=3), str(tmp_path / "run")
    os.makedirs(os.path.join(work, "checkpoints"))
    stale = [os.path.join(work, "checkpoints", "latest.pth.tmp.999999"),
             os.path.join(work, "results.json.tmp.424242")]
    for p in stale:
        with open(p, "wb") as f:
            f.write(b"\0" * 1000)
    stale.append(os.path.join(work, ".cdcl-write-test-abc123"))
    open(stale[-1], "w").close()
    keep = os.path.join(work, "checkpoints", "notes.tmp.txt")
    open(keep, "w").write("mine")
    assert cli(capsys, "train", cfg, "--work-dir", work)[0] == 0
    assert not any(os.path.exists(p) for p in stale) and os.path.exists(keep)


# -- paths, checked before any work ------------------------------------------------

def _no_work_done(work):
    return not os.path.exists(os.path.join(work, "log.jsonl")) and \
        not os.path.exists(os.path.join(work, "tb"))


def test_work_dir_that_is_a_file(tmp_path, capsys):
    cfg, work = write_cfg(tmp_path), tmp_path / "run"
    work.write_text("not a folder")
    code, out = cli(capsys, "train", cfg, "--work-dir", str(work))
    assert code == 2 and "Traceback" not in out and str(work) in out and "not a folder" in out
    assert work.read_text() == "not a folder"


def test_unwritable_work_dir(tmp_path, capsys, monkeypatch):
    cfg, work = write_cfg(tmp_path), tmp_path / "run"
    work.mkdir()
    work.chmod(0o555)
    if os.geteuid() == 0:  # root writes anyway: make the folder refuse as a read-only one would
        import tempfile
        real = tempfile.mkstemp

        def read_only(*args, **kwargs):
            if os.path.abspath(kwargs.get("dir", "")).startswith(str(work)):
                raise PermissionError(errno.EACCES, "Permission denied", kwargs["dir"])
            return real(*args, **kwargs)
        monkeypatch.setattr(tempfile, "mkstemp", read_only)
    try:
        code, out = cli(capsys, "train", cfg, "--work-dir", str(work))
    finally:
        work.chmod(0o755)
    assert code == 2 and "Traceback" not in out, out
    assert "cannot write" in out and str(work) in out and "Permission denied" in out
    assert _no_work_done(str(work))


@pytest.mark.parametrize("resume", [None, "auto"])
def test_latest_checkpoint_that_is_a_folder(tmp_path, capsys, resume):
    cfg, work = write_cfg(tmp_path), tmp_path / "run"
    (work / "checkpoints" / "latest.pth").mkdir(parents=True)
    code, out = cli(capsys, "train", cfg, "--work-dir", str(work), *(["--resume", resume] if resume else []))
    assert code == 2 and "Traceback" not in out, out
    assert os.path.join(str(work), "checkpoints", "latest.pth") in out and "folder" in out
    assert _no_work_done(str(work))


# -- a checkpoint that does not fit the config -------------------------------------

@pytest.mark.parametrize("change,named", [
    ({"data.b.num_classes": 5}, ["head sizes", "b: 3 → 5"]),
    ({"data.c": "b", "del": "b"}, ["datasets", "'b'", "'c'"]),
    ({"model.width": 16}, ["model.width", "8", "16", "shape"]),
])
def test_resume_from_another_config_names_what_differs(tmp_path, capsys, change, named):
    cfg, work = write_cfg(tmp_path, iterations=3), str(tmp_path / "run")
    assert cli(capsys, "train", cfg, "--work-dir", work)[0] == 0
    d = cfg_dict(iterations=6)
    for key, value in change.items():
        if key == "data.b.num_classes":
            d["data"]["b"]["num_classes"] = value
        elif key == "data.c":
            d["data"]["c"] = d["data"][value]
        elif key == "del":
            del d["data"][value]
        elif key == "model.width":
            d["model"]["width"] = value
    other = write_cfg(tmp_path, d, name="other.yaml")
    before = snapshot(work)
    code, out = cli(capsys, "train", other, "--work-dir", work, "--resume", "auto")
    assert code == 2 and "Traceback" not in out, out
    line = [l for l in out.splitlines() if "error:" in l]
    assert len(line) == 1 and "latest.pth" in line[0]
    for word in named:
        assert word in line[0], (word, line[0])
    assert snapshot(work) == before  # nothing written, nothing lost


def test_resume_from_a_checkpoint_without_optimizer_state(tmp_path, capsys):
    cfg, work = write_cfg(tmp_path, iterations=3), str(tmp_path / "run")
    assert cli(capsys, "train", cfg, "--work-dir", work)[0] == 0
    state = load_checkpoint(os.path.join(work, "checkpoints", "latest.pth"))
    del state["optimizer"]
    weights = str(tmp_path / "weights_only.pth")
    save_checkpoint(state, weights)
    before = snapshot(work)
    code, out = cli(capsys, "train", cfg, "--work-dir", work, "--resume", weights)
    assert code == 2 and "Traceback" not in out, out
    assert "weights_only.pth" in out and "no optimizer state" in out
    assert snapshot(work) == before


def test_fp16_resume_without_scaler_state_starts_a_fresh_scaler(caplog):
    from common.trainer import restore_scaler

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    restore_scaler(scaler, {"scaler": {}}, "x.pth")  # written by a run without amp: fp16
    assert scaler.get_scale() == 2.0 ** 10 and "no fp16 gradient-scaler state" in caplog.text
    saved = torch.amp.GradScaler("cpu", init_scale=8.0).state_dict()
    restore_scaler(scaler, {"scaler": saved}, "x.pth")
    assert scaler.get_scale() == 8.0


def test_fp16_on_the_cpu_is_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("fp16 is valid here")
    cfg, work = write_cfg(tmp_path, amp="fp16", device="cpu"), str(tmp_path / "run")
    code, out = cli(capsys, "train", cfg, "--work-dir", work)
    assert code == 2 and "needs a CUDA device" in out and "Traceback" not in out
    assert not os.path.exists(work)


KILLED = """
import sys
from common.cli import main
sys.exit(main(["train", sys.argv[1], "--work-dir", sys.argv[2]]))
"""


def test_kill_9_then_resume_auto_takes_the_lock_over_and_matches_an_uninterrupted_run(tmp_path, capsys):
    cfg = write_cfg(tmp_path, iterations=8, checkpoint_every=2, threads=1)
    assert cli(capsys, "train", cfg, "--work-dir", str(tmp_path / "full"))[0] == 0
    work = str(tmp_path / "killed")
    (tmp_path / "killed.py").write_text(KILLED)
    run = subprocess.Popen([sys.executable, str(tmp_path / "killed.py"), cfg, work],
                           env=dict(os.environ, OMP_NUM_THREADS="1"),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(os.path.join(work, "checkpoints", "latest.pth"), run)
    run.send_signal(signal.SIGKILL)
    run.wait()
    code, out = cli(capsys, "train", cfg, "--work-dir", work, "--resume", "auto")
    assert code == 0, out
    a = load_checkpoint(str(tmp_path / "full/checkpoints/latest.pth"))
    b = load_checkpoint(os.path.join(work, "checkpoints", "latest.pth"))
    assert a["step"] == b["step"] == 8
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert json.load(open(os.path.join(work, "results.json"))) == \
        json.load(open(tmp_path / "full/results.json"))
    assert not os.path.exists(os.path.join(work, "cdcl.lock"))
    assert not [f for f in os.listdir(os.path.join(work, "checkpoints")) if ".tmp." in f]
