"""Training: exact resume after SIGKILL (MyUNet) and after a crash (the default UNet with attention,
flips, class labels and dropout), refusal of mismatched resumes, NaN handling, atomic files,
runs counted in epochs and the best epoch's weights."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from difflab.data import DataConfig
from difflab.io import CheckpointError, atomic_write
from difflab.nets import UNetConfig
from difflab.train import TrainConfig, TrainingError, train
from difflab.train.checkpoint import list_checkpoints
from difflab.train.loop import steps_for_epochs

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


# The default network kind, small: attention at 4x4 and in the middle, dropout, 10 classes + null.
TINY_UNET = UNetConfig(
    in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, groups=4, num_heads=2,
    attention_resolutions=(4,), dropout=0.3, num_classes=10, image_size=8,
)
# 24 labelled 8x8 digits in batches of 8: an epoch is 3 steps.
UNET_RUN = dict(
    data=DataConfig(source="digits", limit=24, flip=True),
    net_kind="unet",
    net=TINY_UNET,
    cond="class",
    cond_drop=0.5,
    T=50,
    batch_size=8,
    warmup_steps=2,
    checkpoint_every=4,
    sample_every=3,
    sample_n=2,
    sample_steps=2,
    log_every=1,
    keep_best=True,
)


class Crash(Exception):
    """Stands for a kill between two checkpoints."""


def crash_at(step: int):
    def on_step(done: int, seconds: float, ema_model: torch.nn.Module) -> None:
        torch.rand(1)  # a callback that uses torch's global RNG must not shift the training draws
        if done == step:
            raise Crash

    return on_step


def epoch_records(run: Path) -> dict[int, dict]:
    """The last record written for each finished epoch (a resumed run rewrites replayed ones)."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return {r["epoch"]: r for r in records if "epoch_loss" in r}


def test_crash_then_resume_is_bit_identical_with_dropout_flips_labels_and_best(tmp_path):
    quiet = dict(progress=False, log=lambda s: None)
    cfg = TrainConfig(**UNET_RUN, steps=9)
    train(cfg, tmp_path / "ref", on_step=crash_at(-1), **quiet)
    with pytest.raises(Crash):  # mid epoch 2, one step after the checkpoint at step 4
        train(cfg, tmp_path / "run", on_step=crash_at(5), **quiet)
    assert [s for s, _ in list_checkpoints(tmp_path / "run" / "checkpoints")] == [4]
    said: list[str] = []
    train(cfg, tmp_path / "run", resume=True, on_step=crash_at(-1), progress=False, log=said.append)
    assert "resuming" in " ".join(said) and "predates" not in " ".join(said)
    for name in ("model.safetensors", "best.safetensors"):
        a, b = load_file(tmp_path / "ref" / name), load_file(tmp_path / "run" / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    ca = torch.load(tmp_path / "ref" / "checkpoints" / "step_0000009.pt", weights_only=True)
    cb = torch.load(tmp_path / "run" / "checkpoints" / "step_0000009.pt", weights_only=True)
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    assert ca["epoch_losses"] == cb["epoch_losses"]
    assert epoch_records(tmp_path / "ref") == epoch_records(tmp_path / "run")
    assert sorted(epoch_records(tmp_path / "ref")) == [1, 2, 3]


@pytest.mark.parametrize(
    ("epochs", "n", "batch_size", "steps"),
    [(1, 64, 8, 8), (1.5, 40, 8, 8), (2, 10, 3, 7), (1.1, 50, 5, 11), (0.01, 10, 8, 1)],
)
def test_steps_for_epochs(epochs, n, batch_size, steps):
    assert steps_for_epochs(epochs, n, batch_size) == steps


def test_epochs_resolve_to_steps_in_the_saved_config(tmp_path):
    said: list[str] = []
    # 1.5 epochs of 40 images in batches of 8 = 7.5 steps -> 8; `steps` is overridden
    cfg = TrainConfig(**{**TINY, "data": DataConfig(source="mnist", limit=40)}, steps=3, epochs=1.5)
    res = train(cfg, tmp_path / "r", progress=False, log=said.append)
    assert res.steps == 8
    saved = TrainConfig.from_json(tmp_path / "r" / "config.json")
    assert (saved.steps, saved.epochs) == (8, 1.5)
    assert "1.5 epochs = 8 steps" in "\n".join(said)
    assert sorted(epoch_records(tmp_path / "r")) == [1]  # the half epoch at the end is not one
    res = train(saved, tmp_path / "r", resume=True, progress=False, log=said.append)
    assert res.steps == 8


def test_keep_best_writes_the_ema_weights_of_the_epoch_with_the_lowest_mean_loss(tmp_path, monkeypatch):
    import difflab.train.loop as loop

    real = loop.diffusion_loss
    calls = {"n": 0}

    def low_in_epoch_two(*a, **k):  # epochs are 2 steps; steps 3-4 get a tiny loss
        calls["n"] += 1
        return real(*a, **k) * (0.01 if calls["n"] in (3, 4) else 1.0)

    monkeypatch.setattr(loop, "diffusion_loss", low_in_epoch_two)
    ema_at: dict[int, dict[str, torch.Tensor]] = {}

    def snapshot(step, seconds, ema_model):
        ema_at[step] = {k: v.clone() for k, v in ema_model.state_dict().items()}

    said: list[str] = []
    data = DataConfig(source="mnist", limit=16)
    cfg = TrainConfig(**{**TINY, "data": data, "log_every": 1}, steps=8, keep_best=True)
    train(cfg, tmp_path / "r", progress=False, log=said.append, on_step=snapshot)
    records = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    step_loss = {r["step"]: r["loss"] for r in records if "loss" in r}
    epochs = epoch_records(tmp_path / "r")
    assert sorted(epochs) == [1, 2, 3, 4]
    for e, r in epochs.items():
        assert r["step"] == 2 * e
        assert r["epoch_loss"] == pytest.approx((step_loss[2 * e - 1] + step_loss[2 * e]) / 2, rel=1e-6)
    assert [e for e, r in epochs.items() if r.get("best")] == [1, 2]
    with safe_open(tmp_path / "r" / "best.safetensors", "pt") as f:
        meta = f.metadata()
        best = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no mapping)
    assert (meta["epoch"], meta["step"]) == ("2", "4")
    assert float(meta["loss"]) == epochs[2]["epoch_loss"]
    assert any("epoch 2" in s and "best.safetensors" in s for s in said)
    final = load_file(tmp_path / "r" / "model.safetensors")
    assert all(torch.equal(best[k], ema_at[4][k]) for k in best)
    assert all(torch.equal(final[k], ema_at[8][k]) for k in final)
    assert not all(torch.equal(best[k], final[k]) for k in best)


def test_no_best_weights_without_keep_best(tmp_path):
    cfg = TrainConfig(**{**TINY, "data": DataConfig(source="mnist", limit=16)}, steps=4)
    train(cfg, tmp_path / "r", progress=False, log=lambda s: None)
    assert not (tmp_path / "r" / "best.safetensors").exists()
    assert sorted(epoch_records(tmp_path / "r")) == [1, 2]
