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

A ``UNet2DConditionModel`` with ``text_encoder/`` and ``tokenizer/`` on disk is a text pipeline:
:class:`~difflab.interop.nets.ImportedCondUNet` under the network contract, its prompts encoded by
the folder's own encoder (:class:`~difflab.interop.text.FolderTextCondition`). A difflab text
export (``DifflabUNet``) comes back as the run's own UNet and text encoder (from ``difflab.json``).

Refused with a one-line error: a folder that is not a pipeline, missing weights, a component
difflab would have to ignore, a text encoder that is not on disk, a ``UNet2DConditionModel``
without one or with class / added-time / timestep-cond embeddings, super-resolution exports.
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
    text: Any = None  # a foreign text pipeline's own encoder (FolderTextCondition), else None


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


_COND_OPTIONS = ("class_embed_type", "addition_embed_type", "time_cond_proj_dim", "encoder_hid_dim_type")


def unet_class(folder: Path) -> str:
    """The ``_class_name`` of ``folder/unet/config.json``, or a one-line error when it is missing."""
    cfg_path = folder / "unet" / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{folder} has no unet/config.json; the pipeline's unet is missing")
    return str(_read_json(cfg_path, "the unet's config").get("_class_name"))


def _weights_present(unet_dir: Path) -> None:
    if not (unet_dir / WEIGHTS).is_file():
        pickled = sorted(p.name for p in unet_dir.glob("*.bin"))
        if pickled:
            raise CheckpointError(f"{unet_dir} holds only pickled weights ({', '.join(pickled)}); difflab "
                                  f"reads safetensors ({WEIGHTS}): re-save with safe_serialization=True")
        raise CheckpointError(f"{unet_dir} has no weights file {WEIGHTS}; the export is incomplete")


def load_unet(folder: Path, text: bool = False) -> Any:
    """The ``UNet2DModel`` (``UNet2DConditionModel`` with ``text``: the folder has a text encoder) in
    ``folder/unet`` (safetensors only, no network access)."""
    unet_dir = folder / "unet"
    cfg_path = unet_dir / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{folder} has no unet/config.json; the pipeline's unet is missing")
    cfg = _read_json(cfg_path, "the unet's config")
    cls = cfg.get("_class_name")
    if cls == "UNet2DConditionModel" and not text:
        raise ValueError(f"{folder}: UNet2DConditionModel (a text-conditional diffusers UNet) without a "
                         "text_encoder and tokenizer in the pipeline: difflab cannot encode its prompts")
    if cls not in ("UNet2DModel", "UNet2DConditionModel"):
        raise ValueError(f"{folder}: unet class {cls!r} has no difflab mapping; difflab imports UNet2DModel "
                         "and UNet2DConditionModel")
    if cls == "UNet2DConditionModel":
        used = [f"{k}={cfg[k]!r}" for k in _COND_OPTIONS if cfg.get(k) is not None]
        if used:
            raise ValueError(f"{folder}: UNet2DConditionModel with {', '.join(used)} has no difflab "
                             "mapping: difflab conditions it on encoder_hidden_states only")
    kind = cfg.get("time_embedding_type", "positional")
    if kind != "positional":
        raise ValueError(f"{folder}: {cls} with time_embedding_type={kind!r} has no difflab mapping: "
                         "difflab's samplers pass timesteps (fractional ones too) to a positional embedding")
    size = cfg.get("sample_size")
    if isinstance(size, (list, tuple)) and len(set(size)) > 1:
        raise ValueError(f"{folder}: {cls} sample_size={list(size)} is not square; difflab samples "
                         "square images")
    _weights_present(unet_dir)
    import diffusers

    try:
        unet = getattr(diffusers, cls).from_pretrained(str(unet_dir), local_files_only=True,
                                                       use_safetensors=True)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{unet_dir} could not be loaded as a {cls}: {first}") from err
    return unet.eval()


