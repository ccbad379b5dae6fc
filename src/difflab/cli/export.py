"""``difflab export RUN --to diffusers OUT/``: a run as a diffusers pipeline folder
(:mod:`difflab.interop.export`). The other direction needs no command: ``difflab sample
diffusers:DIR``, ``difflab eval diffusers:DIR`` and ``difflab edit ... diffusers:DIR`` read a local
diffusers pipeline folder through ``difflab.load`` (:mod:`difflab.interop.load`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from difflab.cli.args import with_default


def cmd_export(args: argparse.Namespace) -> None:
    from difflab.interop.export import export_run

    report = export_run(args.run, args.out, weights=args.weights, scheduler=args.scheduler, to=args.to,
                        autoencoder=args.autoencoder)
    for line in report.lines():
        print(line)


def register(sub: argparse._SubParsersAction) -> None:
    from difflab.interop.export import SCHEDULER_CHOICES, WEIGHT_CHOICES

    p = sub.add_parser(
        "export", help="write a run as a diffusers pipeline folder",
        description="Write a run as a folder DiffusionPipeline.from_pretrained(OUT) loads with no network: "
        "DDIMPipeline/DDPMPipeline for unconditional pixel runs; for class-conditional, latent (vae/: "
        "AutoencoderKL with the run's scaling_factor and shift_factor), text (the MiniLM text encoder, "
        "difflab's UNet as the custom component unet/difflab_unet.py) and super-resolution runs the "
        "folder's pipeline_difflab.py, loaded with trust_remote_code=True. Every converted network is "
        "checked by equal outputs before anything is written; the run folder is only read.")
    p.add_argument("run", type=Path, help="run folder written by `difflab train` (only read)")
    p.add_argument("out", type=Path, help="the new pipeline folder (must not exist, or be empty)")
    p.add_argument("--to", choices=("diffusers",), required=True,
                   help="the format to write: diffusers (DiffusionPipeline.from_pretrained(OUT))")
    p.add_argument("--weights", choices=WEIGHT_CHOICES, default="ema",
                   help=with_default("ema: model.safetensors (the EMA weights sampling uses); best: "
                                     "best.safetensors; raw: the newest checkpoint's non-EMA network", "ema"))
    p.add_argument("--scheduler", choices=SCHEDULER_CHOICES,
                   help="the scheduler and pipeline: ddim (DDIMPipeline) or ddpm (DDPMPipeline) "
                   "(default: the run's: ddpm for runs that sample with ddpm, ddim otherwise)")
    p.add_argument("--autoencoder", metavar="PATH",
                   help="a latent run's autoencoder, when it moved since training (checked against the "
                   "run's digest; default: the run's own copy, else where training found it)")
    p.set_defaults(func=cmd_export)
