"""``difflab export RUN --to diffusers OUT/``: a run folder as a diffusers pipeline folder.

The folder loads with ``diffusers.DiffusionPipeline.from_pretrained(OUT)`` and samples with no
network access:

- unconditional runs: a standard ``DDIMPipeline`` (``DDPMPipeline`` for runs that sample with ddpm,
  or ``scheduler="ddpm"``), ``unet/`` a ``UNet2DModel`` and ``scheduler/`` its config;
- class-conditional runs: no standard diffusers pipeline takes class labels for a UNet2DModel, so
  the folder holds ``pipeline_difflab.py`` (:mod:`difflab.interop.pipeline_difflab`, torch and
  diffusers only) named in ``model_index.json``; diffusers runs it only with
  ``trust_remote_code=True``;
- latent runs (``--latent``): the same custom pipeline with ``vae/``, a diffusers ``AutoencoderKL``
  (difflab's autoencoder converted by :mod:`~difflab.interop.vae_convert` and checked by equal
  encode/decode outputs, or the run's diffusers one copied) whose ``scaling_factor`` and
  ``shift_factor`` are the run's: the UNet denoises z = (mean - shift) * scale, and the pipeline
  decodes ``vae.decode(z / scaling_factor + shift_factor)``, with no x_0 clipping in latent space;
- text runs (``--cond text``, pixel or latent): ``DifflabTextPipeline`` with ``text_encoder/`` (the
  frozen MiniLM ``BertModel``, its files copied), ``tokenizer/`` and ``unet/`` a
  :class:`~difflab.interop.difflab_unet.DifflabUNet` (``unet/difflab_unet.py``, a diffusers custom
  component): difflab's cross-attention (GroupNorm, masked zero tokens) has no exact
  ``UNet2DConditionModel``/``Transformer2DModel`` form (LayerNorms and a feed-forward no weights
  can turn into the identity), so the UNet travels as itself, same weights, checked by equal outputs;
- super-resolution runs (``--cond lowres``): ``DifflabUpscalePipeline`` with a ``UNet2DModel`` of
  ``in_channels`` = 2 C (x_t joined to the bicubic enlargement of the low-resolution image, SR3)
  and ``factor`` in ``model_index.json``.

The network: ``--net diffusers-unet`` runs export their UNet2DModel itself (bit-exact); difflab's
own UNet is converted (:func:`~difflab.interop.unet_convert.convert_unet`) and the conversion is
checked by equal outputs before anything is written; other networks (the notes' seed networks)
are refused with an error naming what has no diffusers form.

The weights: the run's ``model.safetensors`` holds the EMA weights (the training loop writes the
EMA copy there), and they are what is exported by default; ``weights="best"`` takes
``best.safetensors``, ``weights="raw"`` the newest checkpoint's raw (non-EMA) network. The run
folder is only read: the weights go into a fresh network, never swapped into a training state
(diffusers PR #2706's pitfall), and ``OUT`` may not lie inside the run folder.

The scheduler config carries every field that changes sampling
(:func:`~difflab.interop.scheduler_config.to_scheduler_config`), and the export re-creates the
scheduler in diffusers and checks its alpha-bar against the run's schedule. ``difflab.json`` records
the run's config, the weights exported and the measured conversion difference; ``difflab.load`` of
the folder reads it back (:mod:`difflab.interop.load`).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from difflab.interop.load import SIDECAR
from difflab.interop.scheduler_config import EXPORT_CLASSES, run_scheduler_config
from difflab.io import CheckpointError, load_weights

WEIGHT_CHOICES = ("ema", "best", "raw")
SCHEDULER_CHOICES = ("ddim", "ddpm")
CUSTOM_MODULE = "pipeline_difflab"
CUSTOM_CLASS = "DifflabClassPipeline"
TEXT_CLASS = "DifflabTextPipeline"
UPSCALE_CLASS = "DifflabUpscalePipeline"
UNET_MODULE = "difflab_unet"


@dataclass(frozen=True)
class ExportReport:
    """What was written: the folder, the pipeline class, the weights, how exact it is."""

    out: Path
    pipeline_class: str
    scheduler_class: str
    weights: str
    exact: str
    max_difference: float
    needs_trust_remote_code: bool

    def lines(self) -> list[str]:
        load = "DiffusionPipeline.from_pretrained(OUT" + (", trust_remote_code=True)" if
                                                           self.needs_trust_remote_code else ")")
        return [f"wrote {self.out} ({self.pipeline_class} + {self.scheduler_class}, {self.weights} weights)",
                f"network: {self.exact}",
                f"load it with diffusers: {load}"]


def read_run(run: str | Path) -> Any:
    """The :class:`~difflab.run_config.TrainConfig` of a run folder, or a one-line error."""
    from difflab.run_config import TrainConfig

    run = Path(run)
    path = run / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{run} has no config.json; point at a folder written by `difflab train`")
    try:
        return TrainConfig.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path} is not a valid difflab config: {err}") from err


_STEP = re.compile(r"step_(\d+)\.pt$")


def run_weights(run: Path, weights: str) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict to export and the file it came from (``ema``: model.safetensors, ``best``:
    best.safetensors, ``raw``: the newest checkpoint's network, read with ``weights_only``)."""
    if weights not in WEIGHT_CHOICES:
        raise ValueError(f"weights={weights!r} is not valid; choose one of: {', '.join(WEIGHT_CHOICES)}")
    if weights == "raw":
        found = sorted((int(m.group(1)), p) for p in (run / "checkpoints").glob("step_*.pt")
                       if (m := _STEP.search(p.name)))
        if not found:
            raise CheckpointError(f"{run} has no checkpoints/step_N.pt to take the raw weights from; "
                                  "export the EMA weights (the default)")
        path = found[-1][1]
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for a bad file
            raise CheckpointError(f"checkpoint {path} is unreadable ({type(err).__name__})") from err
        if not isinstance(state, dict) or "model" not in state:
            raise CheckpointError(f"checkpoint {path} holds no network weights")
        return state["model"], str(path.relative_to(run))
    name = "model.safetensors" if weights == "ema" else "best.safetensors"
    if not (run / name).is_file():
        hint = ("it was not trained with --keep-best" if weights == "best"
                else "is training finished, or were the files moved?")
        raise CheckpointError(f"{run} has no {name} (the {weights} weights): {hint}")
    return load_weights(run / name), name


