"""``difflab train-classifier``: a noise-aware classifier for classifier guidance, and what
``difflab sample --classifier`` does with one (Dhariwal & Nichol 2021, Algorithms 1 and 2)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from difflab.classifier_run import ClassifierTrainConfig
from difflab.cli.args import non_negative_float, positive_float, positive_int, with_default

FIELDS = {"steps": "steps", "epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "seed": "seed",
          "schedule": "schedule", "T": "T", "holdout": "holdout", "device": "device"}


def _help(text: str, field: str) -> str:
    return with_default(text, ClassifierTrainConfig.default(field))


def config_from_args(args: argparse.Namespace) -> ClassifierTrainConfig:
    """The classifier run the flags describe; ``--match RUN`` takes the schedule and the image
    size from a diffusion run, and explicit flags must agree with it."""
    from difflab.data import parse_data_spec

    fields: dict[str, Any] = {f: getattr(args, a) for a, f in FIELDS.items() if getattr(args, a) is not None}
    data_fields = {k: v for k, v in (("image_size", args.image_size), ("limit", args.limit)) if v is not None}
    if args.match is not None:
        from difflab.run_config import TrainConfig

        path = Path(args.match) / "config.json"
        if not path.is_file():
            raise ValueError(f"--match {args.match}: no config.json there; give a `difflab train` run folder")
        run = TrainConfig.from_dict(json.loads(path.read_text()))
        for key, value in (("schedule", run.schedule), ("T", run.T)):
            if key in fields and fields[key] != value:
                raise ValueError(f"--{key} {fields[key]} contradicts --match {args.match} ({key} {value})")
            fields[key] = value
        fields["zero_terminal_snr"] = run.zero_terminal_snr
        if run.data.image_size is not None:
            data_fields.setdefault("image_size", run.data.image_size)
        if run.data.channels is not None:
            data_fields["channels"] = run.data.channels
        if args.data is None:
            fields["data"] = run.data.replace(**data_fields)
    if "data" not in fields:
        fields["data"] = parse_data_spec(args.data or "mnist", **data_fields)
    return ClassifierTrainConfig(**fields)


def cmd_train_classifier(args: argparse.Namespace) -> None:
    from difflab.train.classifier import train_classifier

    cfg = config_from_args(args)
    result = train_classifier(cfg, args.out, progress=not args.no_progress)
    first, last = result.accuracy[0], result.accuracy[-1]
    print(f"trained {result.steps} steps in {result.seconds:.0f} s; held-out accuracy {first.accuracy:.3f} "
          f"at t={first.t}, {last.accuracy:.3f} at t={last.t}; "
          f"weights: {Path(args.out) / 'model.safetensors'}, table: {Path(args.out) / 'accuracy.csv'}")


def add_guidance_args(p: argparse.ArgumentParser) -> None:
    """The classifier-guidance flags of ``difflab sample``."""
    p.add_argument("--classifier", type=Path,
                   help="classifier guidance (Dhariwal & Nichol 2021) with this `difflab train-classifier` "
                   "run towards --class; works on unconditional runs (the classes are the classifier's) and "
                   "composes with --guidance on class-conditional ones")
    p.add_argument("--classifier-scale", type=non_negative_float,
                   help=with_default("classifier scale s: 0 = unguided, 1 = p(x|y) with an exact classifier, "
                                     "> 1 stronger", 1.0))


def guidance_kwargs(pipe: Any, args: argparse.Namespace) -> dict[str, Any]:
    """``--classifier``/``--classifier-scale`` as :meth:`difflab.Pipeline.sample` arguments: the
    loaded classifier and its scale, plus, on an unconditional run, the ``--class`` labels (the
    classes are the classifier's). On a class-conditional run the labels and ``--guidance`` come
    from ``--class`` as without a classifier, and the two guidances compose."""
    from difflab.classifier_run import load_classifier
    from difflab.conditioning import parse_classes
    from difflab.pipeline import class_rows

    if args.classifier is None:
        if args.classifier_scale is not None:
            raise ValueError("--classifier-scale needs --classifier RUN (a `difflab train-classifier` run)")
        return {}
    if args.classes is None:
        raise ValueError("--classifier needs the class to guide towards: give --class")
    classifier = load_classifier(args.classifier, args.device)
    classifier.check_pairing(pipe.config, pipe.image_shape, str(args.run))
    scale = 1.0 if args.classifier_scale is None else args.classifier_scale
    out: dict[str, Any] = {"classifier": classifier, "classifier_scale": scale}
    if pipe.num_classes:
        return out
    if args.guidance is not None:
        raise ValueError("--guidance is classifier-free guidance, for class-conditional runs; "
                         f"{args.run} is unconditional: use --classifier-scale")
    classes = parse_classes(args.classes, classifier.num_classes, classifier.class_names)
    if len(classes) == 1 and args.classes.strip().lower() != "all":
        return {**out, "class_labels": classes * args.n}
    return {**out, **class_rows(pipe, classes, args.n, args.seed)}


def register(sub: argparse._SubParsersAction) -> None:
    from difflab.data import SPEC_FORMS

    p = sub.add_parser("train-classifier", help="train a noise-aware classifier for classifier guidance "
                       "(difflab sample --classifier)")
    p.add_argument("--data", help=f"{SPEC_FORMS}; labelled (default: mnist, or --match's data)")
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument("--match", type=Path,
                   help="a diffusion run to guide: take its schedule, T and image size (and its data unless "
                   "--data)")
    p.add_argument("--steps", type=positive_int, help=_help("optimizer steps", "steps"))
    p.add_argument("--epochs", type=positive_float,
                   help="train this many passes over the training split instead of --steps")
    p.add_argument("--batch-size", type=positive_int, help=_help("images per step", "batch_size"))
    p.add_argument("--lr", type=positive_float, help=_help("AdamW learning rate", "lr"))
    p.add_argument("--schedule", choices=ClassifierTrainConfig.choices("schedule"),
                   help=_help("noise schedule; must be the diffusion run's", "schedule"))
    p.add_argument("--T", type=positive_int,
                   help=_help("training timesteps; must be the diffusion run's", "T"))
    p.add_argument("--holdout", type=positive_float,
                   help=_help("share of images held out (fixed seed) for the accuracy-vs-t table", "holdout"))
    p.add_argument("--image-size", type=positive_int, help="resize the data to N x N")
    p.add_argument("--limit", type=positive_int, help="use the first N images only")
    p.add_argument("--seed", type=int, help=_help("seed of the split, batches, timesteps and noise", "seed"))
    p.add_argument("--device", help=_help("auto | cpu | cuda | cuda:N", "device"))
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train_classifier)
