import pytest
import torch

from difflab import NoiseSchedule, sample
from difflab.diffusion import posterior_table
from difflab.noise import generators_from_seeds
from tests.toy import exact_eps_model


def toy_model(x, t, **_):
    return torch.tanh(x) * 0.7 + 0.001 * t.to(x.dtype).reshape(-1, 1, 1, 1)


@pytest.mark.parametrize(
    ("sampler", "kwargs"),
    [
        ("ddpm", {"variance": "beta"}),
        ("ddpm", {"variance": "beta_tilde", "clip_x0": True}),
        ("ddim", {"eta": 0.0}),
        ("ddim", {"eta": 1.0}),
        ("ddim", {"simple_var": True}),
    ],
)
def test_sample_i_is_the_same_at_batch_1_and_16(sampler, kwargs):
    sched = NoiseSchedule.linear(200)
    seeds = list(range(100, 116))

    def run(idx):
        gens = generators_from_seeds([seeds[i] for i in idx])
        x_T = torch.stack([torch.randn((1, 6, 6), generator=g) for g in gens])
        return sample(toy_model, x_T, schedule=sched, sampler=sampler, steps=20, generator=gens, **kwargs)

    batch = run(range(16))
    for i in [0, 7, 15]:
        torch.testing.assert_close(run([i])[0], batch[i], rtol=0, atol=1e-6)
    torch.testing.assert_close(run(range(16)), batch, rtol=0, atol=0)  # same seed, same samples
    if sampler == "ddpm" or kwargs.get("eta") or kwargs.get("simple_var"):
        assert not torch.allclose(run([1])[0], batch[0])  # other seed, other sample


def seed000_generate(ddpm_betas, network, x, gen, beta_tilde=False):
    """seed 000's generate_new_images loop, verbatim but for the injected generator."""
    betas = ddpm_betas
    alphas = 1 - betas
    alpha_bars = torch.tensor([torch.prod(alphas[: i + 1]) for i in range(len(alphas))])
    n_samples = x.shape[0]
    for t in list(range(len(betas)))[::-1]:
        time_tensor = (torch.ones(n_samples, 1) * t).long()
        eta_theta = network(x, time_tensor.flatten())
        alpha_t = alphas[t]
        alpha_t_bar = alpha_bars[t]
        x = (1 / alpha_t.sqrt()) * (x - (1 - alpha_t) / (1 - alpha_t_bar).sqrt() * eta_theta)
        if t > 0:
            z = torch.randn(x.shape, generator=gen, dtype=x.dtype)
            beta_t = betas[t]
            sigma_t = beta_t.sqrt()
            if beta_tilde:
                prev_alpha_t_bar = alpha_bars[t - 1] if t > 0 else alphas[0]
                sigma_t = (((1 - prev_alpha_t_bar) / (1 - alpha_t_bar)) * beta_t).sqrt()
            x = x + sigma_t * z
    return x


@pytest.mark.parametrize("beta_tilde", [False, True])
def test_ddpm_reproduces_seed_000(beta_tilde):
    sched = NoiseSchedule.linear(200)
    x = torch.randn((4, 1, 5, 5), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = seed000_generate(sched.betas, toy_model, x, torch.Generator().manual_seed(1), beta_tilde)
    got = sample(
        toy_model,
        x,
        schedule=sched,
        sampler="ddpm",
        steps=200,
        variance="beta_tilde" if beta_tilde else "beta",
        generator=torch.Generator().manual_seed(1),
    )
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)


