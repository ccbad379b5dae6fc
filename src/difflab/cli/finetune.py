"""``difflab finetune`` (a LoRA adapter of a trained run on new data) and ``difflab merge-lora``
(a new run folder with adapters merged into the weights)."""

from __future__ import annotations

import argparse
from pathlib import Path

from difflab.cli.args import (
    add_base_training_args,
    non_negative_float,
    positive_float,
    positive_int,
    with_default,
)


def add_lora_args(p: argparse.ArgumentParser) -> None:
    """``--lora DIR`` (repeatable) and ``--lora-scale S`` (one for all, or one per ``--lora``)."""
    p.add_argument("--lora", type=Path, action="append", metavar="DIR",
                   help="merge this LoRA adapter (a `difflab finetune` folder) into the run's weights; "
                   "repeat for several")
    p.add_argument("--lora-scale", type=float, action="append", metavar="S",
                   help="strength of the adapters: once for all, or once per --lora in order "
                   "(default: the full adapter, scale 1; 0 is the base run)")


def lora_args(args: argparse.Namespace) -> tuple[list[Path] | None, list[float] | None]:
    """The adapters and scales ``--lora`` / ``--lora-scale`` ask for (checked before loading)."""
    loras, scales = getattr(args, "lora", None), getattr(args, "lora_scale", None)
    if scales and not loras:
        raise ValueError("--lora-scale needs --lora")
    if loras and scales and len(scales) not in (1, len(loras)):
        raise ValueError(f"give --lora-scale once (for all) or once per --lora: {len(loras)} adapters, "
                         f"{len(scales)} scales")
    if loras and scales and len(scales) == 1:
        scales = scales * len(loras)
    return loras, scales


def cmd_finetune(args: argparse.Namespace) -> None:
    from difflab.nets.lora import LoRAConfig, parse_targets
    from difflab.train.finetune import finetune

    if args.steps is not None and args.time_budget is not None:
        raise ValueError("give --steps or --time-budget, not both")
    db_flags = {"--instance-images": args.instance_images, "--instance-prompt": args.instance_prompt,
                "--class-prompt": args.class_prompt}
    if args.method == "lora":
        given = [f for f, v in db_flags.items() if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)} are for --method dreambooth")
        if args.data is None:
            raise ValueError("--method lora needs --data: the images to learn")
    else:
        missing = [f for f, v in db_flags.items() if v is None]
        if missing:
            raise ValueError(f"--method dreambooth needs {', '.join(missing)}")
        if args.data is not None:
            raise ValueError("--method dreambooth learns the --instance-images; drop --data")
    lora = LoRAConfig(rank=args.rank, alpha=args.alpha, targets=parse_targets(args.targets),  # type: ignore[arg-type]
                      dropout=args.lora_dropout)
    common = dict(lora=lora, steps=args.steps, time_budget=args.time_budget, lr=args.lr,
                  batch_size=args.batch_size, seed=args.seed, weights=args.weights, resume=args.resume,
                  progress=not args.quiet, sample_every=args.sample_every,
                  checkpoint_every=args.checkpoint_every, device=args.device)
    if args.method == "dreambooth":
        from difflab.train.dreambooth import dreambooth

        classes = args.class_prompt
        result = dreambooth(args.run, args.out, instance_images=args.instance_images,
                            instance_prompt=args.instance_prompt,
                            class_prompt=classes[0] if len(classes) == 1 else classes,
                            prior_weight=args.prior_weight, num_class_images=args.num_class_images,
                            prior_steps=args.prior_steps, **common)  # type: ignore[arg-type]
    else:
        result = finetune(args.run, args.out, data=args.data, **common)  # type: ignore[arg-type]
    print(f"fine-tuned {result.steps} steps in {result.seconds:.0f} s; the adapter is "
          f"{args.out}/adapter.safetensors (difflab sample {args.run} --lora {args.out})")


def cmd_merge(args: argparse.Namespace) -> None:
    from difflab.train.finetune import merge_into

    loras, scales = lora_args(args)
    if not loras:
        raise ValueError("give at least one --lora adapter to merge")
    out = merge_into(args.run, loras, args.out, scales, args.weights)
    print(f"wrote {out}: {args.run} with {len(loras)} adapter{'s' if len(loras) > 1 else ''} merged in")


def register(sub: argparse._SubParsersAction) -> None:
    from difflab.data import SPEC_FORMS
    from difflab.nets.lora import DEFAULT_LR, DEFAULT_STEPS, TARGETS

    p = sub.add_parser("finetune",
                       help="teach a trained run new data with a LoRA adapter (the run is read only)")
    p.add_argument("run", type=Path, help="the base run folder (written by `difflab train`; never modified)")
    p.add_argument("--method", choices=("lora", "dreambooth"), default="lora",
                   help=with_default("lora: learn --data; dreambooth: bind --instance-images to "
                                     "--instance-prompt (a LoRA on a text-conditional run)", "lora"))
    p.add_argument("--data", help=f"--method lora: the new data, {SPEC_FORMS} (resized to the run's size)")
    p.add_argument("--instance-images", type=Path, metavar="DIR",
                   help="--method dreambooth: a folder with a handful of images of the subject")
    p.add_argument("--instance-prompt",
                   help='--method dreambooth: the prompt with the identifier, e.g. "a sks digit"')
    p.add_argument("--class-prompt", action="append",
                   help='--method dreambooth: the subject\'s class, e.g. "a handwritten digit"; repeat it '
                   "for several, cycled over the prior images")
    p.add_argument("--prior-weight", type=non_negative_float, default=1.0,
                   help=with_default("--method dreambooth: weight of the prior-preservation loss "
                                     "(0: none)", 1.0))
    p.add_argument("--num-class-images", type=positive_int, default=100,
                   help=with_default("--method dreambooth: prior images the base run draws (cached "
                                     "in OUT/prior)", 100))
    p.add_argument("--prior-steps", type=positive_int,
                   help="--method dreambooth: sampling steps of the prior images (default: the run's)")
    p.add_argument("--out", type=Path, required=True, help="the adapter folder to create (or --resume)")
    p.add_argument("--rank", type=positive_int, default=4, help=with_default("LoRA rank r", 4))
    p.add_argument("--alpha", type=positive_float,
                   help="LoRA alpha: the update is (alpha / r) B A (default: the rank r)")
    p.add_argument("--targets", default="attention",
                   help=with_default(f"layers to adapt, any of {', '.join(TARGETS)} separated by commas",
                                     "attention"))
    p.add_argument("--lora-dropout", type=non_negative_float, default=0.0,
                   help=with_default("dropout on the adapter's input", 0.0))
    add_base_training_args(p, DEFAULT_STEPS, DEFAULT_LR, "seed of the adapter's init and the steps")
    p.set_defaults(func=cmd_finetune)

    m = sub.add_parser("merge-lora",
                       help="write a new run folder with LoRA adapters merged into a run's weights")
    m.add_argument("run", type=Path, help="the base run folder (never modified)")
    add_lora_args(m)
    m.add_argument("--out", type=Path, required=True, help="the new run folder")
    m.add_argument("--weights", choices=("last", "best"),
                   help="which weights of the base run (default: as difflab sample)")
    m.set_defaults(func=cmd_merge)
