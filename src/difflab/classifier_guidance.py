"""Classifier guidance as a wrapper around a network (Dhariwal & Nichol 2021, "Diffusion Models
Beat GANs on Image Synthesis", sec. 4, Algorithms 1 and 2).

``ClassifierGuidedModel(model, classifier, labels, ...)`` is itself a network in difflab's
contract, ``model(x_t, t, **cond)``, so every sampler works with it unchanged (and it composes
with :class:`~difflab.guidance.CFGModel`: wrap one in the other). Each call evaluates the wrapped
network, then the gradient g = grad_x log p_phi(y | x_t, t) of the noise-aware classifier by
autograd (with grad enabled locally: the samplers run under ``no_grad``), and moves the
network's eps prediction along it:

    eps' = eps - k g.

Two choices of k, one per algorithm (``mode``):

- ``"eps"`` (Algorithm 2, for DDIM and the sigma samplers): k = s sqrt(1 - alpha_bar_t). Since
  eps = -sqrt(1 - alpha_bar_t) grad log p(x_t), this is the score of p(x_t) p(y | x_t)^s. With
  the exact classifier and s = 1 the corrected eps is exactly the class-conditional one.
- ``"mean"`` (Algorithm 1, for ancestral DDPM): the step's mean moves to mu + s Sigma g. A DDPM
  step from t to s has mean mu = coef1 x_t + coef2 x0 with x0 = (x_t - b_t eps) / a_t
  (a_t = sqrt(alpha_bar_t), b_t = sqrt(1 - alpha_bar_t); Ho et al. 2020, eq. 7), so eps - k g
  moves the mean by coef2 (b_t / a_t) k g, and the shift is s Sigma g exactly when

      k = s Sigma a_t / (coef2 b_t) = s Sigma b_t sqrt(alpha) / beta,    alpha = alpha_bar_t / alpha_bar_s,

  with beta = 1 - alpha the step's effective beta and Sigma its variance: k = s b_t sqrt(alpha)
  for ``variance="beta"`` (Sigma = beta), and k = s sqrt(alpha) (1 - alpha_bar_s) / b_t for
  ``"beta_tilde"`` (Sigma = (1 - alpha_bar_s) / (1 - alpha_bar_t) beta). Both are close to
  Algorithm 2's s b_t for small steps, but not equal. The step needs the next timestep s, so
  this mode is built with the sampler's timestep grid (respacing-aware).

The correction is applied to the network's own output type (for a fixed x_t every conversion is
affine): eps' = eps + d gives x0' = x0 - (b_t / a_t) d and v' = v + d / a_t (v = a_t eps - b_t x0).
alpha_bar_t comes from the timestep the network sees: the schedule's table for integer t, and
1 / (1 + sigma(t)^2) with sigma log-linear between the discrete levels for the sigma samplers'
fractional t (as :meth:`~difflab.diffusion.Denoiser.at_sigma` maps sigma to t). Where
alpha_bar_t = 0 (the last step of a zero-terminal-SNR schedule) x_t holds no information about
y, p(y | x_t) = p(y), and no correction is made.

With ``clip_x0`` the sampler clips the *guided* x0 (guided-diffusion clips before guiding), so
Algorithm 1 holds exactly only without clipping.

Cost: every call runs the classifier forward and backward once per sample. ``nfe_per_call`` is
the wrapped network's (denoiser evaluations only, what ``Denoiser.nfe`` counts);
``classifier_evals`` counts the classifier's forward+backward passes per sample separately.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from difflab.config import check_choice
from difflab.diffusion import PREDICTIONS, VARIANCES, broadcast, discrete_sigmas, posterior, t_to_sigma
from difflab.schedules import NoiseSchedule

Mode = Literal["eps", "mean"]
MODES: tuple[str, ...] = ("eps", "mean")
Classifier = Callable[[Tensor, Tensor], Tensor]


def guidance_mode(sampler: str) -> str:
    """Algorithm 1's mean shift for ancestral DDPM, Algorithm 2's eps correction for the rest."""
    return "mean" if sampler == "ddpm" else "eps"


@dataclass(frozen=True)
class ClassifierGuidance:
    """The classifier scale ``s`` (0 = unguided) and the ``mode`` (see the module docs)."""

    scale: float = 1.0
    mode: Mode = "eps"

    def __post_init__(self) -> None:
        if not self.scale == self.scale or self.scale < 0:
            raise ValueError(f"classifier scale must be >= 0 (0 = unguided), got {self.scale}")
        check_choice("classifier guidance mode", self.mode, MODES)


def log_prob_grad(classifier: Classifier, x_t: Tensor, t: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(log p(y | x_t, t) [B], its gradient with respect to x_t) by autograd, with the classifier's
    logits turned into log-probabilities by log-softmax. Samples are independent (the classifier
    normalises per sample), so the gradient of the sum is each sample's own gradient."""
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        logits = classifier(x, t)
        if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
            raise ValueError(f"a classifier must return logits [B, classes], got {tuple(logits.shape)} "
                             f"for a batch of {x.shape[0]}")
        log_p = torch.log_softmax(logits, dim=-1).gather(1, labels.to(logits.device)[:, None])[:, 0]
        (grad,) = torch.autograd.grad(log_p.sum(), x)
    return log_p.detach(), grad.to(x_t.dtype)


