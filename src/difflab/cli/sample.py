"""``difflab sample``: images, a denoising GIF and a progression strip from a trained run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from difflab.cli.args import AUTOENCODER_HELP, RUN_HELP, non_negative_float, positive_int, with_default


def _run_default(what: str, field: str) -> str:
    """Sampling defaults come from the run's config; the help states the default recipe's."""
    from difflab.run_config import TrainConfig

    return with_default("", TrainConfig.default(field)).strip()[:-1] + " for the default recipe; " \
        "otherwise the run's own)"


def add_sample_args(p: argparse.ArgumentParser) -> None:
    """The sampling options of the notes and of the sampler family, all reachable here."""
    from difflab.samplers import GRIDS, SAMPLERS
    from difflab.schedules import SPACINGS

    p.add_argument("--sampler", choices=(*SAMPLERS, "mix"),
                   help=_run_default("sampler", "sample_sampler") + "; a preset run samples with its note's: "
                   "ddpm for seed000/003/004, mix for the corrupt models")
    p.add_argument("--steps", type=positive_int,
                   help="sampling steps " + _run_default("steps", "sample_steps") + "; T for ddpm")
    p.add_argument("--spacing", choices=SPACINGS,
                   help="which of the T timesteps the steps visit; seed002 is note 002's DDIM grid "
                   "(default: the run's sample_spacing: trailing, or an imported pipeline's "
                   "timestep_spacing)")
    p.add_argument("--sigmas", choices=GRIDS,
                   help="noise levels of the sigma samplers (euler, heun, dpmpp-*, unipc): the respaced "
                   "timesteps, karras or uniform log-snr (default: timesteps)")
    p.add_argument("--rho", type=non_negative_float, default=7.0,
                   help="rho of the karras grid (default: 7.0)")
    p.add_argument("--eta", type=non_negative_float,
                   help="noise of ddim (default: 0, deterministic), euler-ancestral and dpmpp-*-sde "
                   "(default: 1)")
    p.add_argument("--simple-var", action="store_true",
                   help="note 002's DDIM option: eta = 1 with the beta variance for the noise (default: off)")
    p.add_argument("--variance", choices=("beta", "beta_tilde"),
                   help="DDPM's sigma_t^2, note 000's two choices "
                   + _run_default("variance", "sample_variance"))
    p.add_argument("--clip", action=argparse.BooleanOptionalAction,
                   help="clip the predicted x_0 to [-1, 1] as note 002 does; --no-clip as notes 000 and 004 "
                   "do " + _run_default("clip", "sample_clip"))
    p.add_argument("--churn", type=non_negative_float,
                   help="EDM's S_churn for euler and heun (default: 0)")
    p.add_argument("--weights", choices=("last", "best"),
                   help="the run's last weights or its best-loss epoch's (default: best for --keep-best "
                   "runs, else last)")
    p.add_argument("--n", type=positive_int, default=64, help=with_default("number of images", 64))
    p.add_argument("--seed", type=int, default=0, help=with_default("image i uses seed + i", 0))
    p.add_argument("--batch-size", type=positive_int, default=256, help=with_default("images per batch", 256))
    p.add_argument("--class", dest="classes",
                   help="class-conditional runs: a class number or name (--class 7, --class sneaker) for "
                   "every image, or several (--class 1,4,7, --class all): a grid with one row of --n "
                   "images per class, the same seeds in every row")
    p.add_argument("--prompt",
                   help='text-conditional runs: the prompt of every image ("" = unconditional)')
    p.add_argument("--prompt-file", type=Path,
                   help="text-conditional runs: one prompt per line; a grid with one row of --n images per "
                   "prompt, the same seeds in every row")
    p.add_argument("--negative-prompt",
                   help="text-conditional runs: guide away from this prompt instead of the empty one")
    p.add_argument("--guidance", type=non_negative_float,
                   help="classifier-free guidance scale w: 0 = unconditional, 1 = conditional, > 1 stronger "
                   + _run_default("guidance", "sample_guidance"))
    p.add_argument("--guidance-rescale", type=non_negative_float, default=0.0,
                   help=with_default("phi of Lin et al. 2024: pull the guided output's std back to the "
                                     "conditional one's", 0.0))
    p.add_argument("--guidance-interval", type=non_negative_float, nargs=2,
                   metavar=("SIGMA_LO", "SIGMA_HI"),
                   help="guide only at noise levels sigma in [lo, hi] (Kynkaanniemi et al. 2024; "
                   "default: all)")
    p.add_argument("--guidance-sequential", action="store_true",
                   help="run the two guidance branches one after the other (less memory; default: batched)")
    p.add_argument("--device", default="auto", help=with_default("auto | cpu | cuda | cuda:N", "auto"))
    p.add_argument("--autoencoder", help=AUTOENCODER_HELP)


def sample_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The :meth:`difflab.Pipeline.sample` arguments the flags ask for (unset flags are left to
    the run's defaults)."""
    if args.sampler == "ddpm" and args.eta is not None:
        raise ValueError("--eta applies to --sampler ddim only (and the ancestral/SDE samplers)")
    kwargs: dict[str, Any] = {
        "sampler": args.sampler, "steps": args.steps, "eta": args.eta, "seed": args.seed,
        "clip_x0": args.clip, "variance": args.variance, "spacing": args.spacing, "sigmas": args.sigmas,
    }
    if args.spacing is None:  # the run's own grid (the edits keep their trailing default)
        del kwargs["spacing"]
    if args.guidance_rescale > 1:
        raise ValueError(f"--guidance-rescale must lie in [0, 1], got {args.guidance_rescale}")
    if args.simple_var:
        kwargs["simple_var"] = True
    if args.sigmas == "karras":
        kwargs["rho"] = args.rho
    if args.churn is not None:
        kwargs["s_churn"] = args.churn
    return kwargs