def _unet2d(net: Any, config: Any, image_size: int) -> tuple[Any, str, float]:
    """The UNet2DModel of a run's network, a line on how exact it is, and the measured difference."""
    from difflab.interop.unet_convert import check_convertible, check_equal, convert_unet
    from difflab.nets import DiffusersUNet, UNet

    if isinstance(net, DiffusersUNet):
        unet = copy.deepcopy(net.inner).eval()
        return unet, "the run's own UNet2DModel (--net diffusers-unet): exact, same weights", 0.0
    if isinstance(net, UNet):
        size = check_convertible(net.config, image_size)
        unet = convert_unet(net, size, check=False)
        diff = check_equal(net, unet, size)
        return unet, (f"difflab UNet converted to UNet2DModel(resnet_time_scale_shift='scale_shift'); "
                      f"outputs equal to {diff:.1e} (relative)"), diff
    kind = getattr(config.net, "kind", None) or config.net_kind
    raise ValueError(f"--net {kind} has no diffusers UNet2DModel form; export runs of --net unet or "
                     "--net diffusers-unet")


def _difflab_unet(net: Any, config: Any, image_size: int) -> tuple[Any, str, float]:
    """difflab's UNet as :class:`~difflab.interop.difflab_unet.DifflabUNet` (its cross-attention has
    no UNet2DConditionModel form; see that module), same weights, checked by equal outputs."""
    from difflab.interop.difflab_unet import DifflabUNet
    from difflab.interop.unet_convert import check_equal
    from difflab.nets import UNet

    if not isinstance(net, UNet):
        kind = getattr(config.net, "kind", None) or config.net_kind
        raise ValueError(f"--net {kind} with --cond text has no diffusers form; export text runs of "
                         "--net unet")
    c = net.config
    unet = DifflabUNet(in_channels=c.in_channels, out_channels=c.out_channels or c.in_channels,
                       concat_channels=c.concat_channels, base_channels=c.base_channels,
                       channel_mult=tuple(c.channel_mult), num_res_blocks=c.num_res_blocks,
                       attention_levels=tuple(c.attention_levels()), num_heads=c.num_heads, groups=c.groups,
                       num_classes=c.num_classes, context_dim=c.context_dim, mid_attention=c.mid_attention,
                       sample_size=c.image_size or image_size)
    unet.load_state_dict(net.state_dict())
    unet = unet.eval().to(next(net.parameters()).device)
    diff = check_equal(net, unet, c.image_size or image_size)
    return unet, (f"difflab UNet with cross-attention as DifflabUNet (unet/difflab_unet.py; diffusers' "
                  f"Transformer2DModel has no exact form of it), same weights; outputs equal to {diff:.1e} "
                  "(relative)"), diff


