"""Editing without retraining (difflab.edit, difflab edit ...): inpainting keeps the known pixels
and noises them to the level being entered, RePaint's jump schedule, img2img's identity at strength
0 and plain sampling at strength 1 (zero terminal SNR), its first timestep, DDIM inversion against
the exact inverse of the Gaussian toy, interpolation endpoints, and one-line errors."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from difflab import NoiseSchedule, sample
from difflab.edit import (
    ddim_invert,
    feather_mask,
    img2img,
    inpaint,
    inpaint_run,
    interpolate_run,
    plan_img2img,
    read_image,
    read_mask,
    reconstruct,
    repaint_levels,
    slerp,
)
from difflab.pipeline import Pipeline, load
from difflab.viz import to_uint8
from tests.toy import MU, S, exact_eps_model

F64 = torch.float64


def x0_toy_model(schedule, mu=MU, s=S):
    """The exact x_0 predictor of the Gaussian toy (finite at alpha_bar = 0, unlike eps)."""

    def model(x, t, **_):
        ab = schedule.alphas_cumprod[whole(t).cpu()].to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        a, b = ab.sqrt(), (1 - ab).sqrt()
        return mu + a * s**2 * (x - a * mu) / (a**2 * s**2 + b**2)

    return model


def whole(t):
    """Timesteps as int64: the sigma samplers pass grid timesteps as (integral) floats."""
    assert torch.equal(t, t.round()), t
    return t.round().long()


def int_t(model):
    return lambda x, t, **cond: model(x, whole(t), **cond)


class Recorder:
    """Wraps a model and keeps the (x, t) of every call."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, x, t, **cond):
        self.calls.append((x.clone(), t.clone()))
        return self.model(x, t, **cond)


def gens(n, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


# ---- a tiny run folder (untrained: the tests check plumbing, not quality) ------------------------
def make_run(folder, num_classes=0):
    from difflab.data import DataConfig
    from difflab.io import save_weights
    from difflab.nets import UNetConfig, build_net
    from difflab.run_config import TrainConfig

    torch.manual_seed(0)
    net = UNetConfig(in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, groups=4,
                     image_size=8, num_classes=num_classes)
    names = tuple(str(i) for i in range(num_classes))
    fields = {"cond": "class", "class_names": names} if num_classes else {}
    cfg = TrainConfig(data=DataConfig(source="digits", image_size=8, channels=1), net=net, T=20,
                      sample_steps=4, **fields)
    folder.mkdir()
    (folder / "config.json").write_text(cfg.to_json() + "\n")
    model = build_net(net)
    with torch.no_grad():  # random weights everywhere (some layers start at zero), so labels matter
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    save_weights(model.state_dict(), folder / "model.safetensors")
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("edit") / "run")


