"""The sigma samplers on the Gaussian toy problem (tests/toy.py), where the denoiser and the
probability-flow ODE have closed forms.

The exact denoiser here is exact at every noise level, also between the schedule's discrete ones:
the model maps the (fractional) timestep it receives back to sigma with ``t_to_sigma``, the inverse
of the interpolation ``Denoiser.at_sigma`` uses, so the samplers see D(x; sigma) exactly.

In sigma space (x_sigma = x_0 + sigma eps, data N(mu, s^2)) the ODE keeps
(x_sigma - mu) / sqrt(s^2 + sigma^2) constant. Every sampler ends with a first-order step from the
grid's smallest sigma to 0 (x = D), so the reference for the convergence orders is the exact ODE
solution down to sigma_min followed by that same exact denoising step; against the ODE solution all
the way to 0 (toy.exact_ode_solution) this leaves a floor of (1 - s/sqrt(s^2 + sigma_min^2)) |x - mu|
~ 2e-4 |x - mu| for the linear schedule, checked separately.
"""

import itertools
import math

import pytest
import torch

from difflab import NoiseSchedule, sample
from difflab.diffusion import discrete_sigmas, t_to_sigma
from tests.toy import MU, S, exact_eps_model, exact_ode_solution

SCHED = NoiseSchedule.linear(1000)
SIGMAS = discrete_sigmas(SCHED)
SIGMA_MIN, SIGMA_MAX = float(SIGMAS[0]), float(SIGMAS[-1])
STEPS = [5, 10, 20, 40]


def continuous_exact_model(schedule, prediction="eps", mu=MU, s=S):
    """The exact E[eps | x_t] (or x0 / v) at the noise level of a fractional timestep t."""
    log_sigmas = discrete_sigmas(schedule).log()

    def model(x, t, **_):
        sigma = t_to_sigma(log_sigmas, t.cpu()).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        ab = 1 / (1 + sigma**2)
        a, b = ab.sqrt(), (1 - ab).sqrt()
        eps = b * (x - a * mu) / (a**2 * s**2 + b**2)
        x0 = (x - b * eps) / a
        return {"eps": eps, "x0": x0, "v": a * eps - b * x0}[prediction]

    return model


