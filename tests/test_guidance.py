"""Classifier-free guidance on a two-class Gaussian toy with exact conditional and unconditional
denoisers, against an independent integration of the guided probability-flow ODE."""

import math
from itertools import pairwise

import numpy as np
import pytest
import torch

from difflab import NoiseSchedule, sample
from difflab.diffusion import discrete_sigmas, t_to_sigma
from difflab.guidance import CFGModel, Guidance, concat_cond, rescale_guided
from difflab.samplers import SAMPLERS

MUS, S = (-1.0, 1.0), 0.3  # class 0 ~ N(-1, 0.3^2), class 1 ~ N(1, 0.3^2); label 2 is the null class
SCHED = NoiseSchedule.linear(1000)
LOG_SIGMAS = discrete_sigmas(SCHED).log()


def exact_eps(x, ab, label):
    """E[eps | x_t] for class ``label`` (0, 1) or the 50/50 mixture (label 2)."""
    a, b = ab.sqrt(), (1 - ab).sqrt()
    v = a**2 * S**2 + b**2
    eps = [b * (x - a * mu) / v for mu in MUS]
    logit = (x * a * (MUS[1] - MUS[0]) - a**2 * (MUS[1] ** 2 - MUS[0] ** 2) / 2) / v
    w1 = torch.sigmoid(logit)
    mix = (1 - w1) * eps[0] + w1 * eps[1]
    label = label.reshape(-1, *([1] * (x.ndim - 1)))
    return torch.where(label == 0, eps[0], torch.where(label == 1, eps[1], mix))


def toy_model(x, t, class_labels=None):
    """The exact eps network: ab from the (possibly fractional) timestep's sigma."""
    sigma = t_to_sigma(LOG_SIGMAS, t.cpu()).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    labels = torch.full((len(x),), 2) if class_labels is None else class_labels
    return exact_eps(x, 1 / (1 + sigma**2), labels)


NULL = {"class_labels": torch.full((4000,), 2)}


def guided(w, label, n=4000, **kw):
    return CFGModel(toy_model, Guidance(w, **kw), {"class_labels": torch.full((n,), 2)}, SCHED), {
        "class_labels": torch.full((n,), label)}