@pytest.fixture(scope="module")
def class_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("edit") / "class", num_classes=10)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An 8x8 grey image, its mask (right half regenerated), and bad variants."""
    d = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(img).save(d / "img.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[:, 4:] = 255
    Image.fromarray(mask).save(d / "mask.png")
    Image.fromarray(np.stack([mask, mask, mask], -1)).save(d / "mask_rgb_grey.png")
    Image.fromarray(np.stack([mask, 255 - mask, mask], -1)).save(d / "mask_colour.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(d / "mask_10.png")
    Image.fromarray(rng.integers(0, 256, (10, 10), dtype=np.uint8)).save(d / "img_10.png")
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(d / "img_colour.png")
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 128
    Image.fromarray(rgba).save(d / "mask_alpha.png")
    (d / "not_an_image.png").write_text("hello")
    return d


# ---- inpainting -------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["replace", "repaint"])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_inpainting_never_changes_kept_pixels(method, sampler):
    sched = NoiseSchedule.cosine(100)
    pixels = torch.randint(0, 256, (2, 1, 12, 12))
    image = pixels.float() / 127.5 - 1
    mask = torch.zeros(1, 1, 12, 12, dtype=torch.bool)
    mask[..., 3:9, 2:7] = True
    out = inpaint(exact_eps_model(sched), image, mask, schedule=sched, method=method, sampler=sampler,
                  steps=10, jump_length=3, jump_n_sample=3, eta=0.5 if sampler == "ddim" else 0.0,
                  generator=gens(2), clip_x0=True)
    keep = ~mask.expand_as(image)
    assert torch.equal(out[keep], image[keep])  # bit for bit, in floats
    assert np.array_equal(to_uint8(out)[..., 0][:, ~mask[0, 0].numpy()],
                          pixels[:, 0].numpy().astype(np.uint8)[:, ~mask[0, 0].numpy()])
    assert not torch.equal(out[~keep], image[~keep])  # the hole was regenerated


@pytest.mark.parametrize("method", ["replace", "repaint"])
def test_known_region_is_noised_to_the_level_being_entered(method):
    """diffusers#3730: after a step t -> s, the known pixels must be at level s, not t. With x_0 = c
    everywhere, the known pixels after the step are sqrt(ab_s) c + sqrt(1 - ab_s) z: their mean and
    std (over 4 x 64 x 64 pixels) identify the level."""
    sched = NoiseSchedule.cosine(1000)
    c = 0.8
    image = torch.full((4, 1, 64, 64), c)
    mask = torch.zeros(1, 1, 64, 64, dtype=torch.bool)
    mask[..., :2, :2] = True
    grid = [-1, *reversed(__import__("difflab").timesteps(1000, 6, "trailing").tolist())]
    seen = []

    def record(i, t, x, x0):
        seen.append((t, x[:, :, 8:, 8:].clone()))

    inpaint(exact_eps_model(sched), image, mask, schedule=sched, method=method, steps=6, jump_length=2,
            jump_n_sample=2, generator=gens(4), callback=record)
    ab = sched.alphas_cumprod
    for t, known in seen:
        s = grid[grid.index(t) - 1]
        if s < 0:
            assert torch.equal(known, torch.full_like(known, c))
            continue
        assert float(known.mean()) == pytest.approx(float(ab[s].sqrt()) * c, abs=0.02)
        assert float(known.std()) == pytest.approx(float((1 - ab[s]).sqrt()), rel=0.03)
        # and distinguishably not the level t just left
        off = max(abs(float(known.mean()) - float(ab[t].sqrt()) * c),
                  abs(float(known.std()) - float((1 - ab[t]).sqrt())))
        assert off > 0.1


def test_repaint_schedule_is_repaints_get_schedule_jump():
    """RePaint's schedule (andreas128/RePaint, guided_diffusion/scheduler.py), written out here."""

    def get_schedule_jump(t_T, jump_length, jump_n_sample):
        jumps = {}
        for j in range(0, t_T - jump_length, jump_length):
            jumps[j] = jump_n_sample - 1
        t = t_T
        ts = []
        while t >= 1:
            t = t - 1
            ts.append(t)
            if jumps.get(t, 0) > 0:
                jumps[t] = jumps[t] - 1
                for _ in range(jump_length):
                    t = t + 1
                    ts.append(t)
        ts.append(-1)
        return ts

    for steps, j, r in ((250, 10, 10), (20, 3, 2), (7, 10, 10), (10, 1, 1)):
        ours = repaint_levels(steps, j, r)
        assert [k - 1 for k in ours] == get_schedule_jump(steps, j, r)
        assert ours[0] == steps and ours[-1] == 0
    assert repaint_levels(10, 3, 1) == list(range(10, -1, -1))  # r = 1: replace, no jumps
    path = repaint_levels(250, 10, 10)
    downs = sum(b < a for a, b in itertools.pairwise(path))
    assert downs == 250 + 24 * 9 * 10  # every level once, plus (r - 1) j re-denoised per jump point


def test_replace_is_repaint_without_resampling_and_repaint_costs_more():
    sched = NoiseSchedule.cosine(100)
    image = torch.rand(1, 1, 8, 8) * 2 - 1
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    mask[..., 4:] = True
    model = exact_eps_model(sched)
    a, nfe_a = inpaint(model, image, mask, schedule=sched, method="replace", steps=10, generator=gens(1),
                       return_nfe=True)
    b, nfe_b = inpaint(model, image, mask, schedule=sched, method="repaint", steps=10, jump_n_sample=1,
                       generator=gens(1), return_nfe=True)
    c, nfe_c = inpaint(model, image, mask, schedule=sched, method="repaint", steps=10, jump_length=2,
                       jump_n_sample=3, generator=gens(1), return_nfe=True)
    assert torch.equal(a, b) and nfe_a == nfe_b == 10
    assert nfe_c == len([1 for x, y in zip(repaint_levels(10, 2, 3), repaint_levels(10, 2, 3)[1:],
                                           strict=False) if y < x]) > 10
    assert not torch.equal(a, c)


