"""The command line and the pipeline: outputs, determinism, one-line errors."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.data import DataConfig
from difflab.pipeline import load
from difflab.train import TrainConfig, train


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "difflab.cli", *map(str, args)], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = TrainConfig(
        data=DataConfig(source="mnist", limit=64),
        net_kind="myunet",
        T=50,
        batch_size=8,
        steps=6,
        checkpoint_every=6,
        sample_every=6,
        sample_n=4,
        sample_steps=5,
    )
    train(cfg, out, progress=False, log=lambda s: None)
    return out


def test_pipeline_same_seed_same_images_at_any_batch_size(run_dir):
    pipe = load(run_dir, "cpu")
    a = pipe.sample(6, sampler="ddim", steps=5, seed=3, batch_size=6)
    b = pipe.sample(6, sampler="ddim", steps=5, seed=3, batch_size=4)
    c = pipe.sample(2, sampler="ddim", steps=5, seed=5)
    assert a.shape == (6, 1, 28, 28) and a.min() >= -1 and a.max() <= 1
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(a[2:4], c, rtol=0, atol=1e-6)
    assert len(pipe.sample_pil(2, steps=5)) == 2


def test_sample_command_writes_grid_gif_progression_and_pngs(run_dir, tmp_path):
    args = [
        "sample",
        run_dir,
        "--sampler",
        "ddpm",
        "--n",
        "4",
        "--seed",
        "1",
        "--out",
        tmp_path / "g.png",
        "--gif",
        tmp_path / "d.gif",
        "--progression",
        tmp_path / "p.png",
        "--save-dir",
        tmp_path / "imgs",
    ]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "g.png").size[0] > 28
    gif = Image.open(tmp_path / "d.gif")
    assert getattr(gif, "n_frames", 1) > 5
    assert len(list((tmp_path / "imgs").glob("*.png"))) == 4
    r2 = run_cli(*args[:-8], "--out", tmp_path / "g2.png")
    assert r2.returncode == 0
    assert np.array_equal(
        np.asarray(Image.open(tmp_path / "g.png")), np.asarray(Image.open(tmp_path / "g2.png"))
    )


def test_show_commands(tmp_path):
    r = run_cli("show-forward", "--data", "mnist", "--T", "200", "--out", tmp_path / "f.png")
    assert r.returncode == 0, r.stderr
    r = run_cli("show-schedule", "--out", tmp_path / "s.png")
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "f.png").size[0] > 100 and Image.open(tmp_path / "s.png").size[0] > 100


@pytest.mark.parametrize(
    ("args", "message", "status"),  # status 2: the flags are wrong; 1: the files or data are
    [
        (["train", "--data", "imagenet", "--out", "x"], "unknown data set", 1),
        (["train", "--data", "folder:/no/such/dir", "--out", "x"], "/no/such/dir", 1),
        (["sample", "/no/such/run"], "no config.json", 1),
        (["sample", ".", "--sampler", "ddpm", "--eta", "0.5"], "--eta applies to --sampler ddim only", 2),
        (["train", "--out", "x", "--steps", "0"], "expected a positive number", 2),
    ],
)
def test_bad_input_gets_a_one_line_error(args, message, status, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "difflab.cli", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert r.returncode == status
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_corrupt_weights_are_reported(run_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    r = run_cli("sample", broken, "--n", "1", "--out", tmp_path / "x.png")
    assert r.returncode == 1 and "not a readable safetensors file" in r.stderr


def test_seed003_first_model_trains_with_corrupt_and_samples_with_mix(tmp_path):
    run = tmp_path / "first"
    r = run_cli("train", "--objective", "corrupt", "--data", "mnist", "--limit", "64", "--steps", "4",
                "--batch-size", "8", "--out", run, "--no-progress", "--sample-every", "4")
    assert r.returncode == 0, r.stderr
    from difflab.train import TrainConfig

    cfg = TrainConfig.from_json(run / "config.json")
    assert (cfg.net_kind, cfg.prediction, cfg.objective) == ("basic-unet", "x0", "corrupt")
    r = run_cli("sample", run, "--n", "4", "--steps", "5", "--out", tmp_path / "mix.png")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "mix.png").is_file()
    r = run_cli("sample", run, "--sampler", "ddim", "--n", "1", "--out", tmp_path / "bad.png")
    assert r.returncode == 2 and "--sampler mix" in r.stderr


def test_demo_writes_every_picture(tmp_path):
    r = run_cli("demo", "--out", tmp_path / "demo", "--steps", "3", "--no-progress")
    assert r.returncode == 0, r.stderr
    for name in ("classes.png", "samples.png", "denoise.gif", "progression.png", "forward.png", "loss.png"):
        assert (tmp_path / "demo" / name).is_file(), name
        assert f"wrote {tmp_path / 'demo' / name}" in r.stdout
    assert (tmp_path / "demo" / "run" / "model.safetensors").is_file()
    assert load(tmp_path / "demo" / "run", "cpu").num_classes == 10  # the demo conditions on the digit
    grid = np.asarray(Image.open(tmp_path / "demo" / "classes.png"))
    assert grid.shape[0] == 10 * 28 + 11 * 2 and grid.shape[1] == 8 * 28 + 9 * 2  # a row per digit
