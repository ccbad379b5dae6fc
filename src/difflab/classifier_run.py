"""A noise-aware classifier's run: its config (``config.json``), loading it, checking it against a
diffusion run, and guiding a sampler's network with it.

A classifier guides a diffusion model only if it was trained on the same forward process: it has
seen x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps at the model's timesteps, so the
schedule (kind, T, zero terminal SNR) and the image shape must match the diffusion run's.
:meth:`Classifier.check_pairing` refuses any other pairing with a message saying how to train a
matching one. Like :mod:`difflab.run_config`, this sits below both training
(:mod:`difflab.train.classifier`) and sampling (:mod:`difflab.pipeline`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from difflab.classifier_guidance import ClassifierGuidance, ClassifierGuidedModel, guidance_mode
from difflab.config import Config
from difflab.data import DataConfig
from difflab.device import resolve_device
from difflab.io import CheckpointError, load_weights
from difflab.nets.classifier import ClassifierConfig, NoisyClassifier
from difflab.schedules import NoiseSchedule, timesteps

if TYPE_CHECKING:
    from difflab.run_config import TrainConfig

WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class ClassifierTrainConfig(Config):
    """A classifier run (``difflab train-classifier``): cross-entropy on x_t at uniformly drawn
    timesteps t of the schedule ``schedule``/``T``/``zero_terminal_snr`` (Dhariwal & Nichol 2021,
    sec. 4.1), AdamW with a linear warm-up and a cosine decay to 10%. The default 1,500 steps of 64
    take the MNIST classifier to 98% held-out accuracy at t = 0 and 94% at alpha_bar = 0.4 (about
    10 minutes on one loaded CPU core; benchmarks/README.md).

    ``holdout`` is the share of the images split off (by a permutation seeded with ``seed``) for
    the accuracy-vs-t table, measured at ``eval_timesteps`` timesteps evenly spread over [0, T)
    on up to ``eval_n`` held-out images. ``net`` None resolves to
    :func:`~difflab.nets.classifier.default_classifier_config` at the data's size; ``steps`` is
    resolved from ``epochs`` when that is set; ``class_names`` from the data."""

    data: DataConfig = field(default_factory=DataConfig)
    net: ClassifierConfig | None = None
    schedule: Literal["linear", "scaled_linear", "cosine", "sigmoid"] = "cosine"
    T: int = 1000
    zero_terminal_snr: bool = False
    steps: int = 1500
    epochs: float | None = None
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    grad_clip: float = 1.0
    holdout: float = 0.1
    eval_timesteps: int = 10
    eval_n: int = 500
    log_every: int = 25
    seed: int = 0
    class_names: tuple[str, ...] = ()
    device: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("steps", "batch_size", "T", "eval_timesteps", "eval_n", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"epochs must be positive (or None to count steps), got {self.epochs}")
        if not 0 < self.holdout < 1:
            raise ValueError(f"holdout must lie in (0, 1): the share of images kept for the accuracy "
                             f"table, got {self.holdout}")
        if self.lr <= 0 or self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("lr must be positive and warmup_steps, weight_decay, grad_clip >= 0")

    def make_schedule(self) -> NoiseSchedule:
        """The forward process the classifier is trained on (as :meth:`TrainConfig.make_schedule`)."""
        sched = NoiseSchedule.from_name(self.schedule, self.T)
        return sched.rescale_zero_terminal_snr() if self.zero_terminal_snr else sched

    def schedule_text(self) -> str:
        ztsnr = ", zero terminal SNR" if self.zero_terminal_snr else ""
        return f"{self.schedule} schedule, T={self.T}{ztsnr}"


def schedule_flags(schedule: str, T: int, zero_terminal_snr: bool) -> str:
    return f"--schedule {schedule} --T {T}" + (" (zero terminal SNR)" if zero_terminal_snr else "")


class Classifier:
    """A trained noise-aware classifier: its network (eval mode), config and run folder."""

    def __init__(self, net: NoisyClassifier, config: ClassifierTrainConfig, run: str | Path = "<memory>",
                 device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.config = config
        self.run = str(run)

    @classmethod
    def load(cls, run: str | Path, device: str = "auto") -> Classifier:
        """Load ``run/config.json`` and ``run/model.safetensors`` written by ``difflab train-classifier``."""
        run = Path(run)
        cfg_path = run / "config.json"
        if not cfg_path.is_file():
            raise CheckpointError(f"{run} has no config.json; point --classifier at a folder written by "
                                  "`difflab train-classifier`")
        data = json.loads(cfg_path.read_text())
        if not isinstance(data.get("net"), dict) or data["net"].get("kind") != "classifier":
            raise CheckpointError(f"{run} is not a classifier run (its config.json has no classifier net); "
                                  "train one with `difflab train-classifier`")
        try:
            config = ClassifierTrainConfig.from_dict(data)
        except (ValueError, TypeError) as err:
            raise CheckpointError(f"{cfg_path} is not a valid classifier config: {err}") from err
        assert config.net is not None
        net = NoisyClassifier(config.net)
        try:
            net.load_state_dict(load_weights(run / WEIGHTS))
        except RuntimeError as err:
            raise CheckpointError(f"{run / WEIGHTS} does not fit the classifier in config.json") from err
        return cls(net, config, run, resolve_device(device))

    @property
    def num_classes(self) -> int:
        return self.net.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.config.class_names) or tuple(str(i) for i in range(self.num_classes))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        size = self.config.data.image_size or self.net.image_size or 28
        return (self.net.in_channels, int(size), int(size))

    def check_pairing(self, run_config: TrainConfig, image_shape: tuple[int, int, int], run: str = "the run"
                      ) -> None:
        """Refuse a diffusion run with another forward process or image shape than this classifier's."""
        c = self.config
        mine = (c.schedule, c.T, c.zero_terminal_snr)
        theirs = (run_config.schedule, run_config.T, run_config.zero_terminal_snr)
        if mine != theirs:
            raise ValueError(
                f"classifier {self.run} was trained on the {c.schedule_text()}, but {run} uses the "
                f"{run_config.schedule} schedule, T={run_config.T}"
                + (", zero terminal SNR" if run_config.zero_terminal_snr else "")
                + f"; train a classifier for it with `difflab train-classifier {schedule_flags(*theirs)}`")
        if tuple(image_shape) != self.image_shape:
            got, want = "x".join(map(str, self.image_shape)), "x".join(map(str, image_shape))
            raise ValueError(f"classifier {self.run} takes {got} images, but {run} makes {want} images; "
                             f"train a classifier on data of that size (--image-size {image_shape[-1]})")

    def check_labels(self, labels: Tensor) -> None:
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            bad = int(labels.max()) if int(labels.max()) >= self.num_classes else int(labels.min())
            raise ValueError(f"class {bad} is out of range: classifier {self.run} has {self.num_classes} "
                             f"classes, 0..{self.num_classes - 1}")

    def to(self, device: str | torch.device) -> Classifier:
        """This classifier on ``device`` (itself when it is there already)."""
        device = torch.device(device)
        return self if device == self.device else Classifier(self.net, self.config, self.run, device)

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        return self.net(x_t, t)

    def guide(self, model: Callable[..., Tensor], labels: Tensor | Sequence[int], scale: float, *,
              schedule: NoiseSchedule, prediction: str, sampler: str, steps: int, spacing: str,
              variance: str) -> ClassifierGuidedModel:
        """``model`` guided towards ``labels`` for one batch of ``sampler``: Algorithm 1's mean shift
        for ddpm (on the grid ``steps``/``spacing`` with ``variance``), Algorithm 2 otherwise."""
        mode = guidance_mode(sampler)
        grid = timesteps(schedule.T, steps, spacing) if mode == "mean" else None
        return ClassifierGuidedModel(model, self, labels, ClassifierGuidance(scale, mode),  # type: ignore[arg-type]
                                     schedule, prediction, timesteps=grid, variance=variance)


def load_classifier(run: str | Path, device: str = "auto") -> Classifier:
    """Load a classifier run folder written by ``difflab train-classifier``."""
    return Classifier.load(run, device)
