"""Classifier guidance (Dhariwal & Nichol 2021, Algorithms 1 and 2): the gradient against finite
differences; on the two-class Gaussian toy of test_guidance, the exact classifier p(y | x_t)
guiding the exact unconditional denoiser reproduces the class-conditional model (eps correction)
and Algorithm 1's mean shift (DDPM), and larger scales follow the guided ODE; the classifier's
training run, the pipeline, the CLI and their one-line errors."""

import csv
import json
import math

import pytest
import torch

from difflab import Denoiser, sample
from difflab.classifier_guidance import (
    ClassifierGuidance,
    ClassifierGuidedModel,
    guidance_mode,
    log_prob_grad,
)
from difflab.classifier_run import Classifier, ClassifierTrainConfig, load_classifier
from difflab.cli import main
from difflab.data import DataConfig
from difflab.diffusion import target, to_x0_eps
from difflab.guidance import CFGModel, Guidance
from difflab.io import save_weights
from difflab.nets import UNetConfig, build_net
from difflab.nets.classifier import ClassifierConfig, NoisyClassifier, default_classifier_config
from difflab.noise import NoiseSource
from difflab.pipeline import load
from difflab.run_config import TrainConfig
from difflab.samplers import SAMPLERS, sample_ddpm
from difflab.train.classifier import split_indices, train_classifier
from tests.test_guidance import LOG_SIGMAS, MUS, SCHED, S, reference_ode, toy_model, x_T

# ---- the toy's exact classifier, written from Bayes' rule --------------------------------------


def toy_alpha_bar(t):
    """alpha_bar of a (possibly fractional) timestep, as the toy model maps t to sigma."""
    from difflab.diffusion import t_to_sigma

    sigma = t_to_sigma(LOG_SIGMAS, t.detach().cpu().reshape(-1)).reshape(-1, 1, 1, 1)
    return 1 / (1 + sigma**2)


def toy_classifier(x, t):
    """log N(x_t; a mu_y, a^2 S^2 + b^2) per class as logits (equal priors; the shared
    normaliser cancels in the softmax): p(y | x_t) exactly."""
    ab = toy_alpha_bar(t).to(x.dtype)
    var = ab * S**2 + (1 - ab)
    logits = [-((x - ab.sqrt() * mu) ** 2) / (2 * var) for mu in MUS]
    return torch.stack([lg.flatten(1).sum(1) for lg in logits], dim=1)


def toy_grad(x, t, label):
    """d/dx log p(y | x_t) in closed form: (1 - p(y | x)) * d(logit_y - logit_other)/dx."""
    ab = toy_alpha_bar(t).to(x.dtype)
    a, var = ab.sqrt(), ab * S**2 + (1 - ab)
    other = 1 - label
    dlogit = a * (MUS[label] - MUS[other]) / var
    logit = (-((x - a * MUS[label]) ** 2) + (x - a * MUS[other]) ** 2) / (2 * var)
    return (1 - torch.sigmoid(logit)) * dlogit


def uncond(x, t, **_):
    return toy_model(x, t)  # label 2: the 50/50 mixture


def guided(scale, label, n=4000, mode="eps", model=uncond, prediction="eps", **kw):
    labels = torch.full((n,), label)
    return ClassifierGuidedModel(model, toy_classifier, labels, ClassifierGuidance(scale, mode), SCHED,
                                 prediction, **kw)


# ---- the gradient ------------------------------------------------------------------------------


def random_classifier(seed=0):
    """A small NoisyClassifier in float64 with every weight random (the zero-initialised head and
    residual convs would make the gradient trivially 0)."""
    torch.manual_seed(seed)
    net = NoisyClassifier(ClassifierConfig(num_classes=3, base_channels=8, channel_mult=(1, 2), groups=4,
                                           image_size=8)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return net.eval()


def test_gradient_of_the_noise_aware_classifier_matches_finite_differences():
    net = random_classifier()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 8, 8, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 17, 90])
    labels = torch.tensor([2, 0, 1])
    log_p, grad = log_prob_grad(net, x, t, labels)

    def f(x_):
        return torch.log_softmax(net(x_, t), dim=1)[torch.arange(3), labels]

    torch.testing.assert_close(log_p, f(x).detach())
    for _ in range(3):
        v = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        h = 1e-5
        fd = (f(x + h * v) - f(x - h * v)) / (2 * h)
        torch.testing.assert_close((grad * v).flatten(1).sum(1), fd.detach(), rtol=1e-6, atol=1e-8)
        assert fd.abs().max() > 1e-3, "a flat classifier would test nothing"