def x_T(n=4000, seed=0):
    return torch.randn(n, 1, 1, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def reference_ode(x_T_: np.ndarray, w: float, label: int, steps: int = 4000) -> np.ndarray:
    """RK4 on dx/dsigma = eps_w(x / sqrt(1 + sigma^2), sigma) in the VE variable x = x_t sqrt(1 + sigma^2),
    from the first timestep's sigma to 0, written here independently of difflab's samplers."""
    def eps_w(x_ve, sigma):
        ab = 1 / (1 + sigma**2)
        xt = torch.from_numpy(x_ve * math.sqrt(ab))
        abt = torch.tensor(ab, dtype=torch.float64)
        c = exact_eps(xt, abt, torch.full((len(xt),), label)).numpy()
        u = exact_eps(xt, abt, torch.full((len(xt),), 2)).numpy()
        return u + w * (c - u)

    sigma_max = float(LOG_SIGMAS[-1].exp())
    sigmas = np.concatenate([np.exp(np.linspace(np.log(sigma_max), np.log(1e-4), steps)), [0.0]])
    x = x_T_ * math.sqrt(1 + sigma_max**2)
    for s0, s1 in pairwise(sigmas):
        h = s1 - s0
        k1 = eps_w(x, s0)
        k2 = eps_w(x + h / 2 * k1, s0 + h / 2)
        k3 = eps_w(x + h / 2 * k2, s0 + h / 2)
        k4 = eps_w(x + h * k3, s1)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def ddim(model, cond, steps=500, x=None):
    return sample(model, x_T() if x is None else x, schedule=SCHED, sampler="ddim", steps=steps, cond=cond)


@pytest.mark.parametrize("label", [0, 1])
def test_guidance_1_is_the_class_distribution(label):
    x = ddim(*guided(1.0, label))
    assert abs(float(x.mean()) - MUS[label]) < 0.03
    assert abs(float(x.std()) / S - 1) < 0.03


def test_guidance_0_is_the_mixture():
    x = ddim(*guided(0.0, 1))
    assert abs(float(x.mean())) < 0.05
    assert abs(float(x.std()) / math.sqrt(S**2 + 1.0) - 1) < 0.03
    assert 0.45 < float((x > 0).double().mean()) < 0.55


def test_guidance_0_and_1_are_exactly_the_branches():
    model, cond = guided(0.0, 1, n=8)
    x, t = x_T(8), torch.full((8,), 500)
    assert torch.equal(model(x, t, **cond), toy_model(x, t, **model.uncond))
    model, cond = guided(1.0, 1, n=8)
    assert torch.equal(model(x, t, **cond), toy_model(x, t, **cond))


@pytest.mark.parametrize("w", [2.0, 4.0])
def test_larger_guidance_follows_the_guided_ode(w):
    x = x_T(2000)
    got = ddim(*guided(w, 1, n=2000), x=x).flatten().numpy()
    ref = reference_ode(x.flatten().numpy(), w, 1)
    assert np.sqrt(np.mean((got - ref) ** 2)) < 0.01
    assert abs(got.mean() - ref.mean()) < 0.005
    class_1 = ddim(*guided(1.0, 1, n=2000), x=x).flatten().numpy()
    assert got.mean() > class_1.mean() + 0.01  # pushed away from class 0 at -1
    assert (got < 0).mean() < (class_1 < 0).mean()


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_guides_and_counts_two_evaluations(sampler):
    steps = 50 if sampler != "ddpm" else 1000
    model, cond = guided(3.0, 0, n=500)
    out = sample(model, x_T(500), schedule=SCHED, sampler=sampler, steps=steps, cond=cond, return_nfe=True)
    per_step = {"heun": (2 * steps - 1) / steps}.get(sampler, 1)
    assert out.nfe == round(2 * steps * per_step)
    mean = float(out.x.mean())
    if sampler in ("ddim", "euler", "heun", "dpmpp-2m", "unipc"):  # the guided ODE, from the same noise
        assert abs(mean - reference_ode(x_T(500).flatten().numpy(), 3.0, 0, steps=1000).mean()) < 0.025
    else:  # the guided SDE has other marginals than the ODE; both push class 0 away from class 1
        assert mean < MUS[0] - 0.05


def test_batched_equals_sequential_and_trivial_options_equal_plain():
    x, t = x_T(16), torch.full((16,), 300)
    cond = {"class_labels": torch.full((16,), 1)}
    uncond = {"class_labels": torch.full((16,), 2)}
    plain = CFGModel(toy_model, Guidance(3.0), uncond, SCHED)(x, t, **cond)
    sequential = CFGModel(toy_model, Guidance(3.0, batched=False), uncond, SCHED)(x, t, **cond)
    torch.testing.assert_close(plain, sequential, rtol=0, atol=1e-12)
    covering = CFGModel(toy_model, Guidance(3.0, interval=(0.0, 1e9)), uncond, SCHED)(x, t, **cond)
    no_rescale = CFGModel(toy_model, Guidance(3.0, rescale=0.0), uncond, SCHED)(x, t, **cond)
    assert torch.equal(plain, covering) and torch.equal(plain, no_rescale)
    u, c = toy_model(x, t, **uncond), toy_model(x, t, **cond)
    torch.testing.assert_close(plain, u + 3.0 * (c - u))


def test_interval_guides_only_inside_its_sigmas():
    calls = []

    def spy(x, t, class_labels=None):
        calls.append((float(t_to_sigma(LOG_SIGMAS, t[:1])[0]), len(x)))
        return toy_model(x, t, class_labels)

    model = CFGModel(spy, Guidance(3.0, interval=(0.5, 5.0)), {"class_labels": torch.full((4,), 2)}, SCHED)
    out = sample(model, x_T(4), schedule=SCHED, sampler="ddim", steps=30, cond={"class_labels": torch.ones(4,
                 dtype=torch.long)}, return_nfe=True)
    guided_calls = [s for s, b in calls if b == 8]
    assert guided_calls and all(0.5 <= s <= 5.0 for s in guided_calls)
    assert all(not 0.5 <= s <= 5.0 for s, b in calls if b == 4)
    assert out.nfe == 30 + len(guided_calls)


def test_rescale_matches_the_std_of_the_conditional_branch():
    g = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 3
    c = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    full = rescale_guided(g, c, 1.0)
    torch.testing.assert_close(full.std(dim=(1, 2, 3)), c.std(dim=(1, 2, 3)))
    torch.testing.assert_close(rescale_guided(g, c, 0.7), 0.7 * full + 0.3 * g)


def test_negative_prompts_of_another_length_are_padded_with_masked_tokens():
    a = {"context": torch.ones(2, 5, 3)}
    b = {"context": torch.ones(2, 3, 3)}
    both = concat_cond(a, b)["context"]
    assert both.shape == (4, 5, 3) and both[2:, 3:].abs().sum() == 0
    with pytest.raises(ValueError, match="same conditioning keys"):
        concat_cond(a, {"class_labels": torch.zeros(2)})


def test_bad_guidance_is_refused():
    for kwargs, match in [({"scale": -1}, ">= 0"), ({"rescale": 1.5}, r"\[0, 1\]"),
                          ({"interval": (2.0, 1.0)}, "lo < hi")]:
        with pytest.raises(ValueError, match=match):
            Guidance(**kwargs)
