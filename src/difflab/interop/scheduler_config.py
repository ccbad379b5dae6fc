"""A run's noise schedule and sampling choices <-> a diffusers scheduler config, both ways.

Export (:func:`to_scheduler_config`) writes *every* field that changes how diffusers samples,
explicitly, never relying on a class default (a missing or partial config silently changes
sampling: diffusers#1674, #9171): the schedule (``beta_schedule``, ``beta_start``, ``beta_end``, or
the exact ``trained_betas`` where diffusers has no such named schedule), ``num_train_timesteps``,
``prediction_type``, ``rescale_betas_zero_snr``, ``clip_sample`` / ``clip_sample_range``,
``thresholding``, ``timestep_spacing`` (the run's ``sample_spacing``; trailing by default), ``steps_offset``
(0), ``set_alpha_to_one`` (True: DDIM's last step lands on the clean image, as difflab's does) and,
for DDPM, ``variance_type``.

Import (:func:`from_scheduler_config`) splits a config's fields three ways:

- the model's forward process and what the network predicts (``num_train_timesteps``, the betas,
  ``prediction_type``, ``rescale_betas_zero_snr``, a learned ``variance_type``): honoured exactly,
  or a ``ValueError`` naming the field;
- sampling choices difflab has (``clip_sample``, ``variance_type``, ``timestep_spacing`` as
  ``sample_spacing``, the scheduler class as the default sampler): carried into the run's sampling
  defaults;
- options difflab's samplers cannot reproduce (``thresholding``, ``clip_sample_range != 1``,
  ``set_alpha_to_one=False``, ``steps_offset`` on the leading grid, any sampler-tuning option of
  another scheduler class set away from that class's default): a ``ValueError`` naming the option
  and its value. Options that only act through an option that is off (``sample_max_value`` without
  thresholding) are inert and accepted.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

from difflab.schedules import NoiseSchedule

#: difflab prediction <-> diffusers ``prediction_type``.
PREDICTIONS = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
#: difflab schedule name -> (diffusers ``beta_schedule``, the constructor parameters difflab uses).
SCHEDULES: dict[str, tuple[str, dict[str, float]]] = {
    "linear": ("linear", {"beta_start": 1e-4, "beta_end": 0.02}),
    "scaled_linear": ("scaled_linear", {"beta_start": 0.00085, "beta_end": 0.012}),
    "cosine": ("squaredcos_cap_v2", {}),
    "sigmoid": ("sigmoid", {"beta_start": 1e-4, "beta_end": 0.02}),
}
#: the beta_schedule names each exported scheduler class computes itself (others get trained_betas)
_NAMED = {
    "DDIMScheduler": ("linear", "scaled_linear", "squaredcos_cap_v2"),
    "DDPMScheduler": ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"),
}
#: difflab DDPM variance <-> diffusers ``variance_type``
VARIANCES = {"beta": "fixed_large", "beta_tilde": "fixed_small"}
_VARIANCE_IN = {"fixed_small": "beta_tilde", "fixed_small_log": "beta_tilde", "fixed_large": "beta",
                "fixed_large_log": "beta"}
#: the difflab sampler a diffusers scheduler class samples like (the imported run's default)
SAMPLER_OF = {
    "DDPMScheduler": "ddpm",
    "DDIMScheduler": "ddim",
    "EulerDiscreteScheduler": "euler",
    "EulerAncestralDiscreteScheduler": "euler-ancestral",
    "HeunDiscreteScheduler": "heun",
    "DPMSolverMultistepScheduler": "dpmpp-2m",
    "UniPCMultistepScheduler": "unipc",
}
EXPORT_CLASSES = ("DDIMScheduler", "DDPMScheduler")

# fields read by from_scheduler_config itself; every other field must be inert or at its default
_MODEL_FIELDS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                 "prediction_type", "rescale_betas_zero_snr")
_SAMPLING_FIELDS = ("clip_sample", "clip_sample_range", "thresholding", "timestep_spacing",
                    "steps_offset", "set_alpha_to_one", "variance_type")
_INERT_UNLESS = {  # option -> the option that must be on for it to act
    "dynamic_thresholding_ratio": "thresholding",
    "sample_max_value": "thresholding",
}


def _sampler_name(run_sampler: str) -> str:
    return "DDPMScheduler" if run_sampler == "ddpm" else "DDIMScheduler"


def to_scheduler_config(
    schedule: str,
    T: int,
    prediction: str,
    *,
    zero_terminal_snr: bool = False,
    clip: bool = True,
    variance: str = "beta",
    class_name: str = "DDIMScheduler",
    betas: torch.Tensor | None = None,
    spacing: str = "trailing",
) -> dict[str, Any]:
    """The full diffusers config of ``class_name`` (``DDIMScheduler`` or ``DDPMScheduler``) for a
    difflab run: every field that changes sampling is written. ``betas`` (float64, before any
    zero-terminal-SNR rescale) replaces the named schedule by ``trained_betas``."""
    if class_name not in EXPORT_CLASSES:
        raise ValueError(f"scheduler {class_name!r} cannot be exported; choose one of: "
                         f"{', '.join(EXPORT_CLASSES)}")
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction {prediction!r} has no diffusers prediction_type; "
                         f"difflab exports {', '.join(PREDICTIONS)}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r} has no diffusers beta_schedule; "
                         f"difflab exports {', '.join(SCHEDULES)}")
    if variance not in VARIANCES:
        raise ValueError(f"DDPM variance {variance!r} has no diffusers variance_type; use beta or beta_tilde")
    if spacing not in ("leading", "trailing", "linspace"):
        raise ValueError(f"the timestep grid {spacing!r} (sample_spacing) has no diffusers timestep_spacing; "
                         "set the run's sample_spacing to trailing, leading or linspace")
    name, params = SCHEDULES[schedule]
    cfg: dict[str, Any] = {
        "_class_name": class_name,
        "num_train_timesteps": int(T),
        "beta_schedule": name,
        "beta_start": params.get("beta_start", 1e-4),
        "beta_end": params.get("beta_end", 0.02),
        "trained_betas": None,
        "prediction_type": PREDICTIONS[prediction],
        "rescale_betas_zero_snr": bool(zero_terminal_snr),
        "clip_sample": bool(clip),
        "clip_sample_range": 1.0,
        "thresholding": False,
        "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 1.0,
        "timestep_spacing": spacing,
        "steps_offset": 0,
    }
    if betas is not None or name not in _NAMED[class_name]:
        exact = NoiseSchedule.from_name(schedule, T).betas if betas is None else betas
        cfg["trained_betas"] = [float(b) for b in exact]
    if class_name == "DDIMScheduler":
        cfg["set_alpha_to_one"] = True
    else:
        cfg["variance_type"] = VARIANCES[variance]
    return cfg


def run_scheduler_config(config: Any, class_name: str | None = None) -> dict[str, Any]:
    """:func:`to_scheduler_config` for a :class:`~difflab.run_config.TrainConfig`; the class
    defaults to DDPM for runs that sample with ddpm, DDIM otherwise."""
    return to_scheduler_config(
        config.schedule, config.T, config.prediction, zero_terminal_snr=config.zero_terminal_snr,
        clip=config.sample_clip, variance=config.sample_variance,
        class_name=class_name or _sampler_name(config.sample_sampler),
        spacing=getattr(config, "sample_spacing", "trailing"),
    )


@dataclass(frozen=True)
class ImportedSchedule:
    """What a diffusers scheduler config means for difflab: the exact schedule, the TrainConfig
    fields it sets (``schedule`` is the closest named one; ``schedule_exact`` says whether the
    betas are that name's own), and the sampling defaults it asks for."""

    schedule: NoiseSchedule
    fields: dict[str, Any]
    schedule_exact: bool
    spacing: str = "leading"
    class_name: str = "DDPMScheduler"
    notes: tuple[str, ...] = field(default_factory=tuple)


def _class_defaults(class_name: str) -> dict[str, Any]:
    """The constructor defaults of a diffusers scheduler class (imported lazily)."""
    import diffusers

    cls = getattr(diffusers, class_name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ValueError(f"scheduler class {class_name!r} is not a diffusers scheduler; difflab reads: "
                         f"{', '.join(SAMPLER_OF)}")
    params = inspect.signature(cls.__init__).parameters
    empty = inspect.Parameter.empty
    return {k: p.default for k, p in params.items() if k != "self" and p.default is not empty}


def _diffusers_betas(class_name: str, cfg: dict[str, Any]) -> torch.Tensor:
    """The betas diffusers' own scheduler computes for ``cfg`` (before any zero-SNR rescale)."""
    import diffusers

    kept = {k: v for k, v in cfg.items() if not k.startswith("_")}
    kept["rescale_betas_zero_snr"] = False
    try:
        sched = getattr(diffusers, class_name).from_config(kept)
    except NotImplementedError as err:
        raise ValueError(f"beta_schedule={cfg.get('beta_schedule')!r} is not one diffusers' "
                         f"{class_name} computes: {err}") from err
    return sched.betas.double()


def from_scheduler_config(cfg: dict[str, Any], class_name: str | None = None) -> ImportedSchedule:
    """The difflab schedule and run fields of a diffusers scheduler config, or a ``ValueError``
    naming the first option difflab cannot honour."""
    class_name = class_name or cfg.get("_class_name")
    if not isinstance(class_name, str):
        raise ValueError("scheduler_config.json has no _class_name; cannot tell which scheduler it "
                         "configures")
    if class_name not in SAMPLER_OF:
        raise ValueError(f"scheduler {class_name} has no difflab sampler (difflab reads: "
                         f"{', '.join(SAMPLER_OF)}); to sample the model with difflab's samplers, set "
                         "_class_name to DDPMScheduler in scheduler_config.json")
    defaults = _class_defaults(class_name)
    # keys the class does not take are dropped by diffusers itself (with a warning): they change nothing
    unused = sorted(k for k in cfg if not k.startswith("_") and k not in defaults)
    full = {**defaults, **{k: v for k, v in cfg.items() if k in defaults}}
    notes = [f"{class_name} takes no {', '.join(unused)} (diffusers ignores it too)"] if unused else []

    # 1. everything difflab does not read must be inert or at the class default
    known = set(_MODEL_FIELDS) | set(_SAMPLING_FIELDS)
    for key, value in full.items():
        if key in known:
            continue
        if key in _INERT_UNLESS and not full.get(_INERT_UNLESS[key]):
            continue
        if key in defaults and _same(value, defaults[key]):
            continue
        raise ValueError(f"{class_name} option {key}={value!r} has no difflab mapping (difflab's "
                         f"{SAMPLER_OF[class_name]} sampler cannot honour it); set it to "
                         f"{defaults.get(key)!r} or remove it from scheduler_config.json")

    # 2. the forward process and the prediction: exact or an error
    T = int(full.get("num_train_timesteps", 1000))
    pred_in = full.get("prediction_type", "epsilon")
    preds = {v: k for k, v in PREDICTIONS.items()}
    if pred_in not in preds:
        raise ValueError(f"prediction_type={pred_in!r} has no difflab prediction; difflab reads: "
                         f"{', '.join(preds)}")
    variance_type = full.get("variance_type")
    if variance_type is not None and variance_type not in _VARIANCE_IN:
        raise ValueError(f"variance_type={variance_type!r} (a learned variance) has no difflab mapping: "
                         "difflab's samplers use fixed variances (fixed_small, fixed_large)")
    zero_snr = bool(full.get("rescale_betas_zero_snr", False))
    trained = full.get("trained_betas")
    name_in = full.get("beta_schedule", "linear")
    named = {v[0]: k for k, v in SCHEDULES.items()}
    schedule_name, exact = named.get(name_in, "linear"), False
    if trained is not None:
        betas = torch.as_tensor(trained, dtype=torch.float64).flatten()
        if betas.numel() != T:
            raise ValueError(f"trained_betas has {betas.numel()} values but num_train_timesteps={T}")
        sched = NoiseSchedule(betas, "trained_betas")
    elif name_in in named and all(
        _same(full.get(k), v) for k, v in SCHEDULES[named[name_in]][1].items()
    ):
        sched, exact = NoiseSchedule.from_name(schedule_name, T), True
    else:  # another named schedule, or other beta_start/beta_end: diffusers' own betas
        sched = NoiseSchedule(_diffusers_betas(class_name, full), f"diffusers:{name_in}")
        notes.append(f"beta_schedule={name_in!r} (beta_start={full.get('beta_start')}, "
                     f"beta_end={full.get('beta_end')}) uses diffusers' betas")
    if zero_snr:
        sched = sched.rescale_zero_terminal_snr()

    # 3. sampling choices: carried over, or an error naming what difflab cannot reproduce
    if full.get("thresholding"):
        raise ValueError("thresholding=True (dynamic thresholding) has no difflab mapping; "
                         "set it to false in scheduler_config.json")
    clip = bool(full.get("clip_sample", False))
    if clip and not _same(full.get("clip_sample_range", 1.0), 1.0):
        raise ValueError(f"clip_sample_range={full.get('clip_sample_range')!r} has no difflab mapping: "
                         "difflab clips x_0 to [-1, 1] only")
    spacing = full.get("timestep_spacing", "leading")
    if spacing not in ("leading", "trailing", "linspace"):
        raise ValueError(f"timestep_spacing={spacing!r} has no difflab mapping; difflab has leading, "
                         "trailing and linspace")
    if spacing == "linspace" and class_name == "DDIMScheduler":
        raise ValueError("DDIMScheduler with timestep_spacing='linspace' steps from each timestep by "
                         "T // steps, not to the next one of its grid, which no difflab sampler does; set "
                         "timestep_spacing to leading or trailing in scheduler_config.json")
    offset = int(full.get("steps_offset", 0) or 0)
    if offset and spacing == "leading":
        raise ValueError(f"steps_offset={offset} on the leading grid has no difflab mapping (difflab's "
                         "leading grid starts at t=0); set steps_offset to 0 or timestep_spacing to "
                         "trailing in scheduler_config.json")
    if full.get("set_alpha_to_one") is False:
        raise ValueError("set_alpha_to_one=False has no difflab mapping: difflab's last step always "
                         "lands on the clean image (alpha_bar=1); set it to true in scheduler_config.json")
    sampler = SAMPLER_OF[class_name]
    if class_name == "DPMSolverMultistepScheduler" and "sde" in str(full.get("algorithm_type", "")):
        sampler = "dpmpp-2m-sde"
    fields: dict[str, Any] = {
        "schedule": schedule_name,
        "T": T,
        "zero_terminal_snr": zero_snr,
        "prediction": preds[pred_in],
        "sample_clip": clip,
        "sample_spacing": spacing,
        "sample_sampler": sampler,
        "sample_steps": T if sampler == "ddpm" else min(50, T),
    }
    if variance_type is not None:
        fields["sample_variance"] = _VARIANCE_IN[variance_type]
    return ImportedSchedule(sched, fields, exact, spacing, class_name, tuple(notes))


def _same(a: Any, b: Any) -> bool:
    if a is b or (type(a) is type(b) and a == b):  # also equal infinities
        return True
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(b)))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return bool(a == b)


__all__ = [
    "EXPORT_CLASSES",
    "PREDICTIONS",
    "SAMPLER_OF",
    "SCHEDULES",
    "VARIANCES",
    "ImportedSchedule",
    "from_scheduler_config",
    "run_scheduler_config",
    "to_scheduler_config",
]