def test_toy_classifier_gradient_by_autograd_matches_its_closed_form():
    x, t = x_T(64), torch.full((64,), 400)
    for label in (0, 1):
        _, grad = log_prob_grad(toy_classifier, x, t, torch.full((64,), label))
        torch.testing.assert_close(grad, toy_grad(x, t, label), rtol=1e-10, atol=1e-12)


def test_eps_correction_is_minus_sqrt_one_minus_alpha_bar_times_scale_times_the_gradient():
    x, t = x_T(64), torch.full((64,), 250)
    ab = SCHED.alphas_cumprod[250]
    for s in (0.5, 3.0):
        delta = guided(s, 1, n=64)(x, t) - uncond(x, t)
        torch.testing.assert_close(delta, -s * (1 - ab).sqrt() * toy_grad(x, t, 1), rtol=1e-10, atol=1e-12)


# ---- the toy: scale 1 is the class-conditional model ----------------------------------------


@pytest.mark.parametrize("t", [0, 10, 300, 999])
def test_scale_1_of_the_exact_classifier_is_exactly_the_conditional_denoiser(t):
    x, tt = x_T(256), torch.full((256,), t)
    for label in (0, 1):
        got = guided(1.0, label, n=256)(x, tt)
        torch.testing.assert_close(got, toy_model(x, tt, torch.full((256,), label)), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("label", [0, 1])
def test_ddim_with_the_eps_correction_samples_the_class_distribution(label):
    x = sample(guided(1.0, label), x_T(), schedule=SCHED, sampler="ddim", steps=500)
    assert abs(float(x.mean()) - MUS[label]) < 0.03
    assert abs(float(x.std()) / S - 1) < 0.03


@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
@pytest.mark.parametrize("label", [0, 1])
def test_ddpm_with_the_mean_shift_samples_the_class_distribution(label, variance):
    grid = torch.arange(999, -1, -1)
    model = guided(1.0, label, mode="mean", timesteps=grid, variance=variance)
    x = sample(model, x_T(), schedule=SCHED, sampler="ddpm", steps=1000, variance=variance,
               generator=torch.Generator().manual_seed(1))
    assert abs(float(x.mean()) - MUS[label]) < 0.03
    assert abs(float(x.std()) / S - 1) < 0.04
    unguided = sample(uncond, x_T(), schedule=SCHED, sampler="ddpm", steps=1000, variance=variance,
                      generator=torch.Generator().manual_seed(1))
    assert abs(float(unguided.mean())) < 0.05  # the mixture: guidance did the work


class ZeroNoise(NoiseSource):
    def randn_like(self, x):
        return torch.zeros_like(x)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_one_ddpm_step_moves_the_mean_by_scale_times_sigma_times_the_gradient(prediction, variance):
    """Algorithm 1, line 4: mu + s Sigma grad log p(y | x_t), on a respaced grid, for every
    prediction type, computed here from Ho et al.'s eps form of the mean."""
    grid = torch.tensor([999, 700, 420, 137, 3])

    def net(x, t, **_):  # the mixture's exact denoiser, speaking ``prediction``
        ab = SCHED.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        x0, eps = to_x0_eps("eps", uncond(x, t), x, ab)
        return target(prediction, x0, eps, ab)

    s = 2.5
    model = guided(s, 1, n=64, mode="mean", model=net, prediction=prediction, timesteps=grid,
                   variance=variance)
    x = x_T(64) * 0.8
    means = []
    sample_ddpm(Denoiser(model, SCHED, prediction), x.clone(), grid, noise=ZeroNoise(), variance=variance,
                callback=lambda i, t, x_new, x0: means.append(x_new))
    x_t = x_T(64) * 0.8
    for i, (t, nxt) in enumerate(zip(grid.tolist(), [*grid.tolist()[1:], -1], strict=True)):
        ab_t = float(SCHED.alphas_cumprod[t])
        ab_s = 1.0 if nxt < 0 else float(SCHED.alphas_cumprod[nxt])
        alpha, tt = ab_t / ab_s, torch.full((64,), t)
        beta = 1 - alpha
        sigma2 = beta if variance == "beta" else (1 - ab_s) / (1 - ab_t) * beta
        mu = (x_t - beta / math.sqrt(1 - ab_t) * uncond(x_t, tt)) / math.sqrt(alpha)  # Ho et al., eq. 11
        expected = mu + s * sigma2 * toy_grad(x_t, tt, 1)
        torch.testing.assert_close(means[i], expected, rtol=1e-7, atol=1e-9)
        x_t = expected


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_the_correction_is_made_on_eps_whatever_the_network_predicts(prediction):
    def net(x, t, **_):
        ab = SCHED.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        return target(prediction, *to_x0_eps("eps", uncond(x, t), x, ab), ab)

    x, t = x_T(32), torch.full((32,), 600)
    got = Denoiser(guided(2.0, 0, n=32, model=net, prediction=prediction), SCHED, prediction)(x, t)
    want = Denoiser(guided(2.0, 0, n=32), SCHED, "eps")(x, t)
    torch.testing.assert_close(got.eps, want.eps, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(got.x0, want.x0, rtol=1e-8, atol=1e-10)


# ---- larger scales -----------------------------------------------------------------------------


@pytest.mark.parametrize("s", [2.0, 4.0])
def test_larger_scales_follow_the_guided_ode_and_push_further(s):
    """With the exact classifier, eps - s b grad log p(y|x) = eps_u + s (eps_c - eps_u): the
    guided ODE of test_guidance's independent RK4 reference."""
    x = x_T(1000)
    got = sample(guided(s, 1, n=1000), x, schedule=SCHED, sampler="ddim", steps=500).flatten().numpy()
    ref = reference_ode(x.flatten().numpy(), s, 1)
    assert abs(got.mean() - ref.mean()) < 0.005
    assert float(((got - ref) ** 2).mean() ** 0.5) < 0.01
    at_1 = sample(guided(1.0, 1, n=1000), x, schedule=SCHED, sampler="ddim", steps=500).flatten().numpy()
    assert got.mean() > at_1.mean() + 0.1 and (got < 0.8).mean() < (at_1 < 0.8).mean()  # away from class 0


def test_larger_scales_push_ddpm_further_too():
    grid = torch.arange(999, -1, -1)
    shares = []
    for s in (1.0, 3.0):
        model = guided(s, 0, n=1000, mode="mean", timesteps=grid)
        x = sample(model, x_T(1000), schedule=SCHED, sampler="ddpm", steps=1000,
                   generator=torch.Generator().manual_seed(2))
        shares.append((float(x.mean()), float((x > 0).double().mean())))
    assert shares[1][0] < shares[0][0] - 0.01 and shares[1][1] <= shares[0][1]


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_with_scale_1_samples_as_the_conditional_model_and_counts_classifier_passes(sampler):
    """The eps correction of the exact classifier is the conditional model at every call, so any
    sampler (here all in mode "eps", ddpm included) gives the conditional model's samples from
    the same noise."""
    steps = 40
    model = guided(1.0, 0, n=500)
    out = sample(model, x_T(500), schedule=SCHED, sampler=sampler, steps=steps, return_nfe=True,
                 generator=torch.Generator().manual_seed(0))
    cond = {"class_labels": torch.zeros(500, dtype=torch.long)}
    want = sample(toy_model, x_T(500), schedule=SCHED, sampler=sampler, steps=steps, return_nfe=True,
                  cond=cond, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.x, want.x, rtol=1e-7, atol=1e-7)
    assert out.nfe == want.nfe == model.classifier_evals  # one classifier forward+backward per denoiser call


@pytest.mark.parametrize("sampler", ["euler", "dpmpp-2m"])
def test_fractional_timesteps_of_the_karras_grid_get_their_own_alpha_bar(sampler):
    cond = {"class_labels": torch.ones(300, dtype=torch.long)}
    got = sample(guided(1.0, 1, n=300), x_T(300), schedule=SCHED, sampler=sampler, steps=15, sigmas="karras")
    want = sample(toy_model, x_T(300), schedule=SCHED, sampler=sampler, steps=15, sigmas="karras", cond=cond)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-7)


def test_composes_with_classifier_free_guidance_and_counts_both():
    n, w, s = 16, 3.0, 2.0
    cfg = CFGModel(toy_model, Guidance(w), {"class_labels": torch.full((n,), 2)}, SCHED)
    model = ClassifierGuidedModel(cfg, toy_classifier, torch.full((n,), 1), ClassifierGuidance(s), SCHED)
    x, t = x_T(n), torch.full((n,), 500)
    cond = {"class_labels": torch.full((n,), 1)}
    u, c = toy_model(x, t), toy_model(x, t, cond["class_labels"])
    b = (1 - SCHED.alphas_cumprod[500]).sqrt()
    torch.testing.assert_close(model(x, t, **cond), u + w * (c - u) - s * b * toy_grad(x, t, 1))
    model.classifier_evals = 0
    out = sample(model, x_T(n), schedule=SCHED, sampler="ddim", steps=20, cond=cond, return_nfe=True)
    assert out.nfe == 40 and model.classifier_evals == 20


def test_scale_0_is_the_unguided_network_without_a_classifier_pass():
    x, t = x_T(8), torch.full((8,), 100)
    model = guided(0.0, 1, n=8)
    assert torch.equal(model(x, t), uncond(x, t)) and model.classifier_evals == 0


def test_no_correction_where_alpha_bar_is_zero():
    """At zero terminal SNR x_t says nothing about y: the v output is left alone (a correction
    there would divide by a_t = 0)."""
    from difflab import NoiseSchedule

    sched = NoiseSchedule.linear(1000).rescale_zero_terminal_snr()
    labels = torch.zeros(4, dtype=torch.long)
    model = ClassifierGuidedModel(lambda x, t, **_: torch.zeros_like(x), toy_classifier, labels,
                                  ClassifierGuidance(3.0), sched, "v")
    x = x_T(4)
    assert torch.equal(model(x, torch.full((4,), 999)), torch.zeros_like(x))
    near = model(x, torch.full((4,), 998))
    assert torch.isfinite(near).all() and near.abs().min() > 0


def test_mode_and_option_errors():
    assert [guidance_mode(s) for s in ("ddpm", "ddim", "euler")] == ["mean", "eps", "eps"]
    with pytest.raises(ValueError, match=">= 0"):
        ClassifierGuidance(-1.0)
    with pytest.raises(ValueError, match="timesteps"):
        guided(1.0, 0, mode="mean")
    model = guided(1.0, 0, n=4, mode="mean", timesteps=[999, 500])
    with pytest.raises(ValueError, match="not on the DDPM grid"):
        model(x_T(4), torch.full((4,), 700))
    with pytest.raises(ValueError, match=r"logits \[B, classes\]"):
        zeros = torch.zeros(4, dtype=torch.long)
        log_prob_grad(lambda x, t: x.flatten(), x_T(4), zeros, zeros)


# ---- the network and its config ---------------------------------------------------------------


def test_classifier_config_round_trips_and_checks():
    cfg = default_classifier_config(1, 28, 10)
    assert cfg.channel_mult == (1, 2, 4) and ClassifierConfig.from_json(cfg.to_json()) == cfg
    run = ClassifierTrainConfig(net=cfg, schedule="linear", T=200, class_names=("a", "b"))
    assert ClassifierTrainConfig.from_json(run.to_json()) == run
    with pytest.raises(ValueError, match="ClassifierConfig.attention_resolutions"):
        ClassifierConfig(attention_resolutions=(7,))
    with pytest.raises(ValueError, match="num_classes >= 2"):
        ClassifierConfig(num_classes=1)
    with pytest.raises(ValueError, match="holdout"):
        ClassifierTrainConfig(holdout=1.0)


def test_classifier_depends_on_x_and_t_and_takes_any_size():
    net = random_classifier().float()
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([5, 5])
    out = net(x, t)
    assert out.shape == (2, 3)
    assert not torch.allclose(out, net(x, torch.tensor([60, 60])))
    assert not torch.allclose(out, net(x.flip(-1), t))
    free = NoisyClassifier(ClassifierConfig(num_classes=4, channel_mult=(1, 2, 4)))
    assert free(torch.randn(1, 1, 13, 13), torch.tensor([0.5])).shape == (1, 4)
    with pytest.raises(ValueError, match="expects 1x8x8"):
        net(torch.randn(1, 1, 9, 9), torch.tensor([1]))


# ---- training -----------------------------------------------------------------------------------

T = 100


@pytest.fixture(scope="module")
def clf_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("clf") / "clf"
    code = main(["train-classifier", "--data", "digits", "--out", str(out), "--steps", "150", "--T", str(T),
                 "--no-progress"])
    assert code == 0
    return out


def test_train_classifier_writes_its_run_and_beats_chance_at_small_t(clf_run):
    assert {p.name for p in clf_run.iterdir()} >= {"config.json", "model.safetensors", "log.jsonl",
                                                    "accuracy.csv", "accuracy.png"}
    cfg = json.loads((clf_run / "config.json").read_text())
    assert (cfg["schedule"], cfg["T"], cfg["zero_terminal_snr"]) == ("cosine", T, False)
    assert cfg["class_names"] == [str(i) for i in range(10)] and cfg["data"]["image_size"] == 8
    rows = list(csv.DictReader((clf_run / "accuracy.csv").open()))
    ts = [int(r["t"]) for r in rows]
    acc = [float(r["accuracy"]) for r in rows]
    assert ts[0] == 0 and ts[-1] == T - 1 and len(rows) == 10
    assert all(int(r["n"]) == 180 for r in rows)  # 10% of 1,797 digits held out
    assert acc[0] > 0.1 + 0.3, f"accuracy at t=0 is {acc[0]}, chance is 0.1"
    assert acc[0] > acc[-1] + 0.2 and abs(acc[-1] - 0.1) < 0.1  # pure noise: chance
    assert acc[5] > 0.1 + 0.15, f"accuracy at alpha_bar {rows[5]['alpha_bar']} is {acc[5]}: noise-aware?"
    log = [json.loads(line) for line in (clf_run / "log.jsonl").read_text().splitlines()]
    assert log[-1]["accuracy_vs_t"][0]["accuracy"] == pytest.approx(acc[0], abs=1e-6)
    assert log[0]["loss"] > log[-2]["loss"]


def test_held_out_split_is_fixed_and_disjoint():
    a, b = split_indices(1797, 0.1, 0)
    assert len(b) == 180 and len(a) + len(b) == 1797 and not set(a.tolist()) & set(b.tolist())
    assert torch.equal(split_indices(1797, 0.1, 0)[1], b)
    assert not torch.equal(split_indices(1797, 0.1, 1)[1], b)


def test_training_never_sees_the_held_out_images_and_the_table_uses_only_them(tmp_path, monkeypatch):
    from difflab.data import ImageDataset

    seen: dict[str, list[int]] = {"train": [], "eval": []}
    original = ImageDataset.batch

    def spy(self, indices, generator=None, device=None, flip=None):
        seen["eval" if flip is False else "train"].extend(torch.as_tensor(indices).tolist())
        return original(self, indices, generator, device, flip)

    monkeypatch.setattr(ImageDataset, "batch", spy)
    cfg = ClassifierTrainConfig(data=DataConfig(source="digits", limit=200), T=20, steps=12, batch_size=32,
                                eval_timesteps=2)
    result = train_classifier(cfg, tmp_path / "c", progress=False, log=lambda s: None)
    train_idx, held = split_indices(200, 0.1, 0)
    assert set(seen["train"]) <= set(train_idx.tolist()) and len(set(seen["train"])) > 150
    assert set(seen["eval"]) == set(held.tolist()) and len(seen["eval"]) == 2 * 20
    assert [r.t for r in result.accuracy] == [0, 19]


def test_the_classifier_trains_on_noised_images_at_uniform_timesteps(tmp_path, monkeypatch):
    """x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps: near t = T the inputs are unit noise
    (mean 0, std 1), near t = 0 they are the digits (mostly the -1 background)."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = NoisyClassifier.forward

    def spy(self, x, t):
        if self.training:
            seen.append((x.detach().clone(), torch.as_tensor(t).clone()))
        return original(self, x, t)

    monkeypatch.setattr(NoisyClassifier, "forward", spy)
    cfg = ClassifierTrainConfig(data=DataConfig(source="digits", limit=300), T=50, steps=20, batch_size=64,
                                eval_timesteps=2)
    train_classifier(cfg, tmp_path / "c", progress=False, log=lambda s: None)
    x = torch.cat([a for a, _ in seen]).flatten(1)
    t = torch.cat([b for _, b in seen])
    assert len(t) == 20 * 64 and t.min() == 0 and t.max() == 49 and abs(float(t.double().mean()) - 24.5) < 2
    late, early = x[t >= 48], x[t <= 1]
    assert abs(float(late.mean())) < 0.1 and abs(float(late.std()) - 1) < 0.1
    assert float(early.mean()) < -0.3


def test_train_classifier_refuses_unlabelled_data_and_an_existing_run(clf_run, tmp_path, capsys):
    assert main(["train-classifier", "--out", str(clf_run), "--data", "digits", "--steps", "1"]) == 1
    assert "already holds a run" in capsys.readouterr().err
    (tmp_path / "imgs").mkdir()
    from PIL import Image

    for i in range(3):
        Image.new("L", (8, 8), i * 50).save(tmp_path / "imgs" / f"{i}.png")
    assert main(["train-classifier", "--out", str(tmp_path / "c"), "--data", f"folder:{tmp_path / 'imgs'}",
                 "--steps", "1"]) == 1
    assert "labelled data" in capsys.readouterr().err


# ---- the pipeline and the CLI ------------------------------------------------------------------


def diffusion_run(folder, T_=T, image_size=8, num_classes=0, seed=0):
    """A run folder of an untrained tiny UNet (its zero output woken with random weights)."""
    net_cfg = UNetConfig(in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, groups=4,
                         image_size=image_size, num_classes=num_classes)
    cfg = TrainConfig(data=DataConfig(source="digits", image_size=image_size, channels=1), net=net_cfg, T=T_,
                      sample_steps=5, cond="class" if num_classes else "none")
    torch.manual_seed(seed)
    net = build_net(net_cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    folder.mkdir()
    (folder / "config.json").write_text(cfg.to_json() + "\n")
    save_weights(net.state_dict(), folder / "model.safetensors")
    return folder


@pytest.fixture(scope="module")
def uncond_run(tmp_path_factory):
    return diffusion_run(tmp_path_factory.mktemp("runs") / "uncond")


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "euler"])
def test_pipeline_guides_an_unconditional_run_towards_the_class(uncond_run, clf_run, sampler):
    """The trained classifier (at t = 0) agrees with the requested class more often on guided
    samples than on unguided ones; scale 0 is the unguided sample exactly."""
    pipe, clf = load(uncond_run, "cpu"), load_classifier(clf_run, "cpu")
    labels = torch.arange(60) % 10
    kw = {"sampler": sampler, "steps": 20, "seed": 0, "class_labels": labels}
    plain = pipe.sample(60, sampler=sampler, steps=20, seed=0)
    assert torch.equal(pipe.sample(60, classifier=clf, classifier_scale=0.0, **kw), plain)
    strong = pipe.sample(60, classifier=clf_run, classifier_scale=20.0, **kw)

    def agreement(x):
        with torch.no_grad():
            return float((clf(x, torch.zeros(len(x), dtype=torch.long)).argmax(1) == labels).float().mean())

    assert agreement(strong) > agreement(plain) + 0.2


def test_the_pipeline_picks_algorithm_1_for_ddpm_and_2_for_the_others(uncond_run, clf_run, monkeypatch):
    from difflab.classifier_guidance import ClassifierGuidedModel as Wrapper
    from difflab.schedules import timesteps

    made = []
    original = Wrapper.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append((self.guidance.mode, self.variance, sorted(self.next_t.items(), reverse=True)))

    monkeypatch.setattr(Wrapper, "__init__", spy)
    pipe = load(uncond_run, "cpu")
    for sampler in ("ddpm", "ddim", "euler"):
        pipe.sample(2, sampler=sampler, steps=7, class_labels=[1, 2], classifier=clf_run,
                    variance="beta_tilde")
    grid = timesteps(T, 7, "trailing").tolist()
    assert made[0] == ("mean", "beta_tilde", list(zip(grid, [*grid[1:], -1], strict=True)))
    assert [m[0] for m in made[1:]] == ["eps", "eps"]


def test_pipeline_composes_with_a_class_conditional_run(tmp_path, clf_run):
    pipe = load(diffusion_run(tmp_path / "cond", num_classes=10), "cpu")
    x = pipe.sample(4, steps=3, class_labels=[1, 2, 3, 4], guidance=2.0, classifier=clf_run,
                    classifier_scale=1.0)
    y = pipe.sample(4, steps=3, class_labels=[1, 2, 3, 4], guidance=2.0)
    assert x.shape == (4, 1, 8, 8) and not torch.equal(x, y)


def test_pipeline_errors(tmp_path, uncond_run, clf_run):
    pipe = load(uncond_run, "cpu")
    with pytest.raises(ValueError, match="needs class_labels"):
        pipe.sample(2, steps=2, classifier=clf_run)
    with pytest.raises(ValueError, match="class 10 is out of range: classifier .* has 10 classes"):
        pipe.sample(2, steps=2, classifier=clf_run, class_labels=[1, 10])
    with pytest.raises(ValueError, match="not trained with class labels"):
        pipe.sample(2, steps=2, class_labels=[1, 2])  # without a classifier, as before
    other = load(diffusion_run(tmp_path / "t50", T_=50), "cpu")
    with pytest.raises(ValueError, match=r"cosine schedule, T=100, but .* T=50; .*--schedule cosine --T 50"):
        other.sample(2, steps=2, classifier=clf_run, class_labels=[1, 2])
    big = load(diffusion_run(tmp_path / "s16", image_size=16), "cpu")
    with pytest.raises(ValueError, match="takes 1x8x8 images, but .* 1x16x16"):
        big.sample(2, steps=2, classifier=clf_run, class_labels=[1, 2])
    clf = Classifier(NoisyClassifier(ClassifierConfig(num_classes=3, image_size=8)),
                     ClassifierTrainConfig(T=T, data=DataConfig(source="digits", image_size=8, channels=1)))
    cond = load(diffusion_run(tmp_path / "cond", num_classes=10), "cpu")
    with pytest.raises(ValueError, match="3 classes, this run 10"):
        cond.sample(2, steps=2, classifier=clf, class_labels=[1, 2])


def test_sample_command_with_a_classifier(uncond_run, clf_run, tmp_path, capsys):
    out = tmp_path / "g.png"
    assert main(["sample", str(uncond_run), "--classifier", str(clf_run), "--class", "3",
                 "--classifier-scale", "2", "--n", "3", "--steps", "3", "--out", str(out)]) == 0
    assert out.is_file()
    assert main(["sample", str(uncond_run), "--classifier", str(clf_run), "--class", "all", "--n", "2",
                 "--steps", "2", "--out", str(tmp_path / "all.png"), "--sampler", "ddpm"]) == 0
    capsys.readouterr()


@pytest.mark.parametrize(("extra", "message"), [
    (["--classifier", "CLF"], "--classifier needs the class to guide towards: give --class"),
    (["--classifier", "CLF", "--class", "12"], "class 12 is out of range"),
    (["--classifier", "CLF", "--class", "3", "--guidance", "2"], "use --classifier-scale"),
    (["--classifier-scale", "2"], "--classifier-scale needs --classifier"),
    (["--classifier", "RUN", "--class", "3"], "is not a classifier run"),
    (["--classifier", "T50", "--class", "3"], "--schedule cosine --T 100"),
])
def test_sample_command_errors_are_one_line(uncond_run, clf_run, tmp_path, capsys, extra, message):
    if "T50" in extra:
        main(["train-classifier", "--data", "digits", "--out", str(tmp_path / "c50"), "--steps", "1",
              "--T", "50", "--no-progress"])
        capsys.readouterr()
    paths = {"CLF": str(clf_run), "RUN": str(uncond_run), "T50": str(tmp_path / "c50")}
    args = [paths.get(a, a) for a in extra]
    out = str(tmp_path / "x.png")
    status = 1 if message == "is not a classifier run" else 2  # a file of the wrong kind; else flags
    assert main(["sample", str(uncond_run), *args, "--n", "2", "--steps", "2", "--out", out]) == status
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
