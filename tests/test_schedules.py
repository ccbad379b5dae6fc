import math

import pytest
import torch

from difflab import NoiseSchedule, timesteps
from difflab.schedules import SCHEDULES

# The comparisons with diffusers take the ``diffusers`` fixture of tests/conftest.py (a skip there
# fails under DIFFLAB_STRICT_SKIPS=1); the closed-form tests need nothing but difflab.


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"])
@pytest.mark.parametrize("T", [200, 1000])
def test_betas_match_diffusers(diffusers, name, T):
    ref = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule=name, beta_start=1e-4, beta_end=0.02)
    kwargs = {} if name == "squaredcos_cap_v2" else {"beta_start": 1e-4, "beta_end": 0.02}
    ours = NoiseSchedule.from_name(name, T, **kwargs)
    torch.testing.assert_close(ours.betas.float(), ref.betas, rtol=2e-5, atol=1e-7)
    torch.testing.assert_close(ours.alphas_cumprod.float(), ref.alphas_cumprod, rtol=5e-5, atol=1e-7)


def test_linear_is_the_notes_schedule():
    s = NoiseSchedule.linear(200, 1e-4, 0.02)
    assert s.T == 200
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    # seed 000: alpha_bars[i] = prod(alphas[:i + 1])
    ref = torch.tensor([torch.prod(1 - s.betas[: i + 1]) for i in range(200)], dtype=torch.float64)
    torch.testing.assert_close(s.alphas_cumprod, ref)


def test_cosine_closed_form_and_cap():
    T, s_off = 1000, 0.008
    sched = NoiseSchedule.cosine(T)
    f = lambda u: math.cos((u / T + s_off) / (1 + s_off) * math.pi / 2) ** 2  # noqa: E731
    # alpha_bar_t = f(t+1)/f(0) wherever the cap is not active
    for t in [0, 10, 500, 900]:
        assert sched.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert sched.betas.max().item() == pytest.approx(0.999)


def test_derived_quantities():
    s = NoiseSchedule.linear(1000)
    ab = s.alphas_cumprod
    torch.testing.assert_close(s.sigmas, ((1 - ab) / ab).sqrt())
    torch.testing.assert_close(s.log_snr, torch.log(ab / (1 - ab)))
    torch.testing.assert_close(s.log_snr, -2 * torch.log(s.sigmas))
    assert torch.all(s.log_snr[1:] < s.log_snr[:-1])


@pytest.mark.parametrize("name", SCHEDULES)
def test_zero_terminal_snr_ends_at_zero_and_keeps_the_first_level(name):
    ours = NoiseSchedule.from_name(name, 1000).rescale_zero_terminal_snr()
    assert ours.alphas_cumprod[-1].item() == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(ours.alphas_cumprod[0], NoiseSchedule.from_name(name, 1000).alphas_cumprod[0])


@pytest.mark.parametrize("name", SCHEDULES)
def test_zero_terminal_snr_matches_diffusers(diffusers, name):
    ours = NoiseSchedule.from_name(name, 1000).rescale_zero_terminal_snr()
    rescale = diffusers.schedulers.scheduling_ddpm.rescale_zero_terminal_snr
    ref = rescale(NoiseSchedule.from_name(name, 1000).betas.float())
    torch.testing.assert_close(ours.betas.float(), ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 7, 50, 999, 1000])
def test_timesteps_match_diffusers(diffusers, spacing, steps):
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    ref.set_timesteps(steps)
    ours = timesteps(1000, steps, spacing)
    assert ours.tolist() == ref.timesteps.tolist()
    assert len(set(ours.tolist())) == steps, "respaced timesteps must be distinct"
    assert ours.tolist() == sorted(ours.tolist(), reverse=True)


@pytest.mark.parametrize("steps", [3, 7, 13, 50, 333])
def test_trailing_always_starts_at_the_last_timestep(steps):
    assert timesteps(1000, steps, "trailing")[0].item() == 999
    assert timesteps(1000, steps, "linspace")[0].item() == 999
    assert timesteps(1000, steps, "linspace")[-1].item() == 0


def test_bad_arguments_name_the_choices():
    with pytest.raises(ValueError, match="linear.*cosine"):
        NoiseSchedule.from_name("quadratic", 100)
    with pytest.raises(ValueError, match="steps <= 100"):
        timesteps(100, 101)
    with pytest.raises(ValueError, match="leading.*trailing"):
        timesteps(100, 10, "uniform")
    with pytest.raises(ValueError, match="positive integer"):
        NoiseSchedule.linear(0)