def test_feathered_blend_keeps_known_pixels_and_softens_inside(run, files):
    pipe = load(run, "cpu")
    image = read_image(files / "img.png", pipe.image_shape)
    mask = read_mask(files / "mask.png", (8, 8))
    w = feather_mask(mask, 2)
    assert torch.equal(w[~mask], torch.zeros(int((~mask).sum())))
    assert 0 < float(w[mask].min()) < 1 and float(w[mask].max()) == 1
    hard = inpaint_run(pipe, image, mask, n=2, steps=4, method="replace")
    soft = inpaint_run(pipe, image, mask, n=2, steps=4, method="replace", feather=2)
    keep = ~mask.expand(2, 1, 8, 8)
    assert torch.equal(soft[keep], image.expand(2, 1, 8, 8)[keep])
    assert torch.equal(hard[keep], image.expand(2, 1, 8, 8)[keep])
    assert not torch.equal(hard, soft)


# ---- img2img ----------------------------------------------------------------------------------
def test_img2img_strength_zero_is_the_identity_and_runs_nothing():
    sched = NoiseSchedule.cosine(100)
    image = torch.rand(3, 1, 8, 8) * 2 - 1
    model = Recorder(exact_eps_model(sched))
    out = img2img(model, image, 0.0, schedule=sched, steps=20, generator=gens(3))
    assert torch.equal(out, image) and model.calls == []
    assert plan_img2img(sched, 0.0, 20).steps_run == 0


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "euler", "dpmpp-2m"])
def test_img2img_at_strength_one_is_plain_sampling_on_a_zero_terminal_snr_schedule(sampler):
    sched = NoiseSchedule.cosine(100).rescale_zero_terminal_snr()
    assert float(sched.alphas_cumprod[-1]) == 0
    model = x0_toy_model(sched)
    image = torch.rand(2, 1, 6, 6, dtype=F64) * 2 - 1
    z = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(1), dtype=F64)
    edited = img2img(model, image, 1.0, schedule=sched, sampler=sampler, steps=10, noise=z, prediction="x0",
                     generator=gens(2, 5))
    plain = sample(model, z, schedule=sched, sampler=sampler, steps=10, prediction="x0", generator=gens(2, 5))
    if sampler in ("ddim", "ddpm"):
        assert torch.equal(edited, plain)
    else:  # the sigma grid caps sigma_max at alpha_bar = 2^-24: the image's weight is 2^-12
        torch.testing.assert_close(edited, plain, atol=2e-3, rtol=0)


def test_img2img_at_strength_one_keeps_only_the_signal_left_at_T():
    """On an ordinary schedule, strength 1 differs from plain sampling only through the
    sqrt(alpha_bar_T) x_0 left in x_T: the start is exactly that, and the results are close."""
    sched = NoiseSchedule.cosine(100)
    model = Recorder(exact_eps_model(sched))
    image = torch.rand(2, 1, 6, 6, dtype=F64) * 2 - 1
    z = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(1), dtype=F64)
    img2img(model, image, 1.0, schedule=sched, steps=10, noise=z)
    ab = sched.alphas_cumprod[99]
    torch.testing.assert_close(model.calls[0][0], ab.sqrt() * image + (1 - ab).sqrt() * z, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("strength", "steps", "run_steps"), [(0.6, 50, 30), (0.5, 10, 5), (0.01, 10, 1),
                                                               (1.0, 7, 7), (0.33, 3, 1), (0.66, 3, 2)])
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp-2m"])
def test_img2img_first_timestep_is_the_level_the_image_was_noised_to(strength, steps, run_steps, sampler):
    """CompVis/stable-diffusion#533: the first denoising step must evaluate the network at the
    very level the input was noised to; and round(strength x steps) steps run."""
    from difflab import timesteps

    sched = NoiseSchedule.cosine(1000)
    model = Recorder(int_t(exact_eps_model(sched)))
    image = torch.rand(2, 1, 6, 6, dtype=F64) * 2 - 1
    z = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(2), dtype=F64)
    plan = plan_img2img(sched, strength, steps, sampler)
    assert plan.steps_run == run_steps and plan.first_step == steps - run_steps
    img2img(model, image, strength, schedule=sched, sampler=sampler, steps=steps, noise=z)
    assert len(model.calls) == run_steps
    x_first, t_first = model.calls[0]
    expected_t = int(timesteps(1000, steps, "trailing")[steps - run_steps])
    assert plan.timestep == expected_t
    ab = sched.alphas_cumprod[expected_t]
    x_t = ab.sqrt() * image + (1 - ab).sqrt() * z
    if sampler == "ddim":
        assert torch.equal(t_first, torch.full((2,), expected_t))
        torch.testing.assert_close(x_first, x_t, rtol=0, atol=1e-12)
    else:  # the sigma samplers feed x_sigma / sqrt(1 + sigma^2) = x_t at the timestep of sigma
        torch.testing.assert_close(t_first.double(), torch.full((2,), float(expected_t), dtype=F64))
        torch.testing.assert_close(x_first, x_t, rtol=0, atol=1e-9)
    assert f"{run_steps} steps run" in plan.describe() and f"t = {expected_t}" in plan.describe()


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_img2img_strength_outside_0_1_is_an_error(bad):
    with pytest.raises(ValueError, match=r"strength must lie in \[0, 1\]"):
        plan_img2img(NoiseSchedule.cosine(10), bad, 5)


