"""difflab's sigma samplers against diffusers' schedulers on the same model outputs and grid.

The schedule is shared in float64 (diffusers' tensors are overwritten with difflab's) and the model
is a deterministic function of (x_t, t). diffusers' schedulers take the raw model output; the VE
ones (Euler, Euler-ancestral, Heun) keep x in sigma scale and divide the model input by
sqrt(1 + sigma^2) in ``scale_model_input``, the VP ones (DPMSolverMultistep, UniPC) keep x_t.
Where difflab deliberately differs, the test says why:
- Starting point: diffusers starts the VE schedulers from ``init_noise_sigma`` = sigma_max (for
  trailing/linspace spacing), an approximation of sqrt(1 + sigma_max^2); difflab scales the
  unit-variance x_T exactly (x_sigma = x_T / sqrt(alpha_bar)). Both start from difflab's x here.
- diffusers keeps its sigma grids in float32, difflab in float64. The grids are compared to 1e-6,
  then both run on diffusers' float32-rounded grid (difflab's sampler functions take any grid) so
  that only the step algebra is compared. Trajectories are compared as the images
  x_t = x_sigma / sqrt(1 + sigma^2) (what difflab's callback reports), to rtol = atol = 1e-4.
- The VE schedulers are not compared on the cosine schedule: they compute dt = sigma_next - sigma
  in float32, which at its sigma_max ~ 2e4 is off by ~1e-3; that moves Euler's first step by
  ~1.5e-4 in image scale, and Heun's corrector multiplies it by sigma_max / sigma_1 ~ 2000.
  "sigmoid" (difflab's betas in a scheduler built as "linear") stands in for it.
- Karras grids: diffusers' DPMSolverMultistep and UniPC round the model timesteps (the sigma used
  in the update stays exact); difflab passes the fractional timestep unless ``discrete=True``,
  which reproduces diffusers. Euler/Heun pass fractional timesteps like difflab. On the cosine
  schedule the rounded Karras timesteps repeat (999 five times for 20 steps) and diffusers'
  step-index lookup skips steps: not compared (shown by a test).
- Final step: every difflab sampler steps to sigma = 0 with a first-order step (x = D), like
  k-diffusion and diffusers' ``final_sigmas_type="zero"``. diffusers' UniPC with bh1 has
  B(h) = h = inf there and returns NaN; the bh1 comparison stops one step short.
- Churn: difflab evaluates D at the churned point as in EDM's Algorithm 2 (checked against
  k-diffusion's loop); diffusers' Euler cannot (its model ran before ``step``), Heun has none.
- dpmpp-3m-sde at eta = 0 matches diffusers' DPM-Solver++ order 3 with solver_type="heun" (the
  order-2 warm-up step of k-diffusion's 3M uses the phi_2 weight, diffusers defaults to midpoint).
  diffusers' sde-dpmsolver++ order 3 has -0.5 in its D2 weight where k-diffusion has +0.5 (its
  ODE branch agrees); difflab follows k-diffusion, checked against a transcription of its loop
  with the same noise. k-diffusion's D2 weight is itself half the exact one (a test below shows it
  on a denoiser quadratic in lambda), which makes the 3M second order.
"""

import inspect
import math

import pytest
import torch

from difflab import NoiseSchedule
from difflab.diffusion import Denoiser, discrete_sigmas, t_to_sigma
from difflab.noise import NoiseSource
from difflab.samplers import (
    SAMPLERS,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_3m_sde,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
    sample_unipc,
    sigma_grid,
)

PRED = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
TOL = {"rtol": 1e-4, "atol": 1e-4}
VE_SCHEDULES = ["linear", "scaled_linear", "sigmoid"]  # not cosine: see the module docstring
VP_SCHEDULES = ["linear", "scaled_linear", "squaredcos_cap_v2"]
KARRAS_SCHEDULES = ["linear", "scaled_linear", "sigmoid"]  # not cosine: see the module docstring


def toy_model(x, t, **_):
    """Any deterministic function of (x_t, t) works as 'the same model outputs'."""
    tt = t.to(x.dtype).reshape(-1, 1, 1, 1) / 1000
    return torch.tanh(0.8 * x + 0.3 * torch.cos(3 * x + tt)) * (1 - 0.5 * tt)


class RecordingNoise(NoiseSource):
    """A NoiseSource that keeps its draws, to replay them into diffusers' SDE steps."""

    def __init__(self, generator):
        super().__init__(generator)
        self.draws = []

    def randn_like(self, x):
        z = super().randn_like(x)
        self.draws.append(z)
        return z