def seed002_ddim(alpha_bars, n_steps, net, x, ddim_step, eta, simple_var, gen):
    """seed 002's DDIM sample_backward, verbatim but for the injected generator."""
    if simple_var:
        eta = 1
    ts = torch.linspace(n_steps, 0, (ddim_step + 1)).to(torch.long)
    batch_size = x.shape[0]
    traj = []
    for i in range(1, ddim_step + 1):
        cur_t = ts[i - 1] - 1
        prev_t = ts[i] - 1
        ab_cur = alpha_bars[cur_t]
        ab_prev = alpha_bars[prev_t] if prev_t >= 0 else 1
        t_tensor = torch.tensor([cur_t] * batch_size, dtype=torch.long)
        eps = net(x, t_tensor)
        var = eta * (1 - ab_prev) / (1 - ab_cur) * (1 - ab_cur / ab_prev)
        noise = torch.randn(x.shape, generator=gen, dtype=x.dtype)
        first_term = (ab_prev / ab_cur) ** 0.5 * x
        second_term = ((1 - ab_prev - var) ** 0.5 - (ab_prev * (1 - ab_cur) / ab_cur) ** 0.5) * eps
        if simple_var:
            third_term = (1 - ab_cur / ab_prev) ** 0.5 * noise
        else:
            third_term = var**0.5 * noise
        x = first_term + second_term + third_term
        traj.append(x)
    return traj


@pytest.mark.parametrize(("eta", "simple_var"), [(0.0, False), (1.0, False), (1.0, True)])
def test_ddim_reproduces_seed_002(eta, simple_var):
    """Seed 002 draws noise on every step and, with simple_var, adds it on the final step too;
    difflab adds none when stepping to the clean image, so the final step is compared
    without it."""
    sched = NoiseSchedule.linear(1000)
    x = torch.randn((4, 1, 5, 5), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = seed002_ddim(
        sched.alphas_cumprod, 1000, toy_model, x, 20, eta, simple_var, torch.Generator().manual_seed(1)
    )
    got = []
    sample(
        toy_model,
        x,
        schedule=sched,
        sampler="ddim",
        steps=20,
        spacing="trailing",
        eta=eta,
        simple_var=simple_var,
        generator=torch.Generator().manual_seed(1),
        callback=lambda i, t, x_, x0: got.append(x_),
    )
    for a, b in zip(got[:-1], ref[:-1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    if not simple_var:
        torch.testing.assert_close(got[-1], ref[-1], rtol=1e-9, atol=1e-9)


def test_posterior_mean_equals_the_eps_form():
    """coef1 x_t + coef2 x0_hat (seed 002) == (x_t - beta/sqrt(1-abar) eps)/sqrt(alpha) (seed 000)."""
    sched = NoiseSchedule.cosine(300)
    table = posterior_table(sched)
    x, eps = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    for t in [1, 50, 299]:
        ab, a, b = sched.alphas_cumprod[t], sched.alphas[t], sched.betas[t]
        x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
        coef_form = table["coef1"][t] * x + table["coef2"][t] * x0
        eps_form = (x - b / (1 - ab).sqrt() * eps) / a.sqrt()
        torch.testing.assert_close(coef_form, eps_form)
    assert torch.isfinite(table["log_variance_clipped"]).all()


def test_callback_sees_every_step():
    sched = NoiseSchedule.linear(100)
    seen = []
    sample(
        exact_eps_model(sched),
        torch.randn(2, 1, 2, 2),
        schedule=sched,
        sampler="ddim",
        steps=10,
        callback=lambda i, t, x, x0: seen.append((i, t, x.shape, x0.shape)),
    )
    assert [s[0] for s in seen] == list(range(10))
    assert seen[0][1] == 99 and seen[-1][1] < 10


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sampler": "plms"}, "ddpm.*ddim"),
        ({"steps": 201}, "steps <= 200"),
        ({"eta": -0.1}, "eta must be >= 0"),
        ({"prediction": "noise"}, "eps.*x0.*v"),
        ({"spacing": "uniform"}, "leading.*trailing.*linspace"),
        ({"sampler": "ddpm", "variance": "learned"}, "beta.*beta_tilde"),
        ({"sampler": "ddpm", "eta": 0.5}, "ddim sampler only"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    sched = NoiseSchedule.linear(200)
    with pytest.raises(ValueError, match=match):
        sample(toy_model, torch.randn(1, 1, 2, 2), schedule=sched, **kwargs)


def test_wrong_model_output_shape_is_reported():
    sched = NoiseSchedule.linear(10)
    with pytest.raises(ValueError, match="shaped like its input"):
        sample(lambda x, t: x[:, :1], torch.randn(1, 3, 2, 2), schedule=sched, steps=2)