# ---- inversion on the Gaussian toy ------------------------------------------------------------
def exact_inverse(sched, x0, t):
    """The probability-flow ODE's x_t from x_0 on the toy (tests/toy.py, solved for x_t)."""
    ab = sched.alphas_cumprod[t]
    a, b = ab.sqrt(), (1 - ab).sqrt()
    return a * MU + (a**2 * S**2 + b**2).sqrt() * (x0 - MU) / S


def toy_images(n=4):
    return MU + S * torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(0), dtype=F64)


def test_ddim_inversion_approaches_the_exact_inverse_as_steps_grow():
    """Plain DDIM inversion is first order: the error to the exact ODE inverse at t = T-1 halves
    when the steps double, and stays under 2.5 / steps (an off-by-one in the grid, e.g. stepping
    to t + T/steps or evaluating the model one level off, leaves an error that does not shrink)."""
    sched = NoiseSchedule.cosine(1000)
    model, x0 = exact_eps_model(sched), toy_images()
    exact = exact_inverse(sched, x0, 999)
    errors = {}
    for steps in (10, 20, 40, 80, 160):
        for method in ("ddim", "fixed-point"):
            z = ddim_invert(model, x0, schedule=sched, steps=steps, method=method, iterations=3)
            errors[steps, method] = float((z - exact).abs().max())
            assert errors[steps, method] < 6.0 / steps, (steps, method, errors[steps, method])
    for method in ("ddim", "fixed-point"):
        for steps in (10, 20, 40, 80):
            assert errors[2 * steps, method] < 0.6 * errors[steps, method]
    z = ddim_invert(model, x0, schedule=sched, steps=1000, method="ddim")
    torch.testing.assert_close(z, exact, atol=6e-3, rtol=0)


def test_inversion_then_reconstruction_returns_the_input_with_a_tolerance_that_shrinks():
    sched = NoiseSchedule.cosine(1000)
    model, x0 = exact_eps_model(sched), toy_images()
    plain, fixed = {}, {}
    for steps in (10, 20, 40, 80):
        for method, store in (("ddim", plain), ("fixed-point", fixed)):
            z = ddim_invert(model, x0, schedule=sched, steps=steps, method=method, iterations=3)
            store[steps] = float((reconstruct(model, z, schedule=sched, steps=steps) - x0).abs().max())
        assert plain[steps] < 4.0 / steps
        assert fixed[steps] < 0.05 * plain[steps]  # the improved inversion measurably helps
    for steps in (10, 20, 40):
        assert plain[2 * steps] < 0.6 * plain[steps]
        assert fixed[2 * steps] < 0.6 * fixed[steps]


def test_fixed_point_iterations_converge_to_an_exact_inverse_of_the_ddim_step():
    sched = NoiseSchedule.cosine(1000)
    model, x0 = exact_eps_model(sched), toy_images()
    errs = []
    for iterations in (1, 2, 4, 8):
        z = ddim_invert(model, x0, schedule=sched, steps=10, method="fixed-point", iterations=iterations)
        errs.append(float((reconstruct(model, z, schedule=sched, steps=10) - x0).abs().max()))
    assert errs == sorted(errs, reverse=True) and errs[-1] < 1e-6 and errs[-1] < 1e-4 * errs[0]


