"""Super-resolution (SR3, ``--cond lowres``): the concat input of the UNet, the low-resolution
condition, training and sampling through it, and the ``difflab edit upscale`` command."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from difflab.conditioning.lowres import LowResCondition, check_factor, enlarge, quantize, shrink
from difflab.data import DataConfig
from difflab.edit import bicubic, consistency, upscale_run
from difflab.nets import UNet, UNetConfig, default_net_config
from difflab.pipeline import Pipeline, load
from difflab.run_config import TrainConfig


def small_unet(concat_channels=0, in_channels=1):
    torch.manual_seed(0)
    net = UNet(UNetConfig(in_channels=in_channels, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                          groups=4, image_size=8, concat_channels=concat_channels))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net.eval()


# ---- the network's concat input ------------------------------------------------------------------
def test_concat_changes_the_output_and_none_is_the_zero_image():
    net = small_unet(concat_channels=1)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 7])
    a, b = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        out_a, out_b = net(x, t, concat=a), net(x, t, concat=b)
        assert out_a.shape == x.shape
        assert not torch.allclose(out_a, out_b)
        torch.testing.assert_close(net(x, t), net(x, t, concat=torch.zeros_like(a)))
        # sample i's output depends on its own concat image only
        mixed = net(x, t, concat=torch.cat([a[:1], b[1:]]))
    torch.testing.assert_close(mixed[0], out_a[0])
    torch.testing.assert_close(mixed[1], out_b[1])


def test_concat_is_checked():
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 7])
    with pytest.raises(ValueError, match="takes no concat image"):
        small_unet()(x, t, concat=torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"concat image shaped \[2, 1, 8, 8\]"):
        small_unet(concat_channels=1)(x, t, concat=torch.zeros(2, 1, 4, 4))


def test_default_net_gets_concat_channels_only_for_unet():
    cfg = default_net_config("unet", in_channels=3, image_size=32, concat_channels=3)
    assert cfg.concat_channels == 3 and cfg.in_channels == 3
    assert UNet(cfg).conv_in.in_channels == 6
    with pytest.raises(ValueError, match="needs --net unet"):
        default_net_config("diffusers-unet", in_channels=1, image_size=28, concat_channels=1)


# ---- the condition --------------------------------------------------------------------------------
def test_shrink_and_enlarge():
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    small = shrink(x, 4)
    assert small.shape == (3, 1, 7, 7)
    torch.testing.assert_close(small, quantize(small))  # 8-bit levels, as a PNG stores them
    assert ((small + 1) * 127.5 - ((small + 1) * 127.5).round()).abs().max() < 1e-4
    big = enlarge(small, 4)
    assert big.shape == x.shape and big.abs().max() <= 1
    flat = torch.full((1, 1, 28, 28), 0.2)  # a constant image survives both ways up to 8-bit rounding
    torch.testing.assert_close(enlarge(shrink(flat, 2), 2), torch.full_like(flat, 0.2), atol=1 / 255, rtol=0)


@pytest.mark.parametrize(("factor", "size", "message"),
                         [(3, 27, "must be one of"), (8, 28, "do not shrink by 8")])
def test_bad_factors(factor, size, message):
    with pytest.raises(ValueError, match=message):
        check_factor(factor, size)


def test_training_condition_and_drop():
    lowres = LowResCondition(2, (1, 8, 8))
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    drop = torch.tensor([False, True, False, True])
    cond = lowres.training(x0, drop)["concat"]
    torch.testing.assert_close(cond[~drop], enlarge(shrink(x0, 2), 2)[~drop])
    assert not cond[drop].any()


def test_lowres_check_says_what_size():
    lowres = LowResCondition(4, (1, 28, 28))
    assert lowres.check(torch.zeros(1, 7, 7)).shape == (1, 1, 7, 7)
    with pytest.raises(ValueError, match="shrink them first"):
        lowres.check(torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"upscales \(2, 1, 7, 7\)"):
        lowres.check(torch.zeros(2, 1, 8, 8), 2)
    with pytest.raises(ValueError, match="NaN"):
        lowres.check(torch.full((1, 1, 7, 7), float("nan")))


# ---- sampling through the condition ---------------------------------------------------------------
class EchoConcat(nn.Module):
    """Predicts x_0 = the concat image: deterministic DDIM must then land on it exactly."""

    in_channels, image_size, num_classes, context_dim = 1, 8, 0, 0

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, t, concat=None):
        return concat + 0 * x


def echo_pipeline():
    cfg = TrainConfig(data=DataConfig(source="digits", image_size=8, channels=1), cond="lowres",
                      lowres_factor=2, prediction="x0", T=50, sample_sampler="ddim", sample_steps=5,
                      sample_guidance=1.0)
    return Pipeline(EchoConcat(), cfg)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp-2m", "heun"])
def test_sampling_lands_on_the_concat_image(sampler):
    pipe = echo_pipeline()
    small = shrink(torch.rand(3, 1, 8, 8) * 2 - 1, 2)
    out = upscale_run(pipe, small, n=2, seed=5, sampler=sampler, steps=6,
                      eta=0.0 if sampler == "ddim" else None, clip_x0=False)
    want = bicubic(small, 2).repeat_interleave(2, dim=0)  # image-major: image i's n samples together
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)
    assert consistency(out, small.repeat_interleave(2, 0), 2).min() > 20


def test_guidance_above_one_pushes_away_from_the_null_image():
    pipe = echo_pipeline()
    small = shrink(torch.rand(2, 1, 8, 8) * 0.5, 2)
    out = upscale_run(pipe, small, steps=4, eta=0.0, clip_x0=False, guidance=2.0)
    # x0 guided = null + w (cond - null) with null = 0: twice the bicubic image, then clamped to [-1, 1]
    torch.testing.assert_close(out, (2 * bicubic(small, 2)).clamp(-1, 1), atol=1e-5, rtol=0)


def test_pipeline_refuses_missing_or_unwanted_lowres():
    pipe = echo_pipeline()
    with pytest.raises(ValueError, match="give the low-resolution images"):
        pipe.sample(2)
    digits = DataConfig(source="digits", image_size=8, channels=1)
    plain = Pipeline(small_unet(), TrainConfig(data=digits, T=50))
    with pytest.raises(ValueError, match="does not upscale"):
        plain.sample(1, lowres=torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="does not upscale"):
        upscale_run(plain, torch.zeros(1, 1, 4, 4))


# ---- training and the command line ----------------------------------------------------------------
def cli(*args):
    return subprocess.run([sys.executable, "-m", "difflab.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


@pytest.fixture(scope="module")
def sr_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sr") / "run"
    done = cli("train", "--data", "digits", "--image-size", "16", "--cond", "lowres", "--factor", "2",
               "--steps", "4", "--batch-size", "8", "--base-channels", "8", "--channel-mult", "1,2",
               "--sample-every", "4", "--out", out, "--no-progress", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    return out


def test_training_a_lowres_run(sr_run):
    pipe = load(sr_run, "cpu")
    cfg = pipe.config
    assert (cfg.cond, cfg.lowres_factor, cfg.cond_drop, cfg.sample_guidance) == ("lowres", 2, 0.0, 1.0)
    assert cfg.net.concat_channels == 1 and pipe.net.conv_in.in_channels == 2
    assert (sr_run / "samples" / "step_0000004.png").is_file()
    out = upscale_run(pipe, torch.zeros(2, 1, 8, 8), steps=3)
    assert out.shape == (2, 1, 16, 16)


def test_trainer_loss_sees_the_shrunk_batch(monkeypatch, tmp_path):
    from difflab.train import loop

    seen = {}

    def spy(model, x0, t, noise, **kw):
        seen["x0"], seen["cond"] = x0, kw["cond"]
        return x0.sum() * 0

    monkeypatch.setattr(loop, "diffusion_loss", spy)
    cfg = TrainConfig(data=DataConfig(source="digits", image_size=8, channels=1), cond="lowres",
                      lowres_factor=2, cond_drop=0.0, T=20, steps=1, batch_size=4)
    cfg, data = loop.prepare_data(cfg, lambda *_: None)
    trainer = loop.Trainer(cfg, data, tmp_path, torch.device("cpu"), lambda *_: None)
    x0, _ = data.batch(torch.arange(4))
    trainer.loss(x0, None)
    torch.testing.assert_close(seen["cond"]["concat"], enlarge(shrink(x0, 2), 2))


def test_cli_upscale(sr_run, tmp_path):
    digit = np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)
    Image.fromarray(digit).save(tmp_path / "full.png")
    Image.fromarray(digit[::2, ::2]).save(tmp_path / "small.png")
    done = cli("edit", "upscale", sr_run, "--image", tmp_path / "small.png", "--n", "2", "--steps", "3",
               "--out", tmp_path / "up.png", "--compare", tmp_path / "cmp.png", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert "8x8 -> 16x16" in done.stdout and "consistency" in done.stdout
    assert Image.open(tmp_path / "up.png").size[1] > 16
    done = cli("edit", "upscale", sr_run, "--image", tmp_path / "full.png", "--shrink", "--steps", "3",
               "--out", tmp_path / "one.png", "--compare", tmp_path / "cmp2.png", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "one.png").size == (16, 16)
    assert Image.open(tmp_path / "cmp2.png").size[0] > 4 * 16  # the input, bicubic, ours, the original


@pytest.mark.parametrize(("args", "message"), [
    (["--image", "{d}/full.png"], "add --shrink"),
    (["--image", "{d}/small.png", "--shrink"], "give a 16x16 (with --shrink) image"),
    (["--image", "{d}/missing.png"], "does not exist"),
])
def test_cli_upscale_errors(sr_run, tmp_path, args, message):
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "full.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "small.png")
    done = cli("edit", "upscale", sr_run, *[a.format(d=tmp_path) for a in args], "--device", "cpu")
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, \
        done.stderr


def test_cli_refuses_upscaling_with_another_run_and_factor_without_lowres(tmp_path):
    done = cli("train", "--factor", "2", "--out", tmp_path / "r", "--steps", "1")
    assert done.returncode == 2 and "add --cond lowres" in done.stderr
    done = cli("train", "--cond", "lowres", "--factor", "8", "--out", tmp_path / "r", "--steps", "1",
               "--no-progress")
    assert done.returncode != 0 and "do not shrink by 8" in done.stderr