def noise(seed, n, dtype=torch.float64):
    return torch.randn((n, 1, 1, 1), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def reference_to_sigma_min(x_T):
    """Exact ODE from sigma_max to sigma_min, then the exact denoiser D(.; sigma_min)."""
    x_max = x_T * math.sqrt(1 + SIGMA_MAX**2)
    x_min = MU + (x_max - MU) * math.sqrt(S**2 + SIGMA_MIN**2) / math.sqrt(S**2 + SIGMA_MAX**2)
    return MU + S**2 / (S**2 + SIGMA_MIN**2) * (x_min - MU)


DETERMINISTIC = [
    # sampler, options, grids, minimum empirical order between 20 and 40 steps
    ("euler", {}, ("karras", "log-snr"), 0.8),
    ("heun", {}, ("karras", "log-snr"), 1.7),
    ("dpmpp-2m", {}, ("karras", "log-snr"), 1.7),
    ("unipc", {}, ("karras", "log-snr"), 1.7),  # UniC raises UniP-2 to order 3: measured ~3
    ("unipc", {"variant": "bh1"}, ("karras", "log-snr"), 1.7),
    # order 3 with a 1st-order start: global order 2; on Karras 20 -> 40 is pre-asymptotic
    ("dpmpp-3m-sde", {"eta": 0.0}, ("log-snr",), 1.7),
]


@pytest.mark.parametrize(
    ("sampler", "options", "grid", "min_order"),
    [(s, o, g, p) for s, o, grids, p in DETERMINISTIC for g in grids],
)
def test_convergence_order_against_the_exact_ode(sampler, options, grid, min_order):
    x_T = noise(7, 64)
    ref = reference_to_sigma_min(x_T)
    errors = []
    for steps in STEPS:
        x = sample(
            continuous_exact_model(SCHED), x_T, schedule=SCHED, sampler=sampler, steps=steps,
            sigmas=grid, **options,
        )
        errors.append((x - ref).abs().max().item())
    orders = [math.log2(a / b) for a, b in itertools.pairwise(errors)]
    assert orders[-1] >= min_order, (errors, orders)
    assert errors[-1] < errors[0] / 4, (errors, orders)
    if min_order > 1:  # and clearly better than Euler at 40 steps
        assert errors[-1] < 0.2 * 0.12, (errors, orders)


def test_the_final_step_to_zero_leaves_only_the_sigma_min_floor():
    x_T = noise(8, 64)
    model = continuous_exact_model(SCHED)
    x = sample(model, x_T, schedule=SCHED, sampler="unipc", steps=1000, sigmas="karras")
    assert (x - reference_to_sigma_min(x_T)).abs().max() < 1e-6  # the ODE part is solved
    exact = exact_ode_solution(SCHED, x_T, 999)
    floor = (1 - S / math.sqrt(S**2 + SIGMA_MIN**2)) * (exact - MU).abs().max().item()
    err = (x - exact).abs().max().item()
    assert err == pytest.approx(floor, rel=0.01), (err, floor)


def test_euler_on_the_timestep_grid_is_ddim():
    """DDIM (eta = 0) is Euler's method on the VE ODE (Karras et al. 2022, sec. 3)."""
    x_T = noise(9, 32)
    model = exact_eps_model(SCHED)
    for spacing in ["trailing", "leading"]:
        ddim = sample(model, x_T, schedule=SCHED, sampler="ddim", steps=20, spacing=spacing)
        euler = sample(model, x_T, schedule=SCHED, sampler="euler", steps=20, spacing=spacing, discrete=True)
        torch.testing.assert_close(euler, ddim, rtol=0, atol=1e-10)


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_euler_ancestral_on_the_timestep_grid_is_ddim_with_the_same_eta_and_noise(eta):
    """sigma_up^2 / (1 + sigma_next^2) is DDIM's eta^2 (1-ab_s)/(1-ab_t) (1 - ab_t/ab_s), and both
    draw one z per step except the last."""
    x_T = noise(10, 32)
    model = exact_eps_model(SCHED)
    kw = {"schedule": SCHED, "steps": 25, "eta": eta}
    ddim = sample(model, x_T, sampler="ddim", generator=torch.Generator().manual_seed(3), **kw)
    anc = sample(
        model, x_T, sampler="euler-ancestral", discrete=True, generator=torch.Generator().manual_seed(3), **kw
    )
    torch.testing.assert_close(anc, ddim, rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    ("sampler", "same_as"),
    [("euler-ancestral", "euler"), ("dpmpp-2m-sde", "dpmpp-2m")],
)
def test_sde_samplers_at_eta_0_are_their_ode_samplers(sampler, same_as):
    x_T = noise(11, 16)
    kw = {"schedule": SCHED, "steps": 15, "sigmas": "karras"}
    a = sample(continuous_exact_model(SCHED), x_T, sampler=sampler, eta=0.0, **kw)
    b = sample(continuous_exact_model(SCHED), x_T, sampler=same_as, **kw)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "sampler", ["euler", "euler-ancestral", "heun", "dpmpp-2m", "dpmpp-2m-sde", "dpmpp-3m-sde", "unipc"]
)
@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_every_prediction_type_gives_the_same_samples(sampler, prediction):
    x_T = noise(12, 16)
    kw = {"schedule": SCHED, "sampler": sampler, "steps": 12, "sigmas": "karras"}
    ref = sample(continuous_exact_model(SCHED), x_T, generator=torch.Generator().manual_seed(1), **kw)
    got = sample(
        continuous_exact_model(SCHED, prediction), x_T, prediction=prediction,
        generator=torch.Generator().manual_seed(1), **kw,
    )
    torch.testing.assert_close(got, ref, rtol=1e-7, atol=1e-7)


STOCHASTIC = [
    # sampler, steps, grid, options
    ("euler-ancestral", 500, "karras", {}),  # ancestral steps under-disperse unless small
    ("dpmpp-2m-sde", 50, "karras", {}),
    ("dpmpp-2m-sde", 50, "karras", {"solver_type": "heun"}),
    ("dpmpp-3m-sde", 50, "karras", {}),
    ("heun", 50, "timesteps", {"s_churn": 40.0}),
    ("heun", 50, "karras", {"s_churn": 80.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003}),
]


@pytest.mark.parametrize(("sampler", "steps", "grid", "options"), STOCHASTIC)
def test_stochastic_samplers_reproduce_the_data_distribution(sampler, steps, grid, options):
    n = 10_000
    x = sample(
        continuous_exact_model(SCHED), noise(5, n, torch.float32), schedule=SCHED, sampler=sampler,
        steps=steps, sigmas=grid, generator=torch.Generator().manual_seed(6), **options,
    )
    assert x.mean().item() == pytest.approx(MU, abs=4 * S / n**0.5)  # 4 standard errors: 0.02
    assert x.std().item() == pytest.approx(S, rel=0.04)
