"""The sampler registry through ``sample(...)``: names, grids, NFE, conditioning, seeds, errors."""

import math

import pytest
import torch

from difflab import NoiseSchedule, sample
from difflab.diffusion import Denoiser, discrete_sigmas, sigma_to_t, t_to_sigma
from difflab.noise import generators_from_seeds
from difflab.samplers import GRIDS, SAMPLERS, sigma_grid
from difflab.sampling import Sampled

SIGMA_SAMPLERS = [s for s in SAMPLERS if s not in ("ddpm", "ddim")]
STOCHASTIC = {"euler-ancestral": {}, "dpmpp-2m-sde": {}, "dpmpp-3m-sde": {}, "heun": {"s_churn": 20.0}}


def toy_model(x, t, **_):
    return torch.tanh(x) * 0.7 + 0.001 * t.to(x.dtype).reshape(-1, 1, 1, 1)


def test_the_registry_names():
    assert list(SAMPLERS) == [
        "ddpm", "ddim", "euler", "euler-ancestral", "heun",
        "dpmpp-2m", "dpmpp-2m-sde", "dpmpp-3m-sde", "unipc",
    ]
    assert GRIDS == ("timesteps", "karras", "log-snr")


@pytest.mark.parametrize(
    ("sampler", "steps", "options", "nfe"),
    [
        ("ddpm", 20, {}, 20),
        ("ddim", 20, {}, 20),
        ("euler", 20, {}, 20),
        ("euler-ancestral", 20, {}, 20),
        ("heun", 20, {}, 39),
        ("heun", 7, {"s_churn": 5.0}, 13),
        ("heun", 1, {}, 1),
        ("dpmpp-2m", 20, {}, 20),
        ("dpmpp-2m-sde", 20, {}, 20),
        ("dpmpp-3m-sde", 20, {}, 20),
        ("unipc", 20, {}, 20),
        ("unipc", 20, {"order": 3}, 20),
    ],
)
def test_network_evaluations_are_counted(sampler, steps, options, nfe):
    calls = []

    def model(x, t, **_):
        calls.append(t)
        return toy_model(x, t)

    sched = NoiseSchedule.linear(100)
    out = sample(model, torch.randn(2, 1, 3, 3), schedule=sched, sampler=sampler, steps=steps,
                 return_nfe=True, **options)
    assert isinstance(out, Sampled) and out.x.shape == (2, 1, 3, 3)
    assert out.nfe == len(calls) == nfe
    _, n = out  # unpacks like a tuple
    assert n == nfe


@pytest.mark.parametrize("sampler", SIGMA_SAMPLERS)
@pytest.mark.parametrize("grid", GRIDS)
def test_sample_i_is_the_same_at_batch_1_and_16(sampler, grid):
    sched = NoiseSchedule.linear(200)
    seeds = list(range(100, 116))
    options = STOCHASTIC.get(sampler, {})

    def run(idx):
        gens = generators_from_seeds([seeds[i] for i in idx])
        x_T = torch.stack([torch.randn((1, 6, 6), generator=g) for g in gens])
        return sample(toy_model, x_T, schedule=sched, sampler=sampler, steps=12, sigmas=grid,
                      generator=gens, **options)

    batch = run(range(16))
    for i in [0, 7, 15]:
        torch.testing.assert_close(run([i])[0], batch[i], rtol=0, atol=1e-5)
    torch.testing.assert_close(run(range(16)), batch, rtol=0, atol=0)  # same seed, same samples
    if sampler in STOCHASTIC:  # same x_T, other noise seed: other sample
        gens = generators_from_seeds([seeds[0]])
        x_T = torch.stack([torch.randn((1, 6, 6), generator=g) for g in gens])
        other = sample(toy_model, x_T, schedule=sched, sampler=sampler, steps=12, sigmas=grid,
                       generator=[torch.Generator().manual_seed(999)], **options)
        assert not torch.allclose(other[0], batch[0])


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_conditioning_passes_through_and_guidance_composes(sampler):
    """Classifier-free guidance wraps the model; samplers only forward ``cond``."""
    seen = []

    def net(x, t, *, class_labels):
        seen.append(class_labels)
        return toy_model(x, t) + 0.1 * (class_labels.to(x.dtype) - 5).reshape(-1, 1, 1, 1)

    def guided(x, t, *, class_labels, scale=3.0):
        cond = net(x, t, class_labels=class_labels)
        uncond = net(x, t, class_labels=torch.full_like(class_labels, 10))
        return uncond + scale * (cond - uncond)

    sched = NoiseSchedule.linear(100)
    x_T = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1, 8])
    out = sample(guided, x_T, schedule=sched, sampler=sampler, steps=5, cond={"class_labels": labels},
                 generator=torch.Generator().manual_seed(1), return_nfe=True)
    assert len(seen) == 2 * out.nfe  # nfe counts calls of the wrapped model
    assert all(torch.equal(s, labels) or torch.equal(s, torch.tensor([10, 10])) for s in seen)
    other = sample(guided, x_T, schedule=sched, sampler=sampler, steps=5,
                   generator=torch.Generator().manual_seed(1), cond={"class_labels": torch.tensor([8, 1])})
    assert not torch.allclose(other, out.x)