def _text_parts(config: Any, folder: Path) -> dict[str, list[str]]:
    """Write the run's frozen text encoder (``text_encoder/``, its files copied) and tokenizer
    (``tokenizer/``) into ``folder``; their ``model_index.json`` entries."""
    from transformers import AutoTokenizer

    from difflab.conditioning.text import TextConfig, TextEncoder

    text = config.text or TextConfig()
    source = TextEncoder(text.encoder, text.max_length).model_path()
    model_cfg = json.loads((source / "config.json").read_text())
    (folder / "text_encoder").mkdir()
    for name in ("config.json", "model.safetensors"):
        if not (source / name).is_file():
            raise CheckpointError(f"the text encoder {text.encoder} at {source} has no {name}; reinstall it")
        shutil.copyfile(source / name, folder / "text_encoder" / name)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    tokenizer.save_pretrained(folder / "tokenizer")
    return {"text_encoder": ["transformers", (model_cfg.get("architectures") or ["BertModel"])[0]],
            "tokenizer": ["transformers", type(tokenizer).__name__]}


def run_latent_space(run: Path, config: Any, autoencoder: str | Path | None = None) -> Any:
    """A latent run's :class:`~difflab.latent.LatentSpace`: ``autoencoder`` when given, else the
    run's own copy, else ``config.latent``; refused unless it is the one the run was trained with."""
    from difflab.latent import load_latent_space
    from difflab.latent.space import RUN_COPY

    source: str | Path = autoencoder if autoencoder is not None else (
        run / RUN_COPY if (run / RUN_COPY).is_file() else config.latent)
    try:
        space = load_latent_space(source)
    except OSError as err:
        raise CheckpointError(f"the run's autoencoder {source} is unreadable ({err}); give it with "
                              "--autoencoder PATH") from err
    except CheckpointError as err:
        raise CheckpointError(f"{err}; if the run's autoencoder moved, give it with --autoencoder "
                              "PATH") from err
    if config.latent_digest and space.digest != config.latent_digest:
        raise CheckpointError(f"the autoencoder {source} is {space.digest}, but the run was trained with "
                              f"{config.latent_digest}; give the one it was trained with (--autoencoder)")
    return space


def _vae(space: Any, image_size: int) -> tuple[Any, str, float]:
    """A diffusers AutoencoderKL of a latent space, with its scaling in the config; how exact it
    is, and the measured difference."""
    from difflab.interop.vae_convert import check_vae_equal, convert_vae
    from difflab.nets.autoencoder import AutoencoderKL
    from difflab.nets.diffusers_autoencoder import DiffusersAutoencoder

    ae = space.autoencoder
    if isinstance(ae, DiffusersAutoencoder):
        vae = copy.deepcopy(ae.inner).eval()
        vae.register_to_config(scaling_factor=float(space.scale_factor),
                               shift_factor=float(space.shift_factor))
        return vae, "the run's own diffusers AutoencoderKL: exact, same weights", 0.0
    if isinstance(ae, AutoencoderKL):
        vae = convert_vae(ae, image_size, space.scale_factor, space.shift_factor, check=False)
        diff = check_vae_equal(ae, vae, image_size)
        return vae, (f"difflab autoencoder converted to AutoencoderKL; encode/decode equal to {diff:.1e} "
                     "(relative)"), diff
    raise ValueError(f"the autoencoder {space.source} ({type(ae).__name__}) has no diffusers AutoencoderKL "
                     "form")