def make(cls, schedule, pred, **config):
    sched = NoiseSchedule.from_name(schedule, 1000)
    ref = cls(num_train_timesteps=1000, prediction_type=PRED[pred], **config)
    ref.betas = sched.betas.clone()
    ref.alphas = sched.alphas.clone()
    ref.alphas_cumprod = sched.alphas_cumprod.clone()
    if hasattr(ref, "lambda_t"):
        ref.alpha_t = ref.alphas_cumprod.sqrt()
        ref.sigma_t = (1 - ref.alphas_cumprod).sqrt()
        ref.lambda_t = ref.alpha_t.log() - ref.sigma_t.log()
    return sched, ref


def start_noise(seed=0):
    return torch.randn((3, 1, 4, 5), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def run_ours(fn, sched, pred, x, grid, *, noise=None, discrete=False, **kwargs):
    """difflab's trajectory as its callback reports it: x_t in VP scale after each step."""
    traj = []
    noise = noise or NoiseSource(torch.Generator().manual_seed(123))
    fn(
        Denoiser(toy_model, sched, pred, discrete=discrete),
        x,
        grid,
        noise=noise,
        callback=lambda i, t, x_, x0: traj.append(x_),
        **kwargs,
    )
    return traj


def run_ve_reference(ref, x_sigma, grid, *, record_every=None, **step_kwargs):
    """A VE scheduler's loop (Euler, Euler-ancestral, Heun), x_sigma rescaled to VP x_t after each
    (completed) step, with the noise level sigma_{k+1} of difflab's grid."""
    traj, x = [], x_sigma
    if "generator" in inspect.signature(ref.step).parameters:  # Heun draws nothing
        step_kwargs["generator"] = torch.Generator().manual_seed(123)
    for i, t in enumerate(ref.timesteps):
        inp = ref.scale_model_input(x, t)
        x = ref.step(toy_model(inp, t.expand(x.shape[0])), t, x, **step_kwargs).prev_sample
        if record_every is None or record_every(ref) or i == len(ref.timesteps) - 1:
            traj.append(x / math.sqrt(1 + float(grid[len(traj) + 1]) ** 2))
    return traj


def run_vp_reference(ref, x, noises=None):
    """A VP scheduler's loop (DPMSolverMultistep, UniPC)."""
    traj = []
    for i, t in enumerate(ref.timesteps):
        kwargs = {} if noises is None else {"variance_noise": noises[i] if i < len(noises) else 0 * x}
        x = ref.step(toy_model(x, t.expand(x.shape[0])), t, x, **kwargs).prev_sample
        traj.append(x)
    return traj


def assert_trajectories_close(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, **TOL)


def same_grid(ref, ours):
    """Check that diffusers' grid is difflab's (to float32 precision) and return diffusers'."""
    theirs = (ref if isinstance(ref, torch.Tensor) else ref.sigmas).double()
    torch.testing.assert_close(theirs, ours, rtol=1e-6, atol=0)
    return theirs


def ve_start(x, grid):
    return x * math.sqrt(1 + float(grid[0]) ** 2)


# ---- Euler, Euler-ancestral, Heun ----------------------------------------------------------
@pytest.mark.parametrize("schedule", VE_SCHEDULES)
@pytest.mark.parametrize("pred", ["eps", "x0", "v"])
@pytest.mark.parametrize(("grid_kind", "spacing", "steps"), [
    ("timesteps", "trailing", 25), ("timesteps", "leading", 30), ("karras", "linspace", 20)
])
def test_euler_matches_diffusers(diffusers, schedule, pred, grid_kind, spacing, steps):
    sched, ref = make(
        diffusers.EulerDiscreteScheduler, schedule, pred,
        timestep_spacing=spacing, use_karras_sigmas=grid_kind == "karras",
    )
    ref.set_timesteps(steps)
    grid = same_grid(ref, sigma_grid(sched, steps, grid_kind, spacing))
    x = start_noise()
    expected = run_ve_reference(ref, ve_start(x, grid), grid)
    assert_trajectories_close(run_ours(sample_euler, sched, pred, x, grid), expected)


def kdiffusion_churn_loop(denoise, x, sigmas, draws, second_order, s_churn, s_tmin, s_tmax):
    """k-diffusion's sample_euler / sample_heun (EDM Algorithm 2) transcribed, with the noise
    drawn where gamma > 0 taken from ``draws``."""
    draws = iter(draws)
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        gamma = min(s_churn / n, 2**0.5 - 1) if s_tmin <= s <= s_tmax else 0.0
        s_hat = s * (gamma + 1)
        if gamma > 0:
            x = x + next(draws) * (s_hat**2 - s**2) ** 0.5
        d = (x - denoise(x, s_hat)) / s_hat
        if second_order and s_next > 0:
            x_2 = x + d * (s_next - s_hat)
            d = (d + (x_2 - denoise(x_2, s_next)) / s_next) / 2
        x = x + d * (s_next - s_hat)
    return x


CHURN = {"s_churn": 10.0, "s_tmin": 0.5, "s_tmax": 20.0}


def churned_run(fn, pred):
    """difflab's churned trajectory end point and the noise it drew, on a 20-step trailing grid."""
    sched = NoiseSchedule.linear(1000)
    grid = sigma_grid(sched, 20, "timesteps", "trailing")
    x = start_noise(2)
    noise = RecordingNoise(torch.Generator().manual_seed(123))
    got = run_ours(fn, sched, pred, x, grid, noise=noise, **CHURN)[-1]
    return sched, grid, x, noise.draws, got


@pytest.mark.parametrize("fn", [sample_euler, sample_heun])
@pytest.mark.parametrize("pred", ["eps", "x0"])
def test_churn_follows_edm_algorithm_2(fn, pred):
    """EDM evaluates D at the churned point (x_hat, sigma_hat): difflab against k-diffusion's loop."""
    sched, grid, x, draws, got = churned_run(fn, pred)
    assert 0 < len(draws) < 20  # only where sigma is in [s_tmin, s_tmax]
    denoiser = Denoiser(toy_model, sched, pred)
    expected = kdiffusion_churn_loop(
        denoiser.at_sigma, ve_start(x, grid), grid, draws, fn is sample_heun, **CHURN
    )
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("pred", ["eps", "x0"])
def test_diffusers_euler_churn_is_not_edm_algorithm_2(diffusers, pred):
    """diffusers' Euler applies the churn inside ``step``, after the model ran on the un-churned
    x at sigma, and reuses that output at sigma_hat (its Heun has no churn), so it differs."""
    _, grid, x, _, got = churned_run(sample_euler, pred)
    _, ref = make(diffusers.EulerDiscreteScheduler, "linear", pred, timestep_spacing="trailing")
    ref.set_timesteps(20)
    theirs = run_ve_reference(ref, ve_start(x, grid), grid, **CHURN)[-1]
    assert (theirs - got).abs().max() > 1e-3


@pytest.mark.parametrize("schedule", ["linear", "sigmoid"])
@pytest.mark.parametrize("pred", ["eps", "v"])  # diffusers' Euler-ancestral has no x0 prediction
@pytest.mark.parametrize(("spacing", "steps"), [("trailing", 25), ("leading", 40)])
def test_euler_ancestral_matches_diffusers_with_the_same_noise(diffusers, schedule, pred, spacing, steps):
    """diffusers draws float64 noise from the same generator at every step; difflab draws at every
    step but the last (to sigma = 0, where diffusers' draw is multiplied by 0)."""
    sched, ref = make(diffusers.EulerAncestralDiscreteScheduler, schedule, pred, timestep_spacing=spacing)
    ref.set_timesteps(steps)
    grid = same_grid(ref, sigma_grid(sched, steps, "timesteps", spacing))
    x = start_noise(3)
    expected = run_ve_reference(ref, ve_start(x, grid), grid)
    assert_trajectories_close(run_ours(sample_euler_ancestral, sched, pred, x, grid), expected)


@pytest.mark.parametrize("schedule", VE_SCHEDULES)
@pytest.mark.parametrize("pred", ["eps", "x0", "v"])
@pytest.mark.parametrize(
    ("grid_kind", "spacing", "steps"), [("timesteps", "trailing", 15), ("karras", "linspace", 12)]
)
def test_heun_matches_diffusers(diffusers, schedule, pred, grid_kind, spacing, steps):
    """diffusers' Heun interleaves its 2N - 1 evaluations as separate ``step`` calls; its state
    is complete after each second-order call and after the final Euler step."""
    sched, ref = make(
        diffusers.HeunDiscreteScheduler, schedule, pred,
        timestep_spacing=spacing, use_karras_sigmas=grid_kind == "karras",
    )
    ref.set_timesteps(steps)
    assert len(ref.timesteps) == 2 * steps - 1
    grid = sigma_grid(sched, steps, grid_kind, spacing)
    ref_grid = torch.cat([ref.sigmas[::2], ref.sigmas[-1:]]).double()  # de-interleave
    grid = same_grid(ref_grid, grid)
    x = start_noise(4)
    expected = run_ve_reference(ref, ve_start(x, grid), grid, record_every=lambda r: r.state_in_first_order)
    assert_trajectories_close(run_ours(sample_heun, sched, pred, x, grid), expected)


# ---- DPM-Solver++ --------------------------------------------------------------------------
@pytest.mark.parametrize("pred", ["eps", "x0", "v"])
@pytest.mark.parametrize(("schedule", "grid_kind", "steps"), [
    *[(s, "timesteps", n) for s in VP_SCHEDULES for n in (10, 25)],
    *[(s, "karras", 20) for s in KARRAS_SCHEDULES],
])
def test_dpmpp_2m_matches_diffusers(diffusers, schedule, pred, grid_kind, steps):
    sched, ref = make(
        diffusers.DPMSolverMultistepScheduler, schedule, pred, algorithm_type="dpmsolver++",
        solver_order=2, timestep_spacing="trailing", use_karras_sigmas=grid_kind == "karras",
    )
    ref.set_timesteps(steps)
    grid = same_grid(ref, sigma_grid(sched, steps, grid_kind, "trailing"))
    x = start_noise(5)
    expected = run_vp_reference(ref, x)
    # diffusers rounds Karras timesteps: discrete=True
    discrete = grid_kind == "karras"
    assert_trajectories_close(run_ours(sample_dpmpp_2m, sched, pred, x, grid, discrete=discrete), expected)


def test_diffusers_karras_timesteps_repeat_on_the_cosine_schedule(diffusers):
    """Why Karras grids on squaredcos_cap_v2 are not compared: its sigma rises from ~600 to ~2e4
    over the last two timesteps, so diffusers' rounded Karras timesteps repeat 999 and 998, and its
    step-index lookup (the second match of a repeated timestep) then skips steps."""
    for cls in (diffusers.DPMSolverMultistepScheduler, diffusers.UniPCMultistepScheduler):
        _, ref = make(cls, "squaredcos_cap_v2", "eps", timestep_spacing="trailing", use_karras_sigmas=True)
        ref.set_timesteps(20)
        assert ref.timesteps.tolist()[:5] == [999] * 5


@pytest.mark.parametrize("pred", ["eps", "v"])
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize(("grid_kind", "steps"), [("timesteps", 20), ("karras", 15)])
def test_dpmpp_2m_sde_matches_diffusers_with_the_same_noise(diffusers, pred, solver_type, grid_kind, steps):
    sched, ref = make(
        diffusers.DPMSolverMultistepScheduler, "linear", pred, algorithm_type="sde-dpmsolver++",
        solver_order=2, solver_type=solver_type, timestep_spacing="trailing",
        use_karras_sigmas=grid_kind == "karras",
    )
    ref.set_timesteps(steps)
    grid = same_grid(ref, sigma_grid(sched, steps, grid_kind, "trailing"))
    x = start_noise(6)
    noise = RecordingNoise(torch.Generator().manual_seed(7))
    got = run_ours(
        sample_dpmpp_2m_sde, sched, pred, x, grid, noise=noise, discrete=grid_kind == "karras",
        solver_type=solver_type,
    )
    assert len(noise.draws) == steps - 1  # none on the step to sigma = 0
    assert_trajectories_close(got, run_vp_reference(ref, x, noise.draws))


@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("pred", ["eps", "x0", "v"])
def test_dpmpp_3m_at_eta_0_matches_diffusers_order_3(diffusers, schedule, pred):
    """With >= 15 steps diffusers uses order 3 up to the last step (< 15 it drops to order 2 on
    the second-to-last step), like k-diffusion's 3M; solver_type="heun" for the warm-up step."""
    sched, ref = make(
        diffusers.DPMSolverMultistepScheduler, schedule, pred, algorithm_type="dpmsolver++",
        solver_order=3, solver_type="heun", timestep_spacing="trailing",
    )
    ref.set_timesteps(20)
    grid = same_grid(ref, sigma_grid(sched, 20, "timesteps", "trailing"))
    x = start_noise(8)
    got = run_ours(sample_dpmpp_3m_sde, sched, pred, x, grid, eta=0.0)
    assert_trajectories_close(got, run_vp_reference(ref, x))


def kdiffusion_dpmpp_3m_sde(denoise, x, sigmas, draws, eta, s_noise):
    """k-diffusion's ``sample_dpmpp_3m_sde`` (k_diffusion/sampling.py) transcribed, its noise
    sampler replaced by ``draws``; returns x_sigma after every step."""
    draws = iter(draws)
    denoised_1 = denoised_2 = h_1 = h_2 = None
    out = []
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, float(sigmas[i]))
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0 = h_1 / h
                r1 = h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                r = h_1 / h
                d = (denoised - denoised_1) / r
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * d
            if eta:
                x = x + next(draws) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
        out.append(x)
    return out