def test_timesteps_given_to_the_network():
    got = []

    def model(x, t, **_):
        got.append(t)
        return toy_model(x, t)

    sched = NoiseSchedule.linear(1000)
    x_T = torch.randn(2, 1, 2, 2)
    sample(model, x_T, schedule=sched, sampler="euler", steps=10)  # timesteps grid: integral floats
    assert got[0].dtype == torch.float32 and got[0].tolist() == [999.0, 999.0]
    assert all(torch.equal(t, t.round()) for t in got)
    got.clear()
    sample(model, x_T, schedule=sched, sampler="euler", steps=10, sigmas="karras")
    assert any(not torch.equal(t, t.round()) for t in got)  # fractional in between
    got.clear()
    sample(model, x_T, schedule=sched, sampler="euler", steps=10, sigmas="karras", discrete=True)
    assert all(t.dtype == torch.int64 for t in got)  # for table-lookup embeddings (MyUNet)
    got.clear()
    sample(model, x_T.double(), schedule=sched, sampler="unipc", steps=10, sigmas="log-snr")
    assert got[0].dtype == torch.float64


def test_callback_reports_every_step_in_image_scale():
    """With D = 0 (an x0 model predicting zeros) Euler scales x_sigma by sigma_{i+1}/sigma_i, so
    x_sigma_i = x_T sqrt(1 + sigma_0^2) sigma_i / sigma_0; the callback reports
    x_t = x_sigma / sqrt(1 + sigma^2), the image scale, not x_sigma."""
    sched = NoiseSchedule.linear(1000)
    seen = []
    x_T = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = sample(lambda x, t: torch.zeros_like(x), x_T, schedule=sched, sampler="euler", steps=8,
                 sigmas="karras", prediction="x0", callback=lambda i, t, x, x0: seen.append((i, t, x, x0)))
    assert [s[0] for s in seen] == list(range(8))
    assert seen[0][1] == 999 and isinstance(seen[0][1], int) and seen[-1][1] == 0
    grid = sigma_grid(sched, 8, "karras").tolist()
    for i, _, x, _ in seen[:-1]:
        s0, s = grid[0], grid[i + 1]
        expected = x_T * math.sqrt(1 + s0**2) * s / s0 / math.sqrt(1 + s**2)
        torch.testing.assert_close(x, expected)
    torch.testing.assert_close(seen[-1][2], out)


