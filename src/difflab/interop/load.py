"""A local diffusers pipeline folder as the parts of a difflab :class:`~difflab.pipeline.Pipeline`.

``difflab.load("diffusers:DIR")`` (or a folder holding ``model_index.json``) calls
:func:`load_diffusers` and builds the Pipeline from what it returns: the ``UNet2DModel`` under the
difflab network contract (:class:`~difflab.interop.nets.ImportedUNet`), a
:class:`~difflab.run_config.TrainConfig` that describes it (schedule name, T, prediction,
zero-terminal SNR, clipping, the default sampler), and the exact :class:`NoiseSchedule`, which
replaces the config's named one where the scheduler's betas are not that name's own
(``trained_betas``, other ``beta_start``/``beta_end``, diffusers-only schedules). Every difflab
sampler, guidance option, edit and metric then works on it through the one denoiser contract.

Read: the pipeline folder's ``model_index.json``, ``unet/`` (``UNet2DModel``, safetensors weights
only: pickled ``.bin`` weights can run code and are refused) and ``scheduler/scheduler_config.json``
(mapped by :func:`~difflab.interop.scheduler_config.from_scheduler_config`, which names any option
difflab cannot honour). A folder written by ``difflab export`` also holds ``difflab.json`` (the run's
config), which restores the run's data, classes and sampling recipe. Nothing is downloaded.

A ``vae/`` (``AutoencoderKL``) makes it a latent pipeline: the run config's ``latent`` names it
(``diffusers:DIR/vae``), and its own ``scaling_factor`` / ``shift_factor`` scale the latents.

Refused with a one-line error: a folder that is not a pipeline, missing weights, a component
difflab would have to ignore (a text encoder), ``UNet2DConditionModel`` (text-conditional
diffusers pipelines condition through their own text encoder, which difflab does not run yet).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from difflab.interop import MODEL_INDEX
from difflab.interop.scheduler_config import ImportedSchedule, from_scheduler_config
from difflab.io import CheckpointError
from difflab.schedules import NoiseSchedule

SIDECAR = "difflab.json"
WEIGHTS = "diffusion_pytorch_model.safetensors"
_IGNORED_COMPONENTS = ("_class_name", "_diffusers_version", "_name_or_path")


@dataclass
class Imported:
    """What a diffusers pipeline folder is for difflab: network, run config, exact schedule."""

    net: Any
    config: Any
    schedule: NoiseSchedule
    folder: Path
    scheduler: ImportedSchedule
    latent: Any = None  # a latent pipeline's LatentSpace (its vae and scaling), else None


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not readable JSON ({what}): {err}") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object ({what})")
    return data


def read_model_index(folder: str | Path) -> dict[str, Any]:
    """``model_index.json`` of a pipeline folder, or a one-line error saying why it is not one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder; point at a diffusers pipeline folder "
                              f"(with {MODEL_INDEX})")
    path = folder / MODEL_INDEX
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a diffusers pipeline folder: it has no {MODEL_INDEX}")
    return _read_json(path, "the pipeline's index")


def _components(index: dict[str, Any]) -> dict[str, tuple[str, str]]:
    out = {}
    for key, value in index.items():
        if key in _IGNORED_COMPONENTS or key.startswith("_"):
            continue
        if value is None or (isinstance(value, (list, tuple)) and (len(value) < 2 or value[1] is None)):
            continue
        if not isinstance(value, (list, tuple)):
            continue  # a plain option of the pipeline (e.g. requires_safety_checker)
        out[key] = (str(value[0]), str(value[1]))
    return out