def _check_schedule(scheduler: Any, config: Any) -> None:
    """The diffusers scheduler's alpha-bar must be the run's (else the config mapping is wrong)."""
    ours = config.make_schedule().alphas_cumprod
    theirs = scheduler.alphas_cumprod.double()
    diff = float((ours - theirs).abs().max())
    if not diff <= 1e-5:
        raise ValueError(f"the exported scheduler's alpha-bar differs from the run's by {diff:.1e}; "
                         "refusing to write a scheduler that samples another schedule")


def _check_out(run: Path, out: Path) -> None:
    r, o = run.resolve(), out.resolve()
    if o == r or r in o.parents:
        raise ValueError(f"{out} lies inside the run folder {run}; export to a folder outside it "
                         "(the run folder is only read)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists and is not empty; export to a new folder")


def export_run(run: str | Path, out: str | Path, *, weights: str = "ema", scheduler: str | None = None,
               to: str = "diffusers", autoencoder: str | Path | None = None) -> ExportReport:
    """Write ``run`` as a diffusers pipeline folder ``out`` (see the module docs)."""
    from difflab.nets import build_net

    if to != "diffusers":
        raise ValueError(f"--to {to!r} is not a known format; difflab exports to: diffusers")
    run, out = Path(run), Path(out)
    if scheduler is not None and scheduler not in SCHEDULER_CHOICES:
        raise ValueError(f"scheduler={scheduler!r} is not valid; choose one of: "
                         f"{', '.join(SCHEDULER_CHOICES)}")
    config = read_run(run)
    _check_out(run, out)
    if config.objective != "diffusion":
        raise ValueError(f"{run} was trained with --objective {config.objective} (seed 003's mixing model), "
                         "which is not a diffusion model; diffusers has no pipeline for it")
    if autoencoder is not None and not config.latent:
        raise ValueError(f"{run} is not a latent run; it takes no --autoencoder")
    net = build_net(config.net)
    state, source = run_weights(run, weights)
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{run / source} does not fit the network in config.json") from err
    net.eval()
    size = config.data.image_size
    space = vae = None
    vae_exact, vae_diff = "", 0.0
    if config.latent:
        space = run_latent_space(run, config, autoencoder)
        vae, vae_exact, vae_diff = _vae(space, size)
        size //= space.factor
    text = config.cond == "text"
    unet, exact, diff = (_difflab_unet if text else _unet2d)(net, config, size)

    import diffusers

    class_name = {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler", None: None}[scheduler]
    sched_cfg = run_scheduler_config(config, class_name)
    class_name = sched_cfg["_class_name"]
    assert class_name in EXPORT_CLASSES
    sched = getattr(diffusers, class_name).from_config({k: v for k, v in sched_cfg.items()
                                                         if not k.startswith("_")})
    _check_schedule(sched, config)

    conditional = bool(getattr(net, "num_classes", 0))
    lowres = config.cond == "lowres"
    custom = conditional or text or lowres or vae is not None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if custom:
            pipeline_class = TEXT_CLASS if text else UPSCALE_CLASS if lowres else CUSTOM_CLASS
            unet.save_pretrained(tmp / "unet", safe_serialization=True)
            sched.save_pretrained(tmp / "scheduler")
            shutil.copyfile(Path(__file__).with_name(f"{CUSTOM_MODULE}.py"), tmp / f"{CUSTOM_MODULE}.py")
            index = {"_class_name": [CUSTOM_MODULE, pipeline_class],
                     "_diffusers_version": diffusers.__version__,
                     "scheduler": ["diffusers", class_name], "unet": ["diffusers", "UNet2DModel"]}
            if text:
                unet_file = f"{UNET_MODULE}.py"
                shutil.copyfile(Path(__file__).with_name(unet_file), tmp / "unet" / unet_file)
                index["unet"] = [UNET_MODULE, type(unet).__name__]
                index.update(_text_parts(config, tmp))
                index["max_length"] = (config.text.max_length if config.text else 256)
            if lowres:
                index["factor"] = config.lowres_factor
            if vae is not None:
                vae.save_pretrained(tmp / "vae", safe_serialization=True)
                index["vae"] = ["diffusers", "AutoencoderKL"]
            (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        else:
            cls = diffusers.DDPMPipeline if class_name == "DDPMScheduler" else diffusers.DDIMPipeline
            pipeline_class = cls.__name__
            cls(unet=unet, scheduler=sched).save_pretrained(tmp, safe_serialization=True)
        record = {
            "difflab_export": 1,
            "run": str(run),
            "weights": weights,
            "weights_file": source,
            "network": exact,
            "max_difference": diff,
            "null_class": conditional,
            "pipeline_class": pipeline_class,
            "run_config": config.to_dict(),
        }
        if space is not None:
            record["latent"] = {"autoencoder": vae_exact, "max_difference": vae_diff,
                                "scale_factor": float(space.scale_factor),
                                "shift_factor": float(space.shift_factor)}
        (tmp / SIDECAR).write_text(json.dumps(record, indent=2) + "\n")
        (tmp / "README.md").write_text(_readme(run, pipeline_class, class_name, weights, exact, conditional,
                                               None if space is None else vae_exact, text))
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if space is not None:
        exact = f"{exact}; autoencoder: {vae_exact}"
    return ExportReport(out, pipeline_class, class_name, weights, exact, max(diff, vae_diff),
                        custom)


def _readme(run: Path, pipeline: str, scheduler: str, weights: str, exact: str, conditional: bool,
            autoencoder: str | None, text: bool = False) -> str:
    custom = conditional or text or autoencoder is not None or pipeline == UPSCALE_CLASS
    call = ("images = pipe(class_labels=[0, 1, 2], guidance_scale=3.0, num_inference_steps=50).images"
            if conditional else "images = pipe(batch_size=4, num_inference_steps=50).images")
    if text:
        call = ('images = pipe(prompt=["a prompt", "another"], negative_prompt="", guidance_scale=3.0, '
                "num_inference_steps=50).images")
    if pipeline == UPSCALE_CLASS:
        call = "images = pipe(image=small_pil_images, num_inference_steps=50).images"
    load = (("pipe = DiffusionPipeline.from_pretrained(OUT, trust_remote_code=True)"
             "  # runs pipeline_difflab.py\n" + call) if custom else
            "pipe = DiffusionPipeline.from_pretrained(OUT)\n"
            "images = pipe(num_inference_steps=50"
            + (", use_clipped_model_output=True" if scheduler == "DDIMScheduler" else "") + ").images")
    latent = ("" if autoencoder is None else
              f"Autoencoder (`vae/`): {autoencoder}. The UNet denoises latents z = (mean - shift_factor) * "
              "scaling_factor; the pipeline decodes `vae.decode(z / scaling_factor + shift_factor)`.\n")
    return (f"# difflab export of {run.name}\n\n"
            f"A diffusers pipeline ({pipeline}, {scheduler}) written by `difflab export` from {weights} "
            "weights.\n"
            f"Network: {exact}.\n{latent}\n"
            f"```python\nfrom diffusers import DiffusionPipeline\n{load}\n```\n\n"
            "With DDIMScheduler, `use_clipped_model_output=True` re-derives eps from the clipped x_0 as "
            "difflab's DDIM does (it matters only with clip_sample). `difflab.json` holds the run's config; "
            "`difflab sample diffusers:OUT` samples the folder with difflab.\n")


__all__ = ["SCHEDULER_CHOICES", "WEIGHT_CHOICES", "ExportReport", "export_run", "read_run", "run_weights"]
