"""Latent diffusion (``difflab train --latent VAE``): the latent cache, training on it, sampling
and decoding, and the autoencoder a run refuses to trade."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from difflab import sample
from difflab.data import DataConfig, load_dataset
from difflab.io import CheckpointError
from difflab.latent import LatentSpace, load_latent_space, save_autoencoder
from difflab.latent.cache import CACHE_FILE, LatentDataset, data_digest, encode_data, latent_dataset
from difflab.nets.autoencoder import AutoencoderConfig, AutoencoderKL
from difflab.pipeline import load
from difflab.run_config import TrainConfig
from difflab.samplers import SAMPLERS
from difflab.train import TrainingError, train

DIGITS = DataConfig(source="digits", image_size=8, channels=1, limit=64)


def tiny_ae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(AutoencoderConfig.for_factor(2, 1, 4, base=8, groups=4)).eval()


def save_ae(folder, seed=0, scale=0.5, shift=0.1):
    save_autoencoder(tiny_ae(seed), folder / "model.safetensors", scale, shift)
    return folder


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    return save_ae(tmp_path_factory.mktemp("vae"))


def latent_config(vae, **fields):
    fields = {"data": DIGITS, "T": 50, "steps": 4, "batch_size": 8, "sample_every": 4, "sample_n": 4,
              "sample_steps": 3, "checkpoint_every": 2, **fields}
    return TrainConfig(latent=str(vae), **fields)


@pytest.fixture(scope="module")
def run(vae, tmp_path_factory):
    out = tmp_path_factory.mktemp("ldm") / "run"
    train(latent_config(vae), out, progress=False, log=quiet)
    return out


# ---- the cache ----------------------------------------------------------------------------------
def test_cache_holds_the_scaled_posterior_of_every_image(vae):
    space = load_latent_space(vae)
    data = load_dataset(DIGITS)
    mean, logvar = encode_data(space, data, batch_size=10)
    assert mean.shape == (1, 64, 4, 4, 4)
    x, _ = data.batch(torch.arange(64), flip=False)
    with torch.no_grad():
        post = space.autoencoder.encode(x)
    torch.testing.assert_close(mean[0], (post.mean - 0.1) * 0.5, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logvar[0], post.logvar + 2 * torch.log(torch.tensor(0.5)), rtol=1e-5,
                               atol=1e-5)


def test_mirror_images_are_encoded_not_flipped_latents(vae):
    space = load_latent_space(vae)
    data = load_dataset(DIGITS.replace(flip=True))
    mean, _ = encode_data(space, data)
    assert mean.shape[0] == 2
    x, _ = data.batch(torch.arange(64), flip=False)
    with torch.no_grad():
        mirrored = space.encode(x.flip(-1)).mean
    torch.testing.assert_close(mean[1], mirrored, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(mean[1], mean[0].flip(-1), atol=1e-3)  # flipping latents is not exact here


def test_batches_sample_the_posterior_at_every_step():
    data = load_dataset(DIGITS)
    mean, logvar = torch.randn(1, 64, 2, 3, 3), torch.randn(1, 64, 2, 3, 3) - 1
    latents = LatentDataset(data, mean, logvar)
    idx = torch.tensor([3, 5, 7])
    a, labels = latents.batch(idx, torch.Generator().manual_seed(1))
    b, _ = latents.batch(idx, torch.Generator().manual_seed(1))
    c, _ = latents.batch(idx, torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b)  # the step's generator decides: resumes draw the same latents
    assert not torch.allclose(a, c)  # ... and another step draws other ones
    eps = torch.randn(3, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, mean[0, idx] + torch.exp(0.5 * logvar[0, idx]) * eps)
    assert torch.equal(labels, data.labels[idx])


def test_flips_pick_the_mirror_posterior():
    data = load_dataset(DIGITS.replace(flip=True))
    mean = torch.stack([torch.zeros(64, 1, 2, 2), torch.ones(64, 1, 2, 2)])
    latents = LatentDataset(data, mean, torch.full_like(mean, -60.0))  # std ~ 0: z is the mean
    z, _ = latents.batch(torch.arange(64), torch.Generator().manual_seed(0))
    picked = z.flatten(1).mean(1).round()
    flips = torch.rand(64, generator=torch.Generator().manual_seed(0)) < 0.5
    assert torch.equal(picked.bool(), flips)


def test_cache_is_reused_and_rebuilt_when_the_autoencoder_or_data_change(vae, tmp_path):
    space = load_latent_space(vae)
    data = load_dataset(DIGITS)
    notes = []
    latent_dataset(space, data, tmp_path, notes.append)
    assert "encoded 64 images" in notes[-1]
    stamp = (tmp_path / CACHE_FILE).stat().st_mtime_ns
    latent_dataset(space, data, tmp_path, notes.append)
    assert "reusing" in notes[-1] and (tmp_path / CACHE_FILE).stat().st_mtime_ns == stamp
    other = load_latent_space(save_ae(tmp_path / "other", seed=1))
    again = latent_dataset(other, data, tmp_path, notes.append)
    assert "autoencoder changed" in notes[-2] and "encoded" in notes[-1]
    torch.testing.assert_close(again.mean, encode_data(other, data)[0])
    fewer = load_dataset(DIGITS.replace(limit=32))
    assert data_digest(fewer) != data_digest(data)
    latent_dataset(other, fewer, tmp_path, notes.append)
    assert "data changed" in notes[-2]
    (tmp_path / CACHE_FILE).write_bytes(b"not a safetensors file")
    latent_dataset(other, fewer, tmp_path, notes.append)
    assert "unreadable" in notes[-2] and "encoded" in notes[-1]


# ---- training and sampling ----------------------------------------------------------------------
def test_a_latent_run(run, vae):
    cfg = json.loads((run / "config.json").read_text())
    space = load_latent_space(vae)
    assert cfg["latent_digest"] == space.digest and cfg["sample_clip"] is False
    assert (cfg["net"]["in_channels"], cfg["net"]["image_size"]) == (4, 4)
    assert (run / CACHE_FILE).is_file() and (run / "autoencoder.safetensors").is_file()
    pipe = load(run, "cpu")
    assert pipe.sample_shape == (4, 4, 4) and pipe.image_shape == (1, 8, 8)
    assert (run / "samples" / "step_0000004.png").is_file()


def test_samples_are_the_decoded_latents(run):
    pipe = load(run, "cpu")
    seen = {}

    def record(i, t, x, x0):
        seen.setdefault("shapes", set()).add((tuple(x.shape), tuple(x0.shape)))

    images = pipe.sample(3, sampler="ddim", steps=3, seed=4, callback=record)
    with torch.no_grad():
        z = torch.stack([torch.randn(pipe.sample_shape, generator=torch.Generator().manual_seed(4 + i))
                         for i in range(3)])
        final = sample(pipe.net, z, schedule=pipe.schedule, sampler="ddim", steps=3,
                       prediction=pipe.config.prediction, clip_x0=False)
        want = pipe.latent.from_latent(final).clamp(-1, 1)
    torch.testing.assert_close(images, want, rtol=1e-5, atol=1e-5)
    assert seen["shapes"] == {((3, 1, 8, 8), (3, 1, 8, 8))}  # GIF frames and x_0 previews are decoded


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_gives_images_of_the_data_shape(run, sampler):
    pipe = load(run, "cpu")
    out = pipe.sample(2, sampler=sampler, steps=4 if sampler != "ddpm" else None)
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()


def test_a_run_refuses_another_autoencoder(run, vae, tmp_path):
    import shutil

    moved = tmp_path / "run"
    shutil.copytree(run, moved)
    (moved / "autoencoder.safetensors").unlink()  # now it falls back to config.latent ...
    cfg = json.loads((moved / "config.json").read_text())
    cfg["latent"] = str(save_ae(tmp_path / "impostor", seed=3))  # ... which points at other weights
    (moved / "config.json").write_text(json.dumps(cfg))
    impostor = load_latent_space(tmp_path / "impostor").digest
    trained = cfg["latent_digest"]
    with pytest.raises(CheckpointError, match=f"is {impostor}, but the run was trained with {trained}"):
        load(moved, "cpu")
    with pytest.raises(TrainingError, match=f"autoencoder {trained}, and this one is {impostor}"):
        train(latent_config(tmp_path / "impostor").replace(steps=6), moved, resume=True, progress=False,
              log=quiet)


def test_resume_is_exact(vae, tmp_path):
    cfg = latent_config(vae, steps=4)
    train(cfg, tmp_path / "full", progress=False, log=quiet)
    train(cfg.replace(steps=2), tmp_path / "half", progress=False, log=quiet)
    train(cfg, tmp_path / "half", resume=True, progress=False, log=quiet)
    from difflab.io import load_weights

    a = load_weights(tmp_path / "full" / "model.safetensors")
    b = load_weights(tmp_path / "half" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sizes_the_factor_does_not_divide_are_refused(vae):
    with pytest.raises(TrainingError, match="divid"):
        train(latent_config(vae, data=DIGITS.replace(image_size=9)), "/nonexistent/x", progress=False,
              log=quiet)


def test_editing_a_latent_run(run):
    from difflab.edit import img2img_run, inpaint_run, interpolate_run, invert_run

    pipe = load(run, "cpu")
    image = torch.rand(1, 1, 8, 8) * 2 - 1
    same, plan = img2img_run(pipe, image, 0.0)
    assert plan.steps_run == 0 and torch.equal(same, image)
    out, plan = img2img_run(pipe, image, 0.5, n=2, sampler="ddim", steps=4)
    assert out.shape == (2, 1, 8, 8) and plan.steps_run == 2
    inv = invert_run(pipe, image, steps=4)
    assert inv.noise.shape == (1, 4, 4, 4) and inv.reconstruction.shape == (1, 1, 8, 8)
    frames = interpolate_run(pipe, inv.noise, torch.randn(1, 4, 4, 4), 3, sampler="ddim", steps=3)
    assert frames.shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="inpainting works on pixel runs"):
        inpaint_run(pipe, image, torch.ones(1, 1, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="classifier guidance needs a classifier of the noisy latents"):
        pipe.sample(1, class_labels=[0], classifier=object())


def test_latent_space_moves_with_the_pipeline(run):
    pipe = load(run, "cpu")
    assert isinstance(pipe.latent, LatentSpace)
    assert next(pipe.latent.autoencoder.parameters()).device == torch.device("cpu")


# ---- a diffusers AutoencoderKL as the autoencoder, and the command line ----------------------------
def cli(*args):
    return subprocess.run([sys.executable, "-m", "difflab.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                                                           "PYTHONPATH": os.environ.get("PYTHONPATH", "")})


def test_cli_trains_samples_and_evaluates_a_diffusers_latent_run(tmp_path, diffusers):
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=8, scaling_factor=0.4)
    vae.save_pretrained(tmp_path / "vae")
    out = tmp_path / "run"
    done = cli("train", "--latent", f"diffusers:{tmp_path / 'vae'}", "--data", "digits", "--image-size",
               "8", "--steps", "3", "--batch-size", "8", "--sample-every", "3", "--out", out, "--no-progress",
               "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert "4x4x4 latents" in done.stdout and not (out / "autoencoder.safetensors").exists()
    done = cli("sample", out, "--n", "4", "--steps", "3", "--out", tmp_path / "s.png",
               "--gif", tmp_path / "s.gif", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    from PIL import Image

    assert Image.open(tmp_path / "s.png").size[0] > 8

    # the autoencoder folder moves: a one-line error says how to point at it; --autoencoder does
    (tmp_path / "vae").rename(tmp_path / "moved")
    done = cli("sample", out, "--n", "2", "--steps", "2", "--out", tmp_path / "m.png", "--device", "cpu")
    assert done.returncode != 0 and "--autoencoder" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    done = cli("sample", out, "--n", "2", "--steps", "2", "--out", tmp_path / "m.png", "--device", "cpu",
               "--autoencoder", f"diffusers:{tmp_path / 'moved'}")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "m.png").is_file()
    torch.manual_seed(1)  # same architecture, other weights: refused by digest, both named
    diffusers.AutoencoderKL(**vae.config).save_pretrained(tmp_path / "other")
    done = cli("sample", out, "--n", "2", "--steps", "2", "--out", tmp_path / "o.png", "--device", "cpu",
               "--autoencoder", f"diffusers:{tmp_path / 'other'}")
    assert done.returncode != 0 and "trained with" in done.stderr and not (tmp_path / "o.png").exists()

    done = cli("train", "--latent", tmp_path / "missing", "--data", "digits", "--out", tmp_path / "r2",
               "--steps", "1", "--no-progress")
    assert done.returncode != 0 and "--latent" in done.stderr and len(done.stderr.strip().splitlines()) == 1