def class_kwargs(pipe: Any, args: argparse.Namespace) -> dict[str, Any]:
    """``--class`` and ``--guidance*``: one class for every image, or a grid with one row per
    class, guided with the run's scale unless ``--guidance`` says otherwise."""
    from difflab.conditioning import parse_classes
    from difflab.pipeline import class_rows

    if args.classes is None:
        if args.guidance is not None and not _prompted(args):
            raise ValueError("--guidance needs a condition to guide towards: give --class or --prompt")
        return {}
    classes = parse_classes(args.classes, pipe.num_classes, pipe.class_names)
    out: dict[str, Any] = {"guidance": guidance_of(pipe, args)}
    if len(classes) == 1 and args.classes.strip().lower() != "all":
        return {**out, "class_labels": classes * args.n}
    return {**out, **class_rows(pipe, classes, args.n, args.seed)}


def guidance_of(pipe: Any, args: argparse.Namespace) -> Any:
    """The classifier-free guidance ``--guidance*`` ask for (scale: the run's unless given)."""
    from difflab.guidance import Guidance

    scale = pipe.config.sample_guidance if args.guidance is None else args.guidance
    interval = tuple(args.guidance_interval) if args.guidance_interval else None
    return Guidance(scale, args.guidance_rescale, interval, not args.guidance_sequential)


def _prompted(args: argparse.Namespace) -> bool:
    return any(getattr(args, a, None) is not None for a in ("prompt", "prompt_file", "negative_prompt"))


def prompt_kwargs(pipe: Any, args: argparse.Namespace) -> dict[str, Any]:
    """``--prompt``, ``--prompt-file`` and ``--negative-prompt`` of a text-conditional run: one
    prompt for every image, or a grid with one row per prompt of the file."""
    from difflab.conditioning.text import read_prompt_file
    from difflab.pipeline import prompt_rows

    if not pipe.is_text:
        if _prompted(args):
            hint = "use --class" if pipe.config.cond == "class" else "sample it without prompts"
            raise ValueError(f"--prompt needs a run trained with text (difflab train --cond text); "
                             f"{args.run} was trained with --cond {pipe.config.cond}: {hint}")
        return {}
    if args.classes is not None and getattr(args, "classifier", None) is None:
        raise ValueError(f"--class is for class-conditional runs; {args.run} is conditioned on text: "
                         "use --prompt or --prompt-file")
    if args.prompt is not None and args.prompt_file is not None:
        raise ValueError("give --prompt or --prompt-file, not both")
    out: dict[str, Any] = {"guidance": guidance_of(pipe, args)}
    if args.negative_prompt is not None:
        out["negative_prompts"] = args.negative_prompt
    if args.prompt_file is not None:
        rows = prompt_rows(read_prompt_file(args.prompt_file), args.n, args.seed)
        if args.negative_prompt is not None:
            out["negative_prompts"] = [args.negative_prompt] * rows["n"]
        return {**out, **rows}
    return {**out, "prompts": [args.prompt or ""] * args.n}