@pytest.mark.parametrize("pred", ["eps", "v"])
@pytest.mark.parametrize(("eta", "s_noise"), [(1.0, 1.0), (0.5, 1.0), (1.0, 0.7), (0.0, 1.0)])
@pytest.mark.parametrize(("grid_kind", "steps"), [("karras", 12), ("timesteps", 20)])
def test_dpmpp_3m_sde_follows_k_diffusion_with_the_same_noise(pred, eta, s_noise, grid_kind, steps):
    """The whole trajectory, with the noise difflab drew replayed into k-diffusion's loop."""
    sched = NoiseSchedule.linear(1000)
    grid = sigma_grid(sched, steps, grid_kind, "trailing")
    x = start_noise(10)
    noise = RecordingNoise(torch.Generator().manual_seed(11))
    got = run_ours(sample_dpmpp_3m_sde, sched, pred, x, grid, noise=noise, eta=eta, s_noise=s_noise)
    assert len(noise.draws) == (steps - 1 if eta > 0 else 0)
    ref = kdiffusion_dpmpp_3m_sde(
        Denoiser(toy_model, sched, pred).at_sigma, ve_start(x, grid), grid, noise.draws, eta, s_noise
    )
    expected = [xs / math.sqrt(1 + float(s) ** 2) for xs, s in zip(ref, grid[1:], strict=True)]
    assert len(got) == len(expected) == steps
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_dpmpp_3m_sde_differs_from_diffusers_only_in_its_d2_weight():
    """The closed forms of the D2 weights against quadrature. k-diffusion's (difflab's) weight is
    int_0^h w(u) u^2/2 du / h^2 with w(u) = 2 e^{-2(h-u)} (the reverse-SDE kernel, eta = 1), i.e.
    1/2 - (e^{-H} - 1 + H)/H^2 with H = 2h: half the exact weight of D2 = h^2 D''/2 (see
    test_dpmpp_3m_sde_gives_the_quadratic_term_half_its_exact_weight). diffusers' sde-dpmsolver++
    order 3 uses (1 - e^{-H} - H)/H^2 - 1/2, exactly 1 less; its ODE branch equals k-diffusion's."""
    from scipy.integrate import quad

    for h in [0.05, 0.3, 1.0, 2.5]:
        big_h = 2 * h
        exact = quad(lambda u, h=h: 2 * math.exp(-2 * (h - u)) * u**2 / 2, 0, h)[0] / h**2
        difflab = 0.5 - (math.expm1(-big_h) + big_h) / big_h**2
        diffusers_weight = (1 - math.exp(-big_h) - big_h) / big_h**2 - 0.5
        assert difflab == pytest.approx(exact, rel=1e-9)
        assert diffusers_weight == pytest.approx(exact - 1, rel=1e-9)
        # and the ODE weight (eta = 0) both use: 1/2 - (e^{-h} - 1 + h)/h^2
        ode = quad(lambda u, h=h: math.exp(-(h - u)) * u**2 / 2, 0, h)[0] / h**2
        assert 0.5 - (math.expm1(-h) + h) / h**2 == pytest.approx(ode, rel=1e-9)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_dpmpp_3m_sde_gives_the_quadratic_term_half_its_exact_weight(eta):
    """With D(lambda) = c0 + c1 lambda + c2 lambda^2 (independent of x) the 3M's extrapolation
    through the last three D is exact: D(lambda_i + u) = D_i + (u/h) D1 + (u/h)^2 D2 with
    D2 = c2 h^2. The exact step of the SDE with this D is
    x_{i+1} = e^{-(1+eta)h} x_i + int_0^h w(u) D(lambda_i + u) du + sigma_{i+1} sqrt(1 - e^{-2 eta h}) z,
    w(u) = (1 + eta) e^{-(1+eta)(h-u)}, integrated here by quadrature. k-diffusion's update (and
    DPM-Solver's and diffusers' order 3 at eta = 0) weights D2 by phi_3 = W2 / 2, half its exact
    weight W2 = int_0^h w(u) (u/h)^2 du, and difflab follows it: so each step from the third on
    must be the exact step minus W2 D2 / 2. (This is why the 3M converges with order 2, not 3, in
    test_samplers_conformance.py: with the weight W2 it measures 3 to 4.)"""
    from scipy.integrate import quad

    sched = NoiseSchedule.linear(1000)
    log_sigmas = discrete_sigmas(sched).log()
    c0, c1, c2 = 0.2, -0.3, 0.15

    def model(x, t, **_):  # an x0-predicting model that knows only the noise level
        lam = -t_to_sigma(log_sigmas, t.cpu()).log().to(x.dtype).reshape(-1, 1, 1, 1)
        return (c0 + c1 * lam + c2 * lam**2).expand_as(x)

    grid = sigma_grid(sched, 12, "karras", "trailing")
    noise = RecordingNoise(torch.Generator().manual_seed(12))
    xs = []  # x_sigma after each step
    sample_dpmpp_3m_sde(
        Denoiser(model, sched, "x0"), start_noise(12), grid, noise=noise, eta=eta,
        callback=lambda i, t, x_, x0: xs.append(x_ * math.sqrt(1 + float(grid[i + 1]) ** 2)),
    )
    assert len(xs) == 12
    for i in range(2, 11):  # from the third step to the last one with sigma_{i+1} > 0
        s, s_next = float(grid[i]), float(grid[i + 1])
        h, lam, k = math.log(s / s_next), -math.log(s), 1 + eta

        def w(u, h=h, k=k):
            return k * math.exp(-k * (h - u))

        drift = quad(lambda u, lam=lam, w=w: w(u) * (c0 + c1 * (lam + u) + c2 * (lam + u) ** 2), 0, h)[0]
        w2 = quad(lambda u, h=h, w=w: w(u) * (u / h) ** 2, 0, h)[0]
        z = noise.draws[i] if eta > 0 else 0.0
        exact = math.exp(-k * h) * xs[i - 1] + drift + s_next * math.sqrt(-math.expm1(-2 * eta * h)) * z
        torch.testing.assert_close(xs[i], exact - w2 / 2 * c2 * h**2, rtol=1e-9, atol=1e-9)
        assert w2 / 2 * c2 * h**2 > 1e-4  # the two weights are told apart