def test_grids():
    sched = NoiseSchedule.linear(1000)
    sig = discrete_sigmas(sched)
    karras = sigma_grid(sched, 10, "karras")
    assert karras.dtype == torch.float64 and karras.shape == (11,) and karras[-1] == 0
    torch.testing.assert_close(karras[[0, 9]], sig[[999, 0]])
    rho = 7
    ramp = (karras[:-1] ** (1 / rho)).diff()
    torch.testing.assert_close(ramp, ramp[:1].expand(9))  # uniform in sigma^(1/rho)
    log_snr = sigma_grid(sched, 10, "log-snr")
    steps = log_snr[:-1].log().diff()
    torch.testing.assert_close(steps, steps[:1].expand(9))  # uniform in log sigma = -lambda/2
    ts = sigma_grid(sched, 10, "timesteps", "leading")
    torch.testing.assert_close(ts[:-1], sig[torch.arange(9, -1, -1) * 100])
    with pytest.raises(ValueError, match="steps <= 1000"):
        sigma_grid(sched, 1001, "karras")


def test_sigma_to_t_interpolates_log_sigma_and_inverts():
    sched = NoiseSchedule.cosine(1000)
    log_sigmas = discrete_sigmas(sched).log()
    t = torch.tensor([0.0, 3.25, 500.5, 998.9, 999.0], dtype=torch.float64)
    torch.testing.assert_close(sigma_to_t(log_sigmas, t_to_sigma(log_sigmas, t)), t)
    mid = (log_sigmas[10] + log_sigmas[11]).div(2).exp()
    assert sigma_to_t(log_sigmas, mid).item() == pytest.approx(10.5)
    assert sigma_to_t(log_sigmas, torch.tensor(1e-9)).item() == 0  # clamped at both ends
    assert sigma_to_t(log_sigmas, torch.tensor(1e9)).item() == 999
    d = Denoiser(toy_model, sched)  # the per-step Python version of sigma_to_t
    sigmas = [1e-9, float(mid), *t_to_sigma(log_sigmas, t).tolist(), 3.7, 1e9]
    expected = sigma_to_t(log_sigmas, torch.tensor(sigmas)).tolist()
    assert [d.timestep(s) for s in sigmas] == pytest.approx(expected)
    assert Denoiser(toy_model, sched, discrete=True).timestep(float(mid)) in (10.0, 11.0)


def test_zero_terminal_snr_schedules_sample_finite_images():
    sched = NoiseSchedule.linear(1000).rescale_zero_terminal_snr()
    sig = discrete_sigmas(sched)
    assert math.isfinite(sig[-1]) and sig[-1] > 4096 and bool((sig.diff() > 0).all())
    for sampler in SIGMA_SAMPLERS:
        x = sample(toy_model, torch.randn(2, 1, 2, 2), schedule=sched, sampler=sampler, steps=10,
                   prediction="v", sigmas="karras")
        assert torch.isfinite(x).all(), sampler


