"""``difflab demo``: the main job (see :func:`difflab.demo.run_demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from difflab.cli.args import positive_int, with_default


def cmd_demo(args: argparse.Namespace) -> None:
    from difflab.demo import run_demo

    for path in run_demo(args.out, steps=args.steps, progress=not args.no_progress):
        print(f"wrote {path}")


def register(sub: argparse._SubParsersAction) -> None:
    from difflab.run_config import TrainConfig

    p = sub.add_parser("demo", help="train on the embedded MNIST and write samples, a GIF and plots")
    p.add_argument("--out", type=Path, default=Path("demo"), help=with_default("folder", "demo"))
    p.add_argument("--steps", type=positive_int,
                   help=with_default("training steps", TrainConfig.default("steps")))
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)