def shift_output(prediction: str, out: Tensor, d: Tensor, ab: Tensor) -> Tensor:
    """The network output whose eps is eps + d at the same x_t (alpha_bar_t = ``ab``, broadcast)."""
    check_choice("prediction", prediction, PREDICTIONS)
    if prediction == "eps":
        return out + d
    a, b = ab.sqrt(), (1 - ab).sqrt()
    if prediction == "x0":
        return out - b / a * d
    return out + d / a


class ClassifierGuidedModel:
    """A network guided by a classifier towards ``labels`` (see the module docs).

    ``classifier(x_t, t) -> logits [B, classes]``; ``labels`` [B] are the classes to guide
    towards, for the batch this wrapper is built for. ``prediction`` is the network's output
    type. Mode ``"mean"`` needs ``timesteps`` (the DDPM sampler's grid) and ``variance`` (its
    Sigma, ``beta`` or ``beta_tilde``)."""

    def __init__(self, model: Callable[..., Tensor], classifier: Classifier, labels: Tensor | Sequence[int],
                 guidance: ClassifierGuidance, schedule: NoiseSchedule, prediction: str = "eps", *,
                 timesteps: Tensor | Sequence[int] | None = None, variance: str = "beta") -> None:
        check_choice("prediction", prediction, PREDICTIONS)
        check_choice("variance", variance, VARIANCES)
        self.model, self.classifier = model, classifier
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.guidance, self.schedule = guidance, schedule
        self.prediction, self.variance = prediction, variance
        self.log_sigmas = discrete_sigmas(schedule).log()
        self.alphas_cumprod = schedule.alphas_cumprod
        self.next_t: dict[int, int] = {}
        if guidance.mode == "mean":
            if timesteps is None:
                raise ValueError("Algorithm 1's mean shift needs the DDPM sampler's timesteps to know each "
                                 "step's variance; pass timesteps=")
            ts = [int(t) for t in torch.as_tensor(timesteps).tolist()]
            self.next_t = dict(zip(ts, [*ts[1:], -1], strict=True))
        self.classifier_evals = 0
        self.last_log_prob: Tensor | None = None

    @property
    def nfe_per_call(self) -> int:
        """Denoiser evaluations per sample of the wrapped network's last call (classifier passes are
        counted in ``classifier_evals``)."""
        return int(getattr(self.model, "nfe_per_call", 1))

    def alpha_bar(self, t: Tensor) -> Tensor:
        """alpha_bar_t [B] (float64) of the timesteps the network sees."""
        t = t.detach().cpu()
        if not t.is_floating_point():
            return self.alphas_cumprod[t.long()]
        return 1 / (1 + t_to_sigma(self.log_sigmas, t) ** 2)

    def factor(self, t: Tensor) -> Tensor:
        """k [B] (float64) of eps' = eps - k g for this mode and these timesteps."""
        s = self.guidance.scale
        ab = self.alpha_bar(t)
        if self.guidance.mode == "eps":
            return s * (1 - ab).sqrt()
        steps, where = t.detach().cpu().unique(return_inverse=True)
        ab_next = []
        for step in steps.tolist():
            if step != int(step) or int(step) not in self.next_t:
                raise ValueError(f"timestep {step} is not on the DDPM grid this mean-shift guidance was "
                                 "built for; build it with the sampler's timesteps")
            nxt = self.next_t[int(step)]
            ab_next.append(1.0 if nxt < 0 else float(self.alphas_cumprod[nxt]))
        post = posterior(ab, torch.tensor(ab_next, dtype=torch.float64)[where])
        return s * post.variance(self.variance) * ab.sqrt() / (post.coef2 * (1 - ab).sqrt())

    def __call__(self, x_t: Tensor, t: Tensor, **cond: Any) -> Tensor:
        out = self.model(x_t, t, **cond)
        if self.guidance.scale == 0:
            return out
        t_vec = torch.as_tensor(t, device=x_t.device).expand(x_t.shape[0])
        log_p, grad = log_prob_grad(self.classifier, x_t, t_vec, self.labels.to(x_t.device))
        self.classifier_evals += 1
        self.last_log_prob = log_p
        ab = self.alpha_bar(t_vec)
        informative = ab > 0
        k = torch.where(informative, self.factor(t_vec), torch.zeros_like(ab))
        ab = torch.where(informative, ab, torch.ones_like(ab))
        d = -broadcast(k, x_t) * grad
        return shift_output(self.prediction, out, d, broadcast(ab, out))
