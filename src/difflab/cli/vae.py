"""``difflab train-vae``: train the latent autoencoder (Rombach et al. 2022); ``difflab vae-check``:
how well an autoencoder (a train-vae run or ``diffusers:DIR``) reconstructs a data set and whether
its scaled latents have unit variance there."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from difflab.cli.args import int_list, non_negative_float, positive_float, positive_int, with_default

# flag -> VAETrainConfig field, for flags that set a field directly
FIELDS = {
    "steps": "steps", "batch_size": "batch_size", "lr": "lr", "factor": "factor",
    "latent_channels": "latent_channels", "recon": "recon", "kl_weight": "kl_weight",
    "perceptual_weight": "perceptual_weight", "perceptual_size": "perceptual_size",
    "disc_weight": "disc_weight", "disc_start": "disc_start", "holdout": "holdout", "eval_n": "eval_n",
    "eval_every": "eval_every", "checkpoint_every": "checkpoint_every", "log_every": "log_every",
    "seed": "seed", "device": "device",
}  # fmt: skip
DATA = {"image_size": "image_size", "image_channels": "channels", "limit": "limit"}


def _default(field: str) -> Any:
    from difflab.latent.config import VAETrainConfig

    return VAETrainConfig.default(field)


def _help(text: str, field: str) -> str:
    return with_default(text, _default(field))


def config_from_args(args: argparse.Namespace) -> Any:
    """The run the flags describe; with ``--resume`` the saved config with the given flags on top
    (fields that may not change are then refused by the trainer)."""
    from difflab.data import parse_data_spec
    from difflab.latent.config import VAETrainConfig
    from difflab.nets.autoencoder import AutoencoderConfig

    saved_path = Path(args.out) / "config.json"
    base = VAETrainConfig()
    if args.resume and saved_path.is_file():
        from difflab.io import CheckpointError

        try:
            base = VAETrainConfig.from_dict(json.loads(saved_path.read_text()))
        except (ValueError, TypeError, AttributeError) as err:
            why = " ".join(str(err).split())[:160]
            raise CheckpointError(f"--resume: {saved_path} is not a train-vae config ({why}); resume an "
                                  "autoencoder run, or start a new --out") from None
    fields: dict[str, Any] = {f: getattr(args, a) for a, f in FIELDS.items() if getattr(args, a) is not None}
    if args.no_fd:
        fields["eval_fd"] = False
    data_fields = {f: getattr(args, a) for a, f in DATA.items() if getattr(args, a) is not None}
    if args.flip:
        data_fields["flip"] = True
    if args.data is not None:
        fields["data"] = parse_data_spec(args.data, **data_fields)
    elif data_fields:
        fields["data"] = base.data.replace(**data_fields)
    shape = {k: v for k, v in (("channels", args.channels), ("res_blocks", args.res_blocks)) if v is not None}
    if (
        args.channels is not None
        or args.res_blocks is not None
        or "factor" in fields
        or "latent_channels" in fields
    ):
        fields["net"] = None  # resolved again from the data and the shape flags below
    cfg = base.replace(**fields)
    if shape:
        from difflab.data import load_dataset

        channels = shape.pop("channels", None)
        c = load_dataset(cfg.data).shape[0]
        net = AutoencoderConfig.for_factor(cfg.factor, c, cfg.latent_channels, **shape)
        if channels is not None:
            net = net.replace(channels=channels)
            cfg = cfg.replace(factor=net.factor)
        cfg = cfg.replace(net=net)
    return cfg


def cmd_train_vae(args: argparse.Namespace) -> None:
    from difflab.train.vae import GRID, train_vae

    cfg = config_from_args(args)
    result = train_vae(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    s = result.scores
    parts = [f"PSNR {s['psnr']:.2f} dB"]
    if "ssim" in s:
        parts.append(f"SSIM {s['ssim']:.4f}")
    if "fd_effnet_lite0" in s:
        parts.append(f"FD-EffNetLite0 {s['fd_effnet_lite0']:.2f}")
    print(
        f"trained {result.steps} steps in {result.seconds:.0f} s; held out: {', '.join(parts)}; scale factor "
        f"{result.scale_factor:.5g}; weights: {Path(args.out) / 'model.safetensors'}, grid: "
        f"{Path(args.out) / GRID}"
    )


def cmd_vae_check(args: argparse.Namespace) -> None:
    import torch

    from difflab.data import load_dataset, parse_data_spec
    from difflab.eval.reconstruction import reconstruct, reconstruction_scores
    from difflab.latent import latent_stats, load_latent_space, unit_variance_problem

    space = load_latent_space(args.vae, args.device or "cpu")
    fields = {k: v for k, v in (("image_size", args.image_size), ("limit", args.n)) if v is not None}
    data = load_dataset(parse_data_spec(args.data, **fields))
    space.latent_shape(data.shape)  # clear errors for channels and sizes first
    x = data.batch(range(len(data)), flip=False)[0]
    gen = torch.Generator().manual_seed(0)
    stats = latent_stats(lambda b: space.to_latent(b, generator=gen), x)
    scores = reconstruction_scores(x, reconstruct(space.autoencoder, x))
    ssim = f", SSIM {scores['ssim']:.4f}" if "ssim" in scores else ""
    print(
        f"{space.source}: factor {space.factor}, scale factor {space.scale_factor:.5g}, shift "
        f"{space.shift_factor:g}; on {len(x)} {data.name} images: scaled latents mean {stats.mean:.3g}, "
        f"std {stats.std:.3g}; PSNR {scores['psnr']:.2f} dB{ssim}"
    )
    problem = unit_variance_problem(stats)
    if problem:
        print(f"warning: {problem}")


def register(sub: argparse._SubParsersAction) -> None:
    from difflab.data import SPEC_FORMS
    from difflab.nets.autoencoder import AutoencoderConfig

    p = sub.add_parser(
        "train-vae",
        help="train a KL autoencoder for latent diffusion (PSNR, SSIM, FD of "
        "reconstructions; the latent scale factor measured from the data)",
    )
    p.add_argument("--data", help=f"{SPEC_FORMS} (default: mnist)")
    p.add_argument("--out", required=True, help="run folder to create (or continue with --resume)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument(
        "--factor",
        type=positive_int,
        help=_help("downsampling factor, a power of two: 28x28 -> 7x7 at 4", "factor"),
    )
    p.add_argument("--latent-channels", type=positive_int, help=_help("latent channels", "latent_channels"))
    p.add_argument(
        "--channels",
        type=int_list,
        help="widths per level, e.g. 32,64,64 (sets the factor: 2^(levels-1); default 32,64,64,...)",
    )
    p.add_argument("--res-blocks", type=positive_int,
                   help=with_default("residual blocks per level", AutoencoderConfig.default("res_blocks")))
    p.add_argument("--steps", type=positive_int, help=_help("optimizer steps", "steps"))
    p.add_argument("--batch-size", type=positive_int, help=_help("images per step", "batch_size"))
    p.add_argument("--lr", type=positive_float, help=_help("Adam learning rate", "lr"))
    p.add_argument("--recon", choices=("l1", "mse"), help=_help("reconstruction loss", "recon"))
    p.add_argument("--kl-weight", type=non_negative_float, help=_help("weight of the KL term", "kl_weight"))
    p.add_argument(
        "--perceptual-weight",
        type=non_negative_float,
        help=_help("weight of the EfficientNet-Lite0 perceptual term (0 = off)", "perceptual_weight"),
    )
    p.add_argument(
        "--perceptual-size",
        type=positive_int,
        help=_help("image size the perceptual network sees", "perceptual_size"),
    )
    p.add_argument(
        "--disc-weight",
        type=non_negative_float,
        help=_help("weight of the patch-discriminator GAN term (0 = off)", "disc_weight"),
    )
    p.add_argument(
        "--disc-start", type=int, help=_help("step at which the discriminator starts", "disc_start")
    )
    p.add_argument(
        "--image-size", type=positive_int, help="resize the data to N x N (a multiple of the factor)"
    )
    p.add_argument(
        "--image-channels", type=int, choices=(1, 3), help="convert the data to grey (1) or RGB (3)"
    )
    p.add_argument("--flip", action="store_true", help="random horizontal flips")
    p.add_argument("--limit", type=positive_int, help="use N images only (seeded shuffle)")
    p.add_argument(
        "--holdout", type=positive_float, help=_help("share of images held out for the scores", "holdout")
    )
    p.add_argument("--eval-n", type=positive_int, help=_help("held-out images scored", "eval_n"))
    p.add_argument(
        "--eval-every", type=int, help=_help("score every N steps too (0: at the end only)", "eval_every")
    )
    p.add_argument("--no-fd", action="store_true", help="skip FD-EffNetLite0 (PSNR and SSIM only)")
    p.add_argument(
        "--checkpoint-every", type=positive_int, help=_help("checkpoint interval", "checkpoint_every")
    )
    p.add_argument("--log-every", type=positive_int, help=_help("log.jsonl interval", "log_every"))
    p.add_argument("--seed", type=int, help=_help("seed of everything random", "seed"))
    p.add_argument("--device", help=_help("auto | cpu | cuda | cuda:N", "device"))
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train_vae)

    q = sub.add_parser(
        "vae-check",
        help="an autoencoder's reconstruction PSNR/SSIM and scaled-latent variance "
        "on a data set (warns when far from unit variance)",
    )
    q.add_argument("vae", help="a train-vae run folder, its model.safetensors, or diffusers:DIR")
    q.add_argument("--data", default="mnist", help=f"{SPEC_FORMS} (default: mnist)")
    q.add_argument("--image-size", type=positive_int, help="resize the data to N x N")
    q.add_argument("--n", type=positive_int, default=1000, help="images to use (default: 1000)")
    q.add_argument("--device", help="cpu (default) | cuda | cuda:N")
    q.set_defaults(func=cmd_vae_check)
