"""difflab's DDPM and DDIM against diffusers' schedulers on the same model outputs.

The schedule is shared in float64 (diffusers' tensors are overwritten with difflab's) so the test
checks the step algebra itself; schedule construction is checked in test_schedules.py.
Where difflab deliberately differs, the test says why:
- DDPM: diffusers adds noise on the final step whenever that step's timestep is > 0 (trailing or
  linspace respacing with the ``fixed_large`` variance); difflab never adds noise when stepping to
  the clean image. Trajectories are compared up to that step.
- DDIM: diffusers takes the previous timestep as ``t - T // steps``, which is wrong whenever the
  respaced grid is not uniform (trailing/linspace with T % steps != 0); difflab takes the next
  timestep of the list. Parity is checked where the two coincide.
"""

import pytest
import torch

from difflab import NoiseSchedule, timesteps
from difflab.diffusion import Denoiser
from difflab.noise import NoiseSource
from difflab.samplers import sample_ddim, sample_ddpm

PRED = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
SCHEDULES = ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"]


def toy_model(x, t, **_):
    """Any deterministic function of (x_t, t) works as 'the same model outputs'."""
    tt = t.to(x.dtype).reshape(-1, 1, 1, 1) / 1000
    return torch.tanh(0.8 * x + 0.3 * torch.cos(3 * x + tt)) * (1 - 0.5 * tt)


def shared_float64(ref, sched):
    ref.betas = sched.betas.clone()
    ref.alphas = sched.alphas.clone()
    ref.alphas_cumprod = sched.alphas_cumprod.clone()
    if hasattr(ref, "final_alpha_cumprod"):
        ref.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return ref


def start_noise(seed=0):
    return torch.randn((3, 1, 4, 5), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def run_reference(ref, x, steps, **step_kwargs):
    traj = []
    gen = torch.Generator().manual_seed(123)
    for t in ref.timesteps:
        out = toy_model(x, t.expand(x.shape[0]))
        x = ref.step(out, t, x, generator=gen, **step_kwargs).prev_sample
        traj.append(x)
    return traj


def run_ours(fn, sched, pred, x, ts, **kwargs):
    traj = []
    fn(
        Denoiser(toy_model, sched, pred),
        x,
        ts,
        noise=NoiseSource(torch.Generator().manual_seed(123)),
        callback=lambda i, t, x_, x0: traj.append(x_),
        **kwargs,
    )
    return traj


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("pred", ["eps", "x0", "v"])
@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize(
    ("spacing", "steps"), [("leading", 40), ("trailing", 40), ("linspace", 40), ("trailing", 37)]
)
def test_ddpm_matches_diffusers(diffusers, schedule, pred, variance, clip, spacing, steps):
    check_ddpm(diffusers, schedule, pred, variance, clip, spacing, steps)


@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("pred", ["eps", "v"])
@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_ddpm_full_chain_matches_diffusers(diffusers, schedule, pred, variance):
    check_ddpm(diffusers, schedule, pred, variance, False, "leading", 1000)


def check_ddpm(diffusers, schedule, pred, variance, clip, spacing, steps):
    sched = NoiseSchedule.from_name(schedule, 1000)
    ref = diffusers.DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule=schedule,
        prediction_type=PRED[pred],
        variance_type="fixed_large" if variance == "beta" else "fixed_small",
        clip_sample=clip,
        timestep_spacing=spacing,
    )
    shared_float64(ref, sched)
    ref.set_timesteps(steps)
    ts = timesteps(1000, steps, spacing)
    assert ts.tolist() == ref.timesteps.tolist()
    x = start_noise()
    expected = run_reference(ref, x, steps)
    got = run_ours(sample_ddpm, sched, pred, x, ts, variance=variance, clip_x0=clip)
    n = len(got)
    if variance == "beta" and ts[-1] > 0:
        n -= 1  # diffusers adds noise on the step to the clean image; difflab does not
    for a, b in zip(got[:n], expected[:n], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("pred", ["eps", "x0", "v"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize(("spacing", "steps"), [("leading", 50), ("trailing", 50), ("leading", 25)])
def test_ddim_matches_diffusers(diffusers, schedule, pred, eta, clip, spacing, steps):
    check_ddim(diffusers, schedule, pred, eta, clip, spacing, steps)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("pred", ["eps", "x0", "v"])
@pytest.mark.parametrize(("spacing", "steps"), [("linspace", 1000), ("trailing", 1000)])
def test_ddim_eta0_full_trajectory_matches_diffusers(diffusers, schedule, pred, spacing, steps):
    check_ddim(diffusers, schedule, pred, 0.0, False, spacing, steps)


def check_ddim(diffusers, schedule, pred, eta, clip, spacing, steps):
    sched = NoiseSchedule.from_name(schedule, 1000)
    ref = diffusers.DDIMScheduler(  # diffusers' DDIM lacks "sigmoid"; its betas are overwritten anyway
        num_train_timesteps=1000,
        beta_schedule="linear" if schedule == "sigmoid" else schedule,
        prediction_type=PRED[pred],
        clip_sample=clip,
        timestep_spacing=spacing,
        set_alpha_to_one=True,
    )
    shared_float64(ref, sched)
    ref.set_timesteps(steps)
    ts = timesteps(1000, steps, spacing)
    assert ts.tolist() == ref.timesteps.tolist()
    x = start_noise(1)
    expected = run_reference(ref, x, steps, eta=eta, use_clipped_model_output=True)
    got = run_ours(sample_ddim, sched, pred, x, ts, eta=eta, clip_x0=clip)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)


def test_diffusers_ddim_previous_timestep_is_off_grid_where_difflab_is_not(diffusers):
    """The documented difference: with linspace spacing and T % steps != 0, diffusers' DDIM steps
    to t - T // steps, a timestep that is not on its own grid."""
    ref = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing="linspace")
    ref.set_timesteps(30)
    grid = set(ref.timesteps.tolist())
    prevs = [t - 1000 // 30 for t in ref.timesteps.tolist()[:-1]]
    assert any(p not in grid for p in prevs)
    ours = timesteps(1000, 30, "linspace").tolist()
    assert ours == ref.timesteps.tolist()  # difflab steps along exactly this grid
