"""Bits per dimension from the variational bound, checked on the Gaussian toy in closed form.

Data: 8-bit quantised samples of N(mu, s^2) per pixel, whose entropy H (bits per pixel) is a sum
over the 256 bins. The toy's exact denoiser E[x_0 | x_t] is linear in x_t, so every KL term
L_{t-1} of the bound has a closed-form expectation:

    E KL = 1/2 [ ln(sigma^2 / beta~) + beta~ / sigma^2 - 1 + coef2^2 E(x_0 - x0_hat)^2 / sigma^2 ]

with x_0 - x0_hat = (x_0 - mu)(1 - a k) - k b eps,  k = a s^2 / (a^2 s^2 + b^2).
"""

from __future__ import annotations

import math

import pytest
import torch

from difflab import NoiseSchedule
from difflab.diffusion import Denoiser, posterior
from difflab.losses import bits_per_dim, vlb_term
from tests.toy import MU, S, exact_eps_model


def bin_probs(mu: float = MU, s: float = S) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin centres in [-1, 1] and their probabilities under N(mu, s^2) rounded to 8 bits."""
    centres = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    cdf = torch.special.ndtr((centres + 1 / 255 - mu) / s)
    p = torch.diff(torch.cat([cdf.new_zeros(1), cdf]))
    p[-1] = 1 - cdf[-2]
    return centres, p


def quantised_gaussian(n: int, d: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    y = MU + S * torch.randn(n, 1, 1, d, dtype=torch.float64, generator=g)
    return ((y + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1


def expected_kl_bits(sched: NoiseSchedule, t: int, variance: str) -> float:
    centres, p = bin_probs()
    m2 = float((p * (centres - MU) ** 2).sum())
    ab = sched.alphas_cumprod
    a, b = math.sqrt(ab[t]), math.sqrt(1 - ab[t])
    post = posterior(ab[t], ab[t - 1])
    beta_tilde, var = float(post.beta_tilde), float(post.variance(variance))
    k = a * S**2 / (a**2 * S**2 + b**2)
    err2 = m2 * (1 - a * k) ** 2 + (k * b) ** 2
    kl = 0.5 * (math.log(var / beta_tilde) + beta_tilde / var - 1 + float(post.coef2) ** 2 * err2 / var)
    return kl / math.log(2)


@pytest.mark.parametrize("variance", ["beta_tilde", "beta"])
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_vlb_terms_match_their_closed_form_expectation(name, variance):
    sched = NoiseSchedule.from_name(name, 200)
    den = Denoiser(exact_eps_model(sched), sched, "eps")
    x0 = quantised_gaussian(20_000)
    g = torch.Generator().manual_seed(1)
    for t in (1, 5, 40, 150, 199):
        noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        mc = vlb_term(den, x0, t, noise, variance=variance).mean().item()
        assert mc == pytest.approx(expected_kl_bits(sched, t, variance), rel=0.03, abs=1e-7), t


def test_vlb_term_with_per_sample_timesteps_equals_scalar_calls():
    sched = NoiseSchedule.cosine(50)
    den = Denoiser(exact_eps_model(sched, mu=0.0), sched, "eps")
    x0 = quantised_gaussian(6, d=4)
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 3, 0, 17, 49, 1])
    together = vlb_term(den, x0, t, noise)
    for i, ti in enumerate(t.tolist()):
        alone = vlb_term(den, x0[i : i + 1], ti, noise[i : i + 1])
        torch.testing.assert_close(together[i : i + 1], alone)


def test_the_bound_is_above_the_true_entropy_and_worse_models_score_worse():
    sched = NoiseSchedule.linear(100)
    x0 = quantised_gaussian(2000)
    _, p = bin_probs()
    entropy = float(-(p * p.log2()).sum())  # the data's true bits per pixel, in closed form
    bound = {}
    for label, mu in (("exact", MU), ("wrong", MU - 0.6)):
        den = Denoiser(exact_eps_model(sched, mu=mu), sched, "eps")
        bound[label] = bits_per_dim(den, x0, generator=torch.Generator().manual_seed(2)).mean().item()
    assert entropy < bound["exact"] < entropy + 3.0
    assert bound["wrong"] > bound["exact"] + 0.05


def test_stratified_estimate_is_unbiased():
    sched = NoiseSchedule.cosine(400)
    den = Denoiser(exact_eps_model(sched), sched, "eps")
    x0 = quantised_gaussian(4000)
    full = bits_per_dim(den, x0, generator=torch.Generator().manual_seed(3))
    strat = bits_per_dim(den, x0, generator=torch.Generator().manual_seed(4), timesteps=12)
    assert strat.mean().item() == pytest.approx(full.mean().item(), abs=0.05)
    assert strat.std().item() < 4 * full.std().item()
    with pytest.raises(ValueError, match="timesteps"):
        bits_per_dim(den, x0[:2], timesteps=0)
