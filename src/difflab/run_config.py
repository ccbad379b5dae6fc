"""The run config: everything that decides a run, saved as ``config.json`` in the run folder.

It sits below both training and sampling (``pipeline``), so loading a run never imports the
training loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Self

from difflab.conditioning.text import TextConfig
from difflab.config import Config, check_choice
from difflab.data import DataConfig
from difflab.nets import NetShape
from difflab.schedules import NoiseSchedule

# Fields that may change when resuming: they do not change what the finished steps computed.
RESUMABLE_CHANGES = (
    "steps",
    "checkpoint_every",
    "keep_checkpoints",
    "sample_every",
    "log_every",
    "sample_n",
    "eval_every",
    "eval_n",
    "eval_steps",
    "eval_metric",
    "compile",
    "device",
    "sample_sampler",
    "sample_steps",
    "sample_variance",
    "sample_clip",
    "sample_spacing",
    "sample_mix_offset",
    "sample_guidance",
    "epochs",
    "latent",  # where the autoencoder lives may change; its weights (latent_digest) may not
)


@dataclass(frozen=True)
class TrainConfig(Config):
    """A training run. ``net`` is a network config (see :mod:`difflab.nets`); None resolves to
    the default network for ``net_kind`` at the data's size, shaped by ``net_shape`` (width,
    levels, depth, attention) where given. ``objective="corrupt"`` is seed 003's
    first model instead of a diffusion: the net predicts x_0 from ``corrupt(x, amount)``, a linear
    mix with uniform noise, and samples with the notes' mixing sampler.

    The defaults are the demo's recipe, chosen for quality per CPU minute: a small UNet trained
    on the v target (Salimans & Ho 2022) with the cosine schedule and min-SNR-5 weighting
    (Hang et al. 2023), batch 64, AdamW 2e-3 with warm-up and cosine decay, EMA 0.999, 2,200
    steps (about ten minutes on two CPU cores), sampled with DPM-Solver++(2M) SDE in 10 steps
    (Lu et al. 2022). On the embedded MNIST this gives clean digits several times sooner than eps
    prediction on the linear schedule, and the SDE sampler 5-10 points more confident digits than
    DDIM-50 (benchmarks/README.md).

    Length: ``steps`` optimizer steps, or with ``epochs`` set, ``ceil(epochs * N / batch_size)``
    steps for N images (resolved when the data is loaded and saved as ``steps``), or with
    ``time_budget`` (seconds) as many steps as fit in that much training time here: measured
    during the warm-up, then fixed and saved as ``steps``, so the learning rate decays over them
    (:mod:`difflab.train.budget`). ``keep_best``
    also writes the EMA weights of the epoch with the lowest mean loss to ``best.safetensors``
    (seed 000 keeps its best-loss model), and sampling then uses them.

    ``sample_*`` are the run's sampling defaults (``difflab sample`` and the grids during
    training): sampler, steps, DDPM variance, x_0 clipping, the timestep grid ``sample_spacing``
    (trailing; an imported diffusers pipeline's ``timestep_spacing``), ``sample_guidance`` (the
    classifier-free guidance scale for conditional samples) and ``sample_mix_offset`` for the mixing
    sampler of corrupt runs (factor ``1 / (steps - i + offset)``).

    ``cond`` is what the network is conditioned on: ``"class"`` labels (the label is replaced by the
    null class with probability ``cond_drop``, so one model samples conditionally and
    unconditionally) or ``"text"`` captions through a frozen text encoder (``text``: the encoder,
    its max length and where the captions come from), or ``"lowres"``: super-resolution (SR3,
    Saharia et al. 2021), the network sees the image shrunk by ``lowres_factor`` and enlarged
    again, joined to x_t on the channels (:mod:`difflab.conditioning.lowres`); ``difflab train``
    trains it as SR3 does, without dropping the condition and sampled unguided. ``class_names``
    and ``text`` are resolved from the data when training starts.

    ``latent`` makes it latent diffusion (Rombach et al. 2022): the autoencoder (a ``difflab
    train-vae`` run folder, its ``model.safetensors``, or ``diffusers:DIR``) whose scaled latents
    the network learns, from a cache of their posteriors sampled at every step
    (:mod:`difflab.latent.cache`); samples are decoded to pixels. ``latent_digest`` (resolved when
    training starts) names the autoencoder's weights: a run refuses any other. Latent runs sample
    without x_0 clipping (the latents are not in [-1, 1]: sd-scripts#1432)."""

    data: DataConfig = field(default_factory=DataConfig)
    net_kind: str = "unet"
    net: Any = None
    net_shape: NetShape | None = None
    schedule: Literal["linear", "scaled_linear", "cosine", "sigmoid"] = "cosine"
    T: int = 1000
    zero_terminal_snr: bool = False
    objective: Literal["diffusion", "corrupt"] = "diffusion"
    prediction: Literal["eps", "x0", "v"] = "v"
    loss: Literal["mse", "l1", "huber"] = "mse"
    weighting: Literal["none", "min-snr"] = "min-snr"
    snr_gamma: float = 5.0
    steps: int = 2200
    epochs: float | None = None
    time_budget: float | None = None
    batch_size: int = 64
    optimizer: Literal["adamw", "adam"] = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    cond: Literal["none", "class", "text", "lowres"] = "none"
    cond_drop: float = 0.1
    lowres_factor: int = 4
    latent: str | None = None
    latent_digest: str = ""
    seed: int = 0
    checkpoint_every: int = 250
    keep_checkpoints: int = 3
    sample_every: int = 500
    sample_n: int = 64
    sample_sampler: str = "dpmpp-2m-sde"
    sample_steps: int = 10
    sample_variance: Literal["beta", "beta_tilde"] = "beta"
    sample_clip: bool = True
    sample_spacing: Literal["leading", "trailing", "linspace", "seed002"] = "trailing"
    sample_mix_offset: int = 0
    sample_guidance: float = 3.0
    class_names: tuple[str, ...] = ()
    text: TextConfig | None = None
    keep_best: bool = False
    log_every: int = 10
    eval_every: int = 0
    eval_n: int = 256
    eval_steps: int = 20
    eval_metric: Literal["auto", "fd-digit", "fd-effnet"] = "auto"
    compile: bool = False
    device: str = "auto"
    preset: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        from difflab.nets import NET_KINDS

        check_choice("net", self.net_kind, NET_KINDS)
        if self.preset is not None:
            from difflab.presets import PRESETS

            check_choice("preset", self.preset, PRESETS)
        for name in (
            "steps",
            "batch_size",
            "T",
            "checkpoint_every",
            "sample_every",
            "log_every",
            "sample_n",
            "sample_steps",
            "eval_n",
            "eval_steps",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ValueError(f"time_budget must be a positive number of seconds, got {self.time_budget}")
        if self.time_budget is not None and self.epochs is not None:
            raise ValueError("give the length as epochs or as a time budget, not both")
        if self.net_shape is not None and self.net_kind != "unet":
            raise ValueError(f"--base-channels, --channel-mult, --res-blocks and --attention-res shape --net "
                             f"unet, not {self.net_kind}; for {self.net_kind} pass --net-config FILE.json")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"epochs must be positive (or None to count steps), got {self.epochs}")
        if self.sample_mix_offset < 0:
            raise ValueError(f"sample_mix_offset must be >= 0, got {self.sample_mix_offset}")
        if self.net_kind == "diffusers-cond-unet" and self.net is None:
            raise ValueError("diffusers-cond-unet cannot be trained from difflab yet: its cross-attention "
                             "does not mask padded prompt tokens; use --net unet with --cond text "
                             "(or --net diffusers-unet with --cond class)")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0 (0 = off), got {self.eval_every}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if not 0 <= self.cond_drop < 1:
            raise ValueError(f"cond_drop must lie in [0, 1), got {self.cond_drop}")
        if self.latent is not None and self.objective == "corrupt":
            raise ValueError("objective 'corrupt' (seed 003's first model) works on pixels; drop --latent")
        if self.latent is not None and self.cond == "lowres":
            raise ValueError("super-resolution (--cond lowres) works on pixels; drop --latent")
        if self.cond == "lowres":
            from difflab.conditioning.lowres import FACTORS

            check_choice("lowres_factor", self.lowres_factor, FACTORS)
        from difflab.samplers import SAMPLERS

        check_choice("sample_sampler", self.sample_sampler, (*SAMPLERS, "mix"))
        if self.objective == "corrupt" and self.prediction != "x0":
            raise ValueError("objective 'corrupt' trains an x_0 predictor; use prediction 'x0'")
        for name in ("sample_steps", "eval_steps") if self.eval_every else ("sample_steps",):
            if getattr(self, name) > self.T:
                raise ValueError(f"{name}={getattr(self, name)} exceeds T={self.T}")

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.net is not None:
            out["net"] = self.net.to_dict()
        return out

    @property
    def class_cond(self) -> bool:
        return self.cond == "class"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        from difflab.nets import net_config_from_dict

        data = dict(data)
        if "class_cond" in data:  # runs written before ``cond`` replaced the class_cond switch
            data.setdefault("cond", "class" if data.pop("class_cond") else "none")
        net = data.pop("net", None)
        cfg = super().from_dict(data)
        return cfg.replace(net=None if net is None else net_config_from_dict(net))

    def make_schedule(self) -> NoiseSchedule:
        """The noise schedule this run trains and samples with."""
        sched = NoiseSchedule.from_name(self.schedule, self.T)
        return sched.rescale_zero_terminal_snr() if self.zero_terminal_snr else sched

    def differences(self, other: TrainConfig) -> list[str]:
        """Names of the fields (other than the resumable ones) that differ from ``other``."""
        a, b = self.to_dict(), other.to_dict()
        return sorted(k for k in a if k not in RESUMABLE_CHANGES and a[k] != b.get(k))

