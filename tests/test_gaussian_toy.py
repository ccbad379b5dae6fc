"""Accuracy against closed forms on the Gaussian toy problem (see toy.py)."""

import itertools

import pytest
import torch

from difflab import NoiseSchedule, q_sample, sample
from difflab.diffusion import Denoiser, q_mean_variance
from tests.toy import MU, S, exact_eps_model, exact_ode_solution

N = 10_000


def noise(seed, n=N):
    return torch.randn((n, 1, 1, 1), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("t", [0, 99, 500, 999])
def test_forward_process_matches_closed_form(t):
    sched = NoiseSchedule.linear(1000)
    x0 = MU + S * noise(0, 200_000)
    tt = torch.full((x0.shape[0],), t)
    xt = q_sample(sched, x0, tt, noise(1, 200_000))
    ab = sched.alphas_cumprod[t].item()
    mean, var = ab**0.5 * MU, ab * S**2 + (1 - ab)
    assert xt.mean().item() == pytest.approx(mean, abs=4 * (var / 200_000) ** 0.5)
    assert xt.var().item() == pytest.approx(var, rel=0.01)
    m, v = q_mean_variance(sched, torch.full((1, 1, 1, 1), MU, dtype=torch.float64), tt[:1])
    assert m.item() == pytest.approx(ab**0.5 * MU) and v.item() == pytest.approx(1 - ab)


def test_exact_denoiser_is_the_posterior_mean_of_noise():
    sched = NoiseSchedule.linear(1000)
    t = 300
    x0, eps = MU + S * noise(2, 400_000), noise(3, 400_000)
    xt = q_sample(sched, x0, torch.full((x0.shape[0],), t), eps)
    pred = exact_eps_model(sched)(xt, torch.full((x0.shape[0],), t))
    # the exact E[eps | x_t] has the least squared error of all predictors: residual is orthogonal to x_t
    resid = eps - pred
    assert abs((resid * xt).mean().item()) < 5e-3
    assert abs(resid.mean().item()) < 5e-3


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_denoiser_converts_every_prediction_type(prediction):
    """A model returning the toy's exact E[eps | x_t], E[x_0 | x_t] or v = a eps - b x_0 must give
    both posterior means in closed form: E[x_0 | x_t] = mu + a s^2 (x_t - a mu) / (a^2 s^2 + b^2)."""
    sched = NoiseSchedule.cosine(1000)
    x = noise(4, 16)
    t = torch.randint(0, 1000, (16,), generator=torch.Generator().manual_seed(5))

    def closed_forms(x_, t_):
        ab = sched.alphas_cumprod[t_].to(x_.dtype).view(-1, 1, 1, 1)
        a, b = ab.sqrt(), (1 - ab).sqrt()
        var = a**2 * S**2 + b**2
        eps, x0 = b * (x_ - a * MU) / var, MU + a * S**2 * (x_ - a * MU) / var
        return {"eps": eps, "x0": x0, "v": a * eps - b * x0}

    got = Denoiser(lambda x_, t_: closed_forms(x_, t_)[prediction], sched, prediction)(x, t)
    expected = closed_forms(x, t)
    torch.testing.assert_close(got.x0, expected["x0"], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got.eps, expected["eps"], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    ("sampler", "steps", "kwargs"),
    [
        ("ddpm", 1000, {"variance": "beta"}),
        ("ddpm", 1000, {"variance": "beta_tilde"}),
        ("ddim", 250, {"eta": 0.0}),
        ("ddim", 1000, {"eta": 1.0}),  # eta > 0 with few steps under-disperses: ancestral bias
    ],
)
def test_samples_match_the_data_distribution(sampler, steps, kwargs):
    sched = NoiseSchedule.linear(1000)
    x = sample(
        exact_eps_model(sched),
        noise(5).float(),
        schedule=sched,
        sampler=sampler,
        steps=steps,
        generator=torch.Generator().manual_seed(6),
        **kwargs,
    )
    assert x.mean().item() == pytest.approx(MU, rel=0.03)
    assert x.std().item() == pytest.approx(S, rel=0.03)


def test_ddim_error_against_the_exact_ode_shrinks_linearly():
    sched = NoiseSchedule.linear(1000)
    x_T = noise(7, 512)
    exact = exact_ode_solution(sched, x_T, 999)
    errors = []
    steps_list = [10, 20, 40, 80]
    for steps in steps_list:
        x = sample(
            exact_eps_model(sched), x_T, schedule=sched, sampler="ddim", steps=steps, spacing="trailing"
        )
        errors.append((x - exact).abs().max().item())
    orders = [torch.log2(torch.tensor(a / b)).item() for a, b in itertools.pairwise(errors)]
    assert all(0.8 < p < 1.3 for p in orders), (errors, orders)
    assert errors[-1] < 0.1 < errors[0]