def test_float16_input_keeps_its_dtype():
    sched = NoiseSchedule.linear(1000)
    x = sample(toy_model, torch.randn(2, 1, 2, 2).half(), schedule=sched, sampler="dpmpp-2m", steps=5)
    assert x.dtype == torch.float16 and torch.isfinite(x).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sampler": "plms"}, "ddpm.*ddim.*euler.*euler-ancestral.*heun.*dpmpp-2m.*unipc"),
        ({"sampler": "euler", "sigmas": "exponential"}, "timesteps.*karras.*log-snr"),
        ({"sampler": "ddim", "sigmas": "karras"}, "applies to the sigma samplers"),
        ({"sampler": "heun", "eta": 0.5}, "euler-ancestral, dpmpp-2m-sde, dpmpp-3m-sde"),
        ({"sampler": "euler", "simple_var": True}, "ddim sampler only"),
        ({"sampler": "dpmpp-2m", "s_churn": 1.0}, "takes no option 's_churn'.*clip_x0"),
        ({"sampler": "unipc", "order": 4}, "order must be 1, 2 or 3"),
        ({"sampler": "unipc", "variant": "bh3"}, "bh1.*bh2"),
        ({"sampler": "dpmpp-2m-sde", "solver_type": "rk4"}, "midpoint.*heun"),
        ({"sampler": "euler-ancestral", "eta": -1.0}, "eta must be >= 0"),
        ({"sampler": "heun", "s_churn": -1.0}, "s_churn and s_noise must be >= 0"),
        ({"sampler": "euler", "steps": 201}, "steps <= 200"),
        ({"sampler": "euler", "spacing": "uniform"}, "leading.*trailing.*linspace"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    sched = NoiseSchedule.linear(200)
    with pytest.raises(ValueError, match=match):
        sample(toy_model, torch.randn(1, 1, 2, 2), schedule=sched, **kwargs)


def test_a_grid_must_decrease_to_zero():
    from difflab.noise import NoiseSource
    from difflab.samplers import sample_euler

    d = Denoiser(toy_model, NoiseSchedule.linear(10))
    with pytest.raises(ValueError, match="strictly decreasing and end with 0"):
        sample_euler(d, torch.randn(1, 1, 2, 2), torch.tensor([1.0, 2.0, 0.0]), noise=NoiseSource())


def tiny_pipeline(kind):
    from difflab.data import DataConfig
    from difflab.nets import MyUNetConfig, UNetConfig, build_net
    from difflab.pipeline import Pipeline
    from difflab.train import TrainConfig

    net_cfg = (
        MyUNetConfig(n_steps=50) if kind == "myunet"
        else UNetConfig(base_channels=8, channel_mult=(1,), num_res_blocks=1, groups=4, mid_attention=False)
    )
    torch.manual_seed(0)
    data = DataConfig(source="mnist", limit=8)
    cfg = TrainConfig(data=data, net_kind=kind, net=net_cfg, T=50, sample_steps=5)
    return Pipeline(build_net(net_cfg), cfg)


@pytest.mark.parametrize("kind", ["myunet", "unet"])
def test_pipeline_takes_every_sampler_and_grid(kind):
    """MyUNet looks t up in a table: the pipeline passes discrete=True for it by itself."""
    pipe = tiny_pipeline(kind)
    a = pipe.sample(3, sampler="heun", steps=4, sigmas="karras", seed=1, batch_size=3)
    b = pipe.sample(3, sampler="heun", steps=4, sigmas="karras", seed=1, batch_size=2)
    assert a.shape == (3, 1, 28, 28) and a.abs().max() <= 1
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    c = pipe.sample(2, sampler="dpmpp-2m-sde", steps=3, sigmas="log-snr", seed=1, s_noise=1.0, eta=0.5)
    assert torch.isfinite(c).all()
    if kind == "myunet":
        with pytest.raises(ValueError, match="fractional t"):
            pipe.sample(1, sampler="euler", steps=3, sigmas="karras", discrete=False)


def test_cli_sample_with_a_sigma_sampler(tmp_path):
    import subprocess
    import sys

    from difflab.train.checkpoint import save_weights

    pipe = tiny_pipeline("unet")
    run = tmp_path / "run"
    run.mkdir()
    pipe.config.to_json(run / "config.json")
    save_weights(pipe.net.state_dict(), run / "model.safetensors")
    base = [sys.executable, "-m", "difflab.cli", "sample", str(run), "--n", "2", "--device", "cpu"]
    ok = subprocess.run(
        [*base, "--sampler", "dpmpp-2m", "--sigmas", "karras", "--steps", "3", "--out", tmp_path / "g.png"],
        capture_output=True, text=True, timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "g.png").is_file()
    bad = subprocess.run(
        [*base, "--sampler", "ddim", "--sigmas", "karras", "--out", str(tmp_path / "h.png")],
        capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode == 2 and "applies to the sigma samplers" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("sampler", SIGMA_SAMPLERS)
def test_clip_x0_clips_every_denoised_estimate(sampler):
    sched = NoiseSchedule.linear(100)
    seen = []
    x = sample(lambda x, t: 3 * torch.ones_like(x), torch.randn(2, 1, 2, 2), schedule=sched, sampler=sampler,
               steps=6, prediction="x0", clip_x0=True, callback=lambda i, t, x_, x0: seen.append(x0))
    assert all(bool((x0 == 1).all()) for x0 in seen)
    torch.testing.assert_close(x, torch.ones_like(x))