def load_difflab_unet(folder: Path, run_fields: dict[str, Any]) -> Any:
    """A difflab export's ``DifflabUNet`` (``unet/difflab_unet.py``: difflab's UNet, same parameter
    names) as difflab's own UNet, built from the run config in ``difflab.json``."""
    from difflab.io import load_weights
    from difflab.nets import build_net, net_config_from_dict

    if not run_fields.get("net"):
        raise CheckpointError(f"{folder}: a DifflabUNet needs the run config in {SIDECAR} (written by "
                              "difflab export); it is missing")
    _weights_present(folder / "unet")
    net = build_net(net_config_from_dict(run_fields["net"]))
    try:
        net.load_state_dict(load_weights(folder / "unet" / WEIGHTS))
    except RuntimeError as err:
        raise CheckpointError(f"{folder / 'unet' / WEIGHTS} does not fit the network in {SIDECAR}") from err
    return net.eval()


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
    extra = sorted(set(parts) - {"unet", "scheduler", "vae", "text_encoder", "tokenizer"})
    if extra:
        named = ", ".join(f"{k} ({parts[k][1]})" for k in extra)
        raise ValueError(f"{folder}: component(s) {named} have no difflab mapping; difflab imports a unet, "
                         "a scheduler, a vae and a text encoder with its tokenizer")
    text_parts = sorted({"text_encoder", "tokenizer"} & set(parts))
    if len(text_parts) == 1:
        raise ValueError(f"{folder}: the pipeline has a {text_parts[0]} but no "
                         f"{({'text_encoder', 'tokenizer'} - set(text_parts)).pop()}; difflab needs both to "
                         "encode prompts")
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

    sidecar = _read_json(folder / SIDECAR, "difflab's export record") if (folder / SIDECAR).is_file() else {}
    run_fields = dict(sidecar.get("run_config") or {})
    if run_fields.get("cond") == "lowres":
        raise ValueError(f"{folder}: a super-resolution export (DifflabUpscalePipeline) is not imported; "
                         f"sample its run folder ({sidecar.get('run', 'the run')}) with difflab")
    cls = unet_class(folder)
    if text_parts and cls not in ("UNet2DConditionModel", "DifflabUNet"):
        raise ValueError(f"{folder}: a text encoder with a {cls} has no difflab mapping; text pipelines "
                         "have a UNet2DConditionModel")
    text = None
    if cls == "DifflabUNet":  # difflab's own text export: its UNet and its text encoder, as trained
        net: Any = load_difflab_unet(folder, run_fields)
    elif cls == "UNet2DConditionModel" and text_parts:
        from difflab.interop.nets import ImportedCondUNet
        from difflab.interop.text import FolderTextCondition

        net = ImportedCondUNet(load_unet(folder, text=True))
        text = FolderTextCondition(folder, parts["text_encoder"][1], parts["tokenizer"][1])
        width = int(getattr(text.encoder.config, "hidden_size", net.context_dim))
        if width != net.context_dim:
            raise ValueError(f"{folder}: the text encoder gives {width}-wide states, the unet's "
                             f"cross_attention_dim is {net.context_dim}")
    else:
        null_class = bool(sidecar.get("null_class", False))  # a foreign class-conditional UNet: none known
        net = ImportedUNet(load_unet(folder), null_class=null_class)
    unet = net.inner if hasattr(net, "inner") else None
    if unet is not None and int(unet.config.out_channels) != net.in_channels:
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
    if text_parts:
        fields.update(cond="text", class_names=[])
    elif net.num_classes:
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
    if cls == "DifflabUNet":
        fields.update(net_kind="unet", net=run_fields["net"], text=run_fields.get("text"))
    else:
        fields.update(net_kind="diffusers-unet", net=None)
    fields["sample_steps"] = min(int(fields.get("sample_steps", 50)), int(fields["T"]))
    try:
        config = TrainConfig.from_dict(fields)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{folder}: the pipeline does not make a valid difflab run config: "
                              f"{err}") from err
    return Imported(net, config, imported.schedule, folder, imported, latent, text)


__all__ = ["SIDECAR", "Imported", "load_diffusers", "load_unet", "read_model_index"]
