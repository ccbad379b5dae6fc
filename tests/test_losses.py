import math

import pytest
import torch

from difflab import NoiseSchedule
from difflab.diffusion import Denoiser, q_sample
from difflab.losses import (
    bits_per_dim,
    diffusion_loss,
    discretized_gaussian_log_likelihood,
    min_snr_weight,
    normal_kl,
    prior_bpd,
    vlb_term,
)


def test_normal_kl_matches_torch_distributions():
    m1, m2 = torch.randn(50, dtype=torch.float64), torch.randn(50, dtype=torch.float64)
    lv1, lv2 = torch.randn(50, dtype=torch.float64), torch.randn(50, dtype=torch.float64)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()), torch.distributions.Normal(m2, (0.5 * lv2).exp())
    )
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), ref)


def test_discretized_likelihood_is_a_distribution_over_256_levels():
    levels = torch.linspace(-1, 1, 256, dtype=torch.float64)
    for mean, log_scale in [(0.0, -2.0), (0.7, -4.0), (-0.99, -1.0)]:
        p = discretized_gaussian_log_likelihood(
            levels, torch.full_like(levels, mean), torch.full_like(levels, log_scale)
        ).exp()
        assert p.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_vlb_terms_vanish_for_the_true_posterior():
    """A model that knows the noise gives the true posterior mean: KL(q || p) = 0 with beta-tilde."""
    sched = NoiseSchedule.linear(100)
    x0 = torch.rand(4, 1, 3, 3, dtype=torch.float64) * 2 - 1
    noise = torch.randn_like(x0)
    for t in [1, 50, 99]:
        x_t = q_sample(sched, x0, torch.full((4,), t), noise)
        exact = Denoiser(lambda x, tt, n=noise: n, sched, "eps")
        assert torch.allclose(exact(x_t, t).x0, x0)
        kl = vlb_term(exact, x0, t, noise, variance="beta_tilde")
        assert kl.abs().max().item() < 1e-9
        wrong = Denoiser(lambda x, tt, n=noise: n * 0.5, sched, "eps")
        assert (vlb_term(wrong, x0, t, noise) > 1e-4).all()


def test_bits_per_dim_of_a_perfect_model_is_the_decoder_and_prior_cost():
    sched = NoiseSchedule.linear(20)
    x0 = (torch.randint(0, 256, (2, 1, 2, 2)).double() / 127.5) - 1
    gen = torch.Generator().manual_seed(0)
    # an x0-predicting model that always returns the data: only L_0 and L_T remain
    model = Denoiser(lambda x, t: x0, sched, "x0")
    bpd = bits_per_dim(model, x0, generator=gen)
    assert torch.isfinite(bpd).all() and (bpd > 0).all()
    assert (bpd >= prior_bpd(sched, x0)).all()
    assert (bpd < 8).all()


def test_min_snr_weights():
    snr = torch.tensor([0.1, 1.0, 5.0, 50.0])
    torch.testing.assert_close(min_snr_weight(snr, "eps"), torch.tensor([1.0, 1.0, 1.0, 0.1]))
    torch.testing.assert_close(min_snr_weight(snr, "x0"), torch.tensor([0.1, 1.0, 5.0, 5.0]))
    torch.testing.assert_close(min_snr_weight(snr, "v"), snr.clamp(max=5) / (snr + 1))


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("loss", ["mse", "l1", "huber"])
def test_diffusion_loss_is_zero_for_the_exact_target(prediction, loss):
    sched = NoiseSchedule.cosine(100)
    x0, noise = torch.randn(8, 1, 4, 4), torch.randn(8, 1, 4, 4)
    t = torch.randint(0, 100, (8,))
    ab = sched.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    tgt = {"eps": noise, "x0": x0, "v": ab.sqrt() * noise - (1 - ab).sqrt() * x0}[prediction]
    exact = diffusion_loss(lambda x, tt: tgt, x0, t, noise, schedule=sched, prediction=prediction, loss=loss)
    assert exact.item() == pytest.approx(0.0, abs=1e-6)
    off = diffusion_loss(
        lambda x, tt: tgt + 0.5,
        x0,
        t,
        noise,
        schedule=sched,
        prediction=prediction,
        loss=loss,
        weighting="min-snr",
    )
    assert off.item() > 0.01
    with pytest.raises(ValueError, match="mse.*l1.*huber"):
        diffusion_loss(lambda x, tt: tgt, x0, t, noise, schedule=sched, loss="l2")


def test_l1_loss_is_seed_004s():
    pred, tgt = torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2)
    from difflab.losses import elementwise_loss

    assert elementwise_loss(pred, tgt, "l1").mean().item() == pytest.approx(
        torch.nn.functional.l1_loss(pred, tgt).item()
    )
    assert math.isfinite(elementwise_loss(pred, tgt, "huber").sum().item())


def hang_min_snr(snr: float, prediction: str, gamma: float) -> float:
    """Hang et al. 2023 (eq. 8 and sec. 3.4): min(SNR, gamma) on the x0 loss, which is SNR times
    the eps loss and SNR + 1 times the v loss."""
    return min(snr, gamma) / {"eps": snr, "x0": 1.0, "v": snr + 1.0}[prediction]


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("gamma", [5.0, 0.5])
@pytest.mark.parametrize("loss", ["mse", "l1"])
def test_min_snr_weights_each_timestep_by_hang_et_al(prediction, gamma, loss):
    """A model whose prediction is off by exactly `off` everywhere has loss err = off^2 (MSE) or
    |off| (L1) at every timestep, so the min-SNR loss of one sample at t is w(t) * err."""
    sched = NoiseSchedule.cosine(1000)
    g = torch.Generator().manual_seed(0)
    x0, noise = (torch.randn(1, 1, 4, 4, generator=g, dtype=torch.float64) for _ in range(2))
    off = 0.7
    err = off**2 if loss == "mse" else off
    seen = []
    for t in [0, 5, 50, 200, 400, 500, 600, 800, 999]:
        ab = float(sched.alphas_cumprod[t])
        a, b = math.sqrt(ab), math.sqrt(1 - ab)
        tgt = {"eps": noise, "x0": x0, "v": a * noise - b * x0}[prediction]
        kw = {"schedule": sched, "prediction": prediction, "loss": loss, "snr_gamma": gamma}
        tt = torch.tensor([t])
        weighted = diffusion_loss(lambda x, _, y=tgt: y + off, x0, tt, noise, weighting="min-snr", **kw)
        plain = diffusion_loss(lambda x, _, y=tgt: y + off, x0, tt, noise, **kw)
        assert plain.item() == pytest.approx(err, rel=1e-9)
        snr = ab / (1 - ab)
        assert weighted.item() == pytest.approx(hang_min_snr(snr, prediction, gamma) * err, rel=1e-9), t
        seen.append(snr > gamma)
    assert any(seen) and not all(seen)  # the clip is active at some timesteps and not at others