# ---- UniPC ---------------------------------------------------------------------------------
@pytest.mark.parametrize("pred", ["eps", "x0", "v"])
@pytest.mark.parametrize(("schedule", "variant", "order", "grid_kind", "steps"), [
    *[(s, *case) for s in VP_SCHEDULES for case in [
        ("bh2", 2, "timesteps", 10), ("bh2", 2, "timesteps", 25), ("bh1", 2, "timesteps", 12),
        ("bh2", 3, "timesteps", 12), ("bh2", 1, "timesteps", 8),
    ]],
    *[(s, "bh2", 2, "karras", 15) for s in KARRAS_SCHEDULES],
])
def test_unipc_matches_diffusers(diffusers, schedule, pred, variant, order, grid_kind, steps):
    """For bh1, B(h) = h is infinite on the step to sigma = 0 and diffusers' last step is NaN
    (inf * 0); difflab's last step is first order (x = D) for every variant."""
    sched, ref = make(
        diffusers.UniPCMultistepScheduler, schedule, pred, solver_order=order, solver_type=variant,
        timestep_spacing="trailing", use_karras_sigmas=grid_kind == "karras",
    )
    ref.set_timesteps(steps)
    grid = same_grid(ref, sigma_grid(sched, steps, grid_kind, "trailing"))
    x = start_noise(9)
    got = run_ours(
        sample_unipc, sched, pred, x, grid, discrete=grid_kind == "karras", order=order, variant=variant
    )
    expected = run_vp_reference(ref, x)
    if variant == "bh1":
        assert torch.isnan(expected[-1]).all() and torch.isfinite(got[-1]).all()
        got, expected = got[:-1], expected[:-1]
    # both report the predicted x_{i+1} after step i; its UniC correction happens one step later
    assert_trajectories_close(got, expected)


def test_every_sigma_sampler_is_in_the_parity_suite():
    covered = {"euler", "euler-ancestral", "heun", "dpmpp-2m", "dpmpp-2m-sde", "dpmpp-3m-sde", "unipc"}
    assert set(SAMPLERS) - {"ddpm", "ddim"} == covered