def test_inversion_nfe_counts_the_iterations():
    sched = NoiseSchedule.cosine(100)
    x0 = toy_images(1)
    _, plain = ddim_invert(exact_eps_model(sched), x0, schedule=sched, steps=10, method="ddim",
                           return_nfe=True)
    _, fixed = ddim_invert(exact_eps_model(sched), x0, schedule=sched, steps=10, method="fixed-point",
                           iterations=3, return_nfe=True)
    assert (plain, fixed) == (10, 40)


# ---- interpolation ----------------------------------------------------------------------------
def test_slerp_endpoints_exact_and_norm_kept():
    z0, z1 = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(slerp(z0, z1, 0.0), z0) and torch.equal(slerp(z0, z1, 1.0), z1)
    mid = slerp(z0, z1, 0.5)
    assert float(mid.norm()) == pytest.approx(float((z0.norm() + z1.norm()) / 2), rel=0.05)
    assert float(((z0 + z1) / 2).norm()) < 0.8 * float(mid.norm())  # what lerp would lose


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_interpolation_endpoints_are_the_two_inputs_samples(run, sampler):
    pipe = load(run, "cpu")
    z0, z1 = (torch.randn(pipe.image_shape, generator=torch.Generator().manual_seed(s)) for s in (3, 8))
    frames = interpolate_run(pipe, z0, z1, 5, seeds=(3, 8), sampler=sampler, steps=4)
    a = pipe.sample(1, seed=3, sampler=sampler, steps=4)
    b = pipe.sample(1, seed=8, sampler=sampler, steps=4)
    torch.testing.assert_close(frames[0], a[0], rtol=0, atol=1e-5)  # batch of 5 vs 1: float rounding
    torch.testing.assert_close(frames[-1], b[0], rtol=0, atol=1e-5)
    assert not torch.allclose(frames[2], a[0]) and not torch.allclose(frames[2], b[0])


def test_pipeline_sample_from_explicit_noise(run):
    pipe = load(run, "cpu")
    noise = torch.stack([torch.randn(pipe.image_shape, generator=g) for g in gens(3, 10)])
    torch.testing.assert_close(pipe.sample(3, noise=noise, seed=10, sampler="ddpm", steps=4),
                               pipe.sample(3, seed=10, sampler="ddpm", steps=4), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"noise has shape \(3, 1, 9, 9\); this run needs \(3, 1, 8, 8\)"):
        pipe.sample(3, noise=torch.zeros(3, 1, 9, 9))


# ---- files and their errors -------------------------------------------------------------------
def test_read_image_and_masks(files):
    x = read_image(files / "img.png", (1, 8, 8))
    assert x.shape == (1, 1, 8, 8)
    assert np.array_equal(to_uint8(x)[0, ..., 0], np.asarray(Image.open(files / "img.png")))
    m = read_mask(files / "mask.png", (8, 8))
    assert m.dtype == torch.bool and int(m.sum()) == 32 and bool(m[0, 0, 0, 7]) and not bool(m[0, 0, 0, 0])
    assert torch.equal(read_mask(files / "mask_rgb_grey.png", (8, 8)), m)
    assert read_image(files / "img_colour.png", (3, 8, 8)).shape == (1, 3, 8, 8)


@pytest.mark.parametrize(("call", "message"), [
    (lambda d: read_image(d / "missing.png", (1, 8, 8)), "does not exist"),
    (lambda d: read_image(d / "not_an_image.png", (1, 8, 8)), "not a readable image"),
    (lambda d: read_image(d / "img_10.png", (1, 8, 8)), "is 10x10; this run draws 8x8 images"),
    (lambda d: read_image(d / "img_colour.png", (1, 8, 8)), "in colour; this run draws greyscale"),
    (lambda d: read_mask(d / "mask_colour.png", (8, 8)), "single-channel"),
    (lambda d: read_mask(d / "mask_10.png", (8, 8)), "mask .* is 10x10, the image is 8x8"),
    (lambda d: read_mask(d / "mask_alpha.png", (8, 8)), "transparent"),
    (lambda d: read_mask(d / "missing.png", (8, 8)), "does not exist"),
])
def test_bad_files_give_clear_errors(files, call, message):
    with pytest.raises(ValueError, match=message):
        call(files)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "difflab.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