def cmd_sample(args: argparse.Namespace) -> None:
    from difflab.cli.classifier import guidance_kwargs
    from difflab.cli.controlnet import check_control_flags, control_kwargs
    from difflab.cli.finetune import lora_args
    from difflab.eval.sharded import joined, launched, local_device, write_spread
    from difflab.pipeline import load, write_samples

    kwargs = sample_kwargs(args)  # flags are checked before the run is loaded
    loras, scales = lora_args(args)
    check_control_flags(args)
    pipe = load(args.run, local_device(args.device), args.weights, lora=loras, lora_scale=scales,
                autoencoder=args.autoencoder, controlnet=args.controlnet)
    kwargs.update(control_kwargs(pipe, args))  # --control-image / --control-from with --controlnet
    kwargs.update(prompt_kwargs(pipe, args))  # --prompt, --prompt-file on a text-conditional run
    kwargs.update(guidance_kwargs(pipe, args))  # --classifier (on an unconditional run: with the labels)
    if "class_labels" not in kwargs:
        kwargs.update(class_kwargs(pipe, args))
    n = kwargs.pop("n", args.n)
    if args.from_noise is not None:
        from difflab.cli.noise_file import from_noise_kwargs

        n, kwargs = from_noise_kwargs(pipe, args, kwargs)
        print(f"sampling {n} image{'s' if n > 1 else ''} from the noise in {args.from_noise}")
    if launched():  # torchrun: the images spread over the processes; rank 0 writes them
        if args.gif or args.progression:
            raise ValueError("--gif and --progression follow one batch: sample them on one process")
        with joined(pipe.device):
            written = write_spread(pipe, n, out=args.out, save_dir=args.save_dir, batch_size=args.batch_size,
                                   **kwargs)
    else:
        written = write_samples(pipe, n, out=args.out, gif=args.gif, progression=args.progression,
                                save_dir=args.save_dir, batch_size=args.batch_size,
                                gif_normalize=args.gif_normalize, **kwargs)
    for p in written:
        print(f"wrote {p}")


def register(sub: argparse._SubParsersAction) -> None:
    from difflab.cli.classifier import add_guidance_args
    from difflab.cli.controlnet import add_control_args
    from difflab.cli.finetune import add_lora_args

    p = sub.add_parser("sample", help="sample images from a trained run")
    p.add_argument("run", type=Path, help=RUN_HELP)
    add_sample_args(p)
    add_guidance_args(p)
    add_lora_args(p)
    add_control_args(p)
    p.add_argument("--out", type=Path, default=Path("samples.png"),
                   help=with_default("grid image", "samples.png"))
    p.add_argument("--gif", type=Path, help="also write a denoising GIF")
    p.add_argument("--gif-normalize", choices=("clip", "minmax"), default="clip",
                   help="GIF frames: [-1, 1] mapped alike in every frame, or each image stretched to its own "
                   "range as note 000 does (default: clip)")
    p.add_argument("--progression", type=Path, help="also write a progression strip")
    p.add_argument("--from-noise", type=Path,
                   help="start from this noise (.npy, [n, C, H, W]; e.g. from `difflab edit invert`, whose "
                   "settings in the .json beside it are used unless flags say otherwise) instead of --seed's")
    p.add_argument("--save-dir", type=Path, help="also write each image as a PNG here")
    p.set_defaults(func=cmd_sample)
