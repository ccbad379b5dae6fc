"""Bits per dimension from the variational bound, checked on the Gaussian toy in closed form.

Data: 8-bit quantised samples of N(mu, s^2) per pixel, whose entropy H (bits per pixel) is a sum
over the 256 bins. The toy's exact denoiser E[x_0 | x_t] is linear in x_t, so every KL term
L_{t-1} of the bound has a closed-form expectation:

    E KL = 1/2 [ ln(sigma^2 / beta~) + beta~ / sigma^2 - 1 + coef2^2 E(x_0 - x0_hat)^2 / sigma^2 ]

with x_0 - x0_hat = (x_0 - mu)(1 - a k) - k b eps,  k = a s^2 / (a^2 s^2 + b^2).

The other two terms are checked the same way: the prior L_T = KL(N(a_T x_0, b_T^2) || N(0, 1)) =
1/2 [b_T^2 + a_T^2 x_0^2 - 1 - ln b_T^2] per pixel, and the decoder L_0 = -log P(bin of x_0) under
N(x0_hat, beta~_1) with x0_hat = mu + k (x_1 - a mu) at t = 0, written here with scipy's log_ndtr
(its expectation by Gauss-Hermite quadrature over the noise), so the whole bound has a closed form.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import log_ndtr, roots_hermitenorm

from difflab import NoiseSchedule
from difflab.diffusion import Denoiser, posterior
from difflab.losses import bits_per_dim, prior_bpd, vlb_term
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


def prior_kl_nats(sched: NoiseSchedule, x0: torch.Tensor) -> torch.Tensor:
    """KL(q(x_T | x_0) || N(0, 1)) per pixel, in nats."""
    ab = float(sched.alphas_cumprod[-1])
    return 0.5 * ((1 - ab) + ab * x0**2 - 1 - math.log(1 - ab))


def expected_prior_bits(sched: NoiseSchedule) -> float:
    centres, p = bin_probs()
    return float((p * prior_kl_nats(sched, centres)).sum()) / math.log(2)


def decoder_nll_nats(sched: NoiseSchedule, x0: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """-log P(bin of x_0 | N(x0_hat, beta~_1)) for the toy's exact x0_hat at t = 0; the bins are
    x_0 -+ 1/255, the two outermost extended to -+infinity."""
    ab = sched.alphas_cumprod.numpy()
    a, b = math.sqrt(ab[0]), math.sqrt(1 - ab[0])
    x0_hat = MU + a * S**2 / (a**2 * S**2 + b**2) * (a * x0 + b * eps - a * MU)
    std = math.sqrt((1 - ab[0]) / (1 - ab[1]) * (1 - ab[1] / ab[0]))
    upper, lower = (x0 + 1 / 255 - x0_hat) / std, (x0 - 1 / 255 - x0_hat) / std
    log_up, log_low = log_ndtr(upper), log_ndtr(lower)
    inner = log_up + np.log(-np.expm1(np.minimum(log_low - log_up, -1e-300)))
    return -np.where(x0 < -0.999, log_up, np.where(x0 > 0.999, log_ndtr(-lower), inner))


def expected_decoder_bits(sched: NoiseSchedule) -> float:
    centres, p = bin_probs()
    z, w = roots_hermitenorm(80)
    nll = decoder_nll_nats(sched, centres.numpy()[:, None], z[None, :]) @ (w / w.sum())
    return float((p.numpy() * nll).sum()) / math.log(2)


def expected_bound_bits(sched: NoiseSchedule) -> float:
    """E[L_T + sum_{t=1}^{T-1} L_{t-1} + L_0] for the exact denoiser, in bits per pixel."""
    middle = sum(expected_kl_bits(sched, t, "beta_tilde") for t in range(1, sched.T))
    return expected_prior_bits(sched) + middle + expected_decoder_bits(sched)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_prior_term_is_the_closed_form_kl(name):
    sched = NoiseSchedule.from_name(name, 200)
    x0 = torch.cat([quantised_gaussian(50, d=4), torch.full((1, 1, 1, 4), -1.0, dtype=torch.float64)])
    expected = prior_kl_nats(sched, x0).flatten(1).mean(1) / math.log(2)
    torch.testing.assert_close(prior_bpd(sched, x0), expected, rtol=1e-12, atol=1e-15)
    assert (expected > 0).all()


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_decoder_term_matches_an_independent_computation(name):
    sched = NoiseSchedule.from_name(name, 200)
    den = Denoiser(exact_eps_model(sched), sched, "eps")
    x0 = quantised_gaussian(4000, d=4)
    x0[:3] = torch.tensor([-1.0, 1.0, 1 / 127.5 - 1], dtype=x0.dtype).view(3, 1, 1, 1)  # both edge bins
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5), dtype=x0.dtype)
    got = vlb_term(den, x0, 0, noise)
    nll = decoder_nll_nats(sched, x0.numpy(), noise.numpy())
    expected = torch.from_numpy(nll).flatten(1).mean(1) / math.log(2)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    stderr = got.std().item() / math.sqrt(len(got))
    assert got.mean().item() == pytest.approx(expected_decoder_bits(sched), abs=4 * stderr)


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


def test_the_bound_is_its_closed_form_above_the_true_entropy_and_worse_models_score_worse():
    """L_T is ~0.14 bits and L_0 ~2.3 bits here: the tolerance (4 standard errors, ~0.04 bits)
    catches either one missing."""
    sched = NoiseSchedule.linear(100)
    x0 = quantised_gaussian(8000)
    _, p = bin_probs()
    entropy = float(-(p * p.log2()).sum())  # the data's true bits per pixel, in closed form
    bound = {}
    for label, mu in (("exact", MU), ("wrong", MU - 0.6)):
        den = Denoiser(exact_eps_model(sched, mu=mu), sched, "eps")
        bound[label] = bits_per_dim(den, x0, generator=torch.Generator().manual_seed(2))
    exact = bound["exact"]
    stderr = exact.std().item() / math.sqrt(len(exact))
    assert exact.mean().item() == pytest.approx(expected_bound_bits(sched), abs=4 * stderr)
    assert 4 * stderr < 0.5 * expected_prior_bits(sched)
    assert entropy < exact.mean().item()
    assert bound["wrong"].mean().item() > exact.mean().item() + 0.05


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