def load_unet(folder: Path) -> Any:
    """The ``UNet2DModel`` in ``folder/unet`` (safetensors only, no network access)."""
    unet_dir = folder / "unet"
    cfg_path = unet_dir / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{folder} has no unet/config.json; the pipeline's unet is missing")
    cfg = _read_json(cfg_path, "the unet's config")
    cls = cfg.get("_class_name")
    if cls == "UNet2DConditionModel":
        raise ValueError(f"{folder}: UNet2DConditionModel (a text-conditional diffusers UNet) is not "
                         "supported: difflab conditions on text through its own encoder; import "
                         "UNet2DModel pipelines (unconditional or class-conditional)")
    if cls != "UNet2DModel":
        raise ValueError(f"{folder}: unet class {cls!r} has no difflab mapping; difflab imports UNet2DModel")
    kind = cfg.get("time_embedding_type", "positional")
    if kind != "positional":
        raise ValueError(f"{folder}: UNet2DModel with time_embedding_type={kind!r} has no difflab mapping: "
                         "difflab's samplers pass timesteps (fractional ones too) to a positional embedding")
    size = cfg.get("sample_size")
    if isinstance(size, (list, tuple)) and len(set(size)) > 1:
        raise ValueError(f"{folder}: UNet2DModel sample_size={list(size)} is not square; difflab samples "
                         "square images")
    if not (unet_dir / WEIGHTS).is_file():
        pickled = sorted(p.name for p in unet_dir.glob("*.bin"))
        if pickled:
            raise CheckpointError(f"{unet_dir} holds only pickled weights ({', '.join(pickled)}); difflab "
                                  f"reads safetensors ({WEIGHTS}): re-save with safe_serialization=True")
        raise CheckpointError(f"{unet_dir} has no weights file {WEIGHTS}; the export is incomplete")
    from diffusers import UNet2DModel

    try:
        unet = UNet2DModel.from_pretrained(str(unet_dir), local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{unet_dir} could not be loaded as a UNet2DModel: {first}") from err
    return unet.eval()


def load_vae(folder: Path, class_name: str) -> Any:
    """The ``AutoencoderKL`` in ``folder/vae`` with its ``scaling_factor`` and ``shift_factor`` as a
    :class:`~difflab.latent.LatentSpace` (safetensors only, no network access)."""
    from difflab.latent import load_latent_space

    if class_name != "AutoencoderKL":
        raise ValueError(f"{folder}: vae class {class_name!r} has no difflab mapping; difflab decodes "
                         "latents with an AutoencoderKL")
    vae_dir = folder / "vae"
    if not (vae_dir / WEIGHTS).is_file():
        raise CheckpointError(f"{vae_dir} has no weights file {WEIGHTS} (pickled .bin weights are not "
                              "read); the export is incomplete")
    return load_latent_space(f"diffusers:{vae_dir}")


def load_diffusers(folder: str | Path) -> Imported:
    """Read a local diffusers pipeline folder (see the module docs) into an :class:`Imported`."""
    from difflab.data import DataConfig
    from difflab.interop.nets import ImportedUNet
    from difflab.run_config import TrainConfig

    folder = Path(folder)
    index = read_model_index(folder)
    parts = _components(index)
    if "unet" not in parts:
        found = ", ".join(sorted(parts)) or "none"
        raise ValueError(f"{folder}: the pipeline has no unet (components: {found}); difflab imports "
                         "UNet2DModel pipelines")
    if "scheduler" not in parts:
        raise ValueError(f"{folder}: the pipeline has no scheduler; difflab needs its scheduler config "
                         "for the noise schedule and prediction type")
    extra = sorted(set(parts) - {"unet", "scheduler", "vae"})
    if extra:
        named = ", ".join(f"{k} ({parts[k][1]})" for k in extra)
        raise ValueError(f"{folder}: component(s) {named} have no difflab mapping (text pipelines are "
                         "not imported yet); difflab imports a unet, a scheduler and a vae")
    latent = load_vae(folder, parts["vae"][1]) if "vae" in parts else None
    sched_path = folder / "scheduler" / "scheduler_config.json"
    if not sched_path.is_file():
        raise CheckpointError(f"{folder} has no scheduler/scheduler_config.json; without it the schedule "
                              "and prediction type are unknown")
    sched_cfg = _read_json(sched_path, "the scheduler's config")
    try:
        imported = from_scheduler_config(sched_cfg, sched_cfg.get("_class_name") or parts["scheduler"][1])
    except ValueError as err:
        raise ValueError(f"{sched_path}: {err}") from err

    unet = load_unet(folder)
    sidecar = _read_json(folder / SIDECAR, "difflab's export record") if (folder / SIDECAR).is_file() else {}
    run_fields = dict(sidecar.get("run_config") or {})
    null_class = bool(sidecar.get("null_class", False))  # a foreign class-conditional UNet: none known
    net = ImportedUNet(unet, null_class=null_class)
    if int(unet.config.out_channels) != net.in_channels:
        raise ValueError(f"{folder}: the unet has {unet.config.out_channels} output channels for "
                         f"{net.in_channels} input channels (a learned variance?); difflab needs one "
                         "prediction per input channel")

    fields: dict[str, Any] = dict(imported.fields)
    if run_fields:  # a difflab export: its data, classes and sampling recipe
        for key in ("sample_sampler", "sample_steps", "sample_variance", "sample_guidance", "class_names",
                    "data", "cond"):
            if key in run_fields:
                fields[key] = run_fields[key]
    if "data" not in fields:
        channels = net.in_channels if net.in_channels in (1, 3) else None
        fields["data"] = DataConfig(image_size=net.image_size, channels=channels).to_dict()
    if net.num_classes:
        fields.setdefault("cond", "class")
        if not net.null_class:  # no unconditional branch to guide away from: conditional sampling
            fields["sample_guidance"] = 1.0
        if not fields.get("class_names"):
            fields["class_names"] = [str(i) for i in range(net.num_classes)]
    else:
        fields["cond"] = "none"
        fields["class_names"] = []
    if latent is not None:  # latent diffusion: decoded by the folder's own AutoencoderKL, unclipped
        fields.update(latent=latent.source, latent_digest=latent.digest)
        if "data" not in run_fields:
            fields["data"] = DataConfig(image_size=(net.image_size or 0) * latent.factor or None,
                                        channels=latent.autoencoder.in_channels).to_dict()
    fields.update(net_kind="diffusers-unet", net=None)
    fields["sample_steps"] = min(int(fields.get("sample_steps", 50)), int(fields["T"]))
    try:
        config = TrainConfig.from_dict(fields)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{folder}: the pipeline does not make a valid difflab run config: "
                              f"{err}") from err
    return Imported(net, config, imported.schedule, folder, imported, latent)


__all__ = ["SIDECAR", "Imported", "load_diffusers", "load_unet", "read_model_index"]
