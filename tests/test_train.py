"""Training: exact resume after SIGKILL, refusal of mismatched resumes, NaN handling, atomic files."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from difflab.data import DataConfig
from difflab.train import TrainConfig, TrainingError, preset_config, train
from difflab.train.checkpoint import CheckpointError, atomic_write, list_checkpoints

TINY = dict(
    data=DataConfig(source="mnist", limit=64),
    net_kind="myunet",
    T=50,
    batch_size=8,
    checkpoint_every=4,
    sample_every=1000,
    sample_n=4,
    sample_steps=5,
    log_every=2,
)


def cli(*args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "difflab.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


TRAIN_ARGS = [
    "train",
    "--data",
    "mnist",
    "--limit",
    "64",
    "--net",
    "myunet",
    "--T",
    "50",
    "--batch-size",
    "8",
    "--checkpoint-every",
    "4",
    "--sample-every",
    "1000",
    "--no-progress",
]


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    steps = "40"
    ref = cli(*TRAIN_ARGS, "--steps", steps, "--out", str(tmp_path / "ref"))
    killed = cli(*TRAIN_ARGS, "--steps", steps, "--out", str(tmp_path / "run"))
    ckpts = tmp_path / "run" / "checkpoints"
    deadline = time.time() + 120
    while not list_checkpoints(ckpts) and time.time() < deadline and killed.poll() is None:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = [s for s, _ in list_checkpoints(ckpts)]
    assert done and max(done) < 40
    assert ref.wait() == 0, ref.stderr.read()
    resumed = cli(*TRAIN_ARGS, "--steps", steps, "--out", str(tmp_path / "run"), "--resume")
    assert resumed.wait() == 0, resumed.stderr.read()
    a = load_file(tmp_path / "ref" / "model.safetensors")
    b = load_file(tmp_path / "run" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ca = torch.load(ckpts.parent.parent / "ref" / "checkpoints" / "step_0000040.pt", weights_only=True)
    cb = torch.load(ckpts / "step_0000040.pt", weights_only=True)
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k


def test_resume_with_another_config_is_refused(tmp_path):
    train(TrainConfig(**TINY, steps=4), tmp_path / "r", progress=False, log=lambda s: None)
    with pytest.raises(TrainingError, match="different lr"):
        train(
            TrainConfig(**TINY, steps=8, lr=1e-4),
            tmp_path / "r",
            resume=True,
            progress=False,
            log=lambda s: None,
        )
    with pytest.raises(TrainingError, match="--resume"):
        train(TrainConfig(**TINY, steps=4), tmp_path / "r", progress=False, log=lambda s: None)
    # longer training is allowed
    res = train(TrainConfig(**TINY, steps=8), tmp_path / "r", resume=True, progress=False, log=lambda s: None)
    assert res.steps == 8


def test_nan_loss_stops_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    import difflab.train.loop as loop

    real = loop.diffusion_loss
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        return out * float("nan") if calls["n"] == 6 else out

    monkeypatch.setattr(loop, "diffusion_loss", flaky)
    with pytest.raises(TrainingError, match="loss became nan at step 6.*step_0000004"):
        train(TrainConfig(**TINY, steps=10), tmp_path / "r", progress=False, log=lambda s: None)
    assert [s for s, _ in list_checkpoints(tmp_path / "r" / "checkpoints")] == [4]
    state = torch.load(tmp_path / "r" / "checkpoints" / "step_0000004.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")

    def fail(tmp: Path):
        tmp.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(CheckpointError, match="No space left on device.*untouched"):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


def test_run_folder_is_self_describing(tmp_path):
    res = train(TrainConfig(**TINY, steps=4), tmp_path / "r", progress=False, log=lambda s: None)
    run = res.out
    cfg = TrainConfig.from_json(run / "config.json")
    assert cfg.net is not None and cfg.net.kind == "myunet" and cfg.data.image_size == 28
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert (run / "model.safetensors").is_file() and (run / "log.jsonl").read_text().count("\n") == 2
    assert (run / "loss.png").is_file() and (run / "samples" / "step_0000004.png").is_file()


def test_presets_are_the_notes_recipes():
    p0 = preset_config("seed000")
    assert (p0.net_kind, p0.T, p0.schedule, p0.lr, p0.optimizer) == ("myunet", 200, "linear", 1e-3, "adam")
    p3 = preset_config("seed003")
    assert (p3.net_kind, p3.schedule, p3.lr, p3.optimizer) == ("diffusers-unet", "cosine", 4e-4, "adamw")
    p4 = preset_config("seed004")
    assert (p4.net_kind, p4.T, p4.loss) == ("simple-unet", 300, "l1")
    for p in (p0, p3, p4):  # the notes all train the eps target with an unweighted loss
        assert (p.prediction, p.weighting, p.ema_decay) == ("eps", "none", 0.0)
    with pytest.raises(ValueError, match="seed000"):
        preset_config("seed001")