def assert_one_line_error(out, *needles):
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("difflab"), out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_cli_errors_are_one_line(run, files, tmp_path):
    assert_one_line_error(cli("edit", "inpaint", run, "--image", files / "missing.png", "--mask",
                              files / "mask.png", "--device", "cpu"), "does not exist")
    assert_one_line_error(cli("edit", "inpaint", run, "--image", files / "img.png", "--mask",
                              files / "mask_colour.png", "--device", "cpu"), "single-channel")
    assert_one_line_error(cli("edit", "inpaint", run, "--image", files / "img.png", "--mask",
                              files / "mask_10.png", "--device", "cpu"), "10x10")
    assert_one_line_error(cli("edit", "img2img", run, "--image", files / "img_10.png", "--device", "cpu"),
                          "resize or crop")
    assert_one_line_error(cli("edit", "img2img", run, "--image", files / "img.png", "--strength", "1.5"),
                          "strength must lie in [0, 1]")
    assert_one_line_error(cli("edit", "invert", run, "--image", files / "img.png", "--class", "3",
                              "--device", "cpu"), "not trained with class labels")
    assert_one_line_error(cli("sample", run, "--from-noise", tmp_path / "none.npy", "--device", "cpu"),
                          "does not exist")
    np.save(tmp_path / "bad.npy", np.zeros((2, 1, 5, 5), np.float32))
    assert_one_line_error(cli("sample", run, "--from-noise", tmp_path / "bad.npy", "--device", "cpu"),
                          "(2, 1, 5, 5)", "(2, 1, 8, 8)")


def test_cli_edits_write_their_outputs(run, class_run, files, tmp_path):
    out = cli("edit", "inpaint", run, "--image", files / "img.png", "--mask", files / "mask.png", "--out",
              tmp_path / "inp.png", "--steps", "6", "--jump-length", "2", "--jump-n-sample", "2",
              "--device", "cpu")
    assert out.returncode == 0, out.stderr
    got = np.asarray(Image.open(tmp_path / "inp.png"))
    src = np.asarray(Image.open(files / "img.png"))
    assert got.shape == (8, 8) and np.array_equal(got[:, :4], src[:, :4])

    out = cli("edit", "img2img", class_run, "--image", files / "img.png", "--strength", "0.5", "--steps", "8",
              "--class", "8", "--guidance", "2", "--out", tmp_path / "i2i.png", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    assert "strength 0.5 x 8 steps = 4 steps run, starting at t = " in out.stdout
    out = cli("edit", "img2img", run, "--image", files / "img.png", "--strength", "0", "--out",
              tmp_path / "same.png", "--device", "cpu")
    assert out.returncode == 0 and "no step runs" in out.stdout
    assert np.array_equal(np.asarray(Image.open(tmp_path / "same.png")), src)

    out = cli("edit", "invert", class_run, "--image", files / "img.png", "--class", "3", "--steps", "5",
              "--out", tmp_path / "z.npy", "--reconstruction", tmp_path / "rec.png", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    assert "reconstruction (DDIM, 5 steps, eta 0): RMSE" in out.stdout
    settings = json.loads((tmp_path / "z.json").read_text())
    assert settings["class_labels"] == [3] and settings["guidance"] == 1.0 and settings["steps"] == 5
    out = cli("sample", class_run, "--from-noise", tmp_path / "z.npy", "--out", tmp_path / "again.png",
              "--device", "cpu")
    assert out.returncode == 0, out.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again.png"))[2:-2, 2:-2],
                          np.asarray(Image.open(tmp_path / "rec.png")))

    out = cli("edit", "interpolate", run, "--seeds", "1", "2", "--frames", "4", "--steps", "4", "--out",
              tmp_path / "strip.png", "--gif", tmp_path / "strip.gif", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    assert Image.open(tmp_path / "strip.png").size == (4 * 10 + 2, 12)
    assert Image.open(tmp_path / "strip.gif").n_frames >= 2


def test_inpaint_run_towards_a_class_uses_guidance(class_run, files):
    pipe: Pipeline = load(class_run, "cpu")
    image = read_image(files / "img.png", pipe.image_shape)
    mask = read_mask(files / "mask.png", (8, 8))
    a = inpaint_run(pipe, image, mask, steps=4, method="replace", class_labels=[3], guidance=3.0)
    b = inpaint_run(pipe, image, mask, steps=4, method="replace", class_labels=[7], guidance=3.0)
    assert not torch.equal(a, b)
    assert torch.equal(a[..., :4], image[..., :4]) and torch.equal(b[..., :4], image[..., :4])
