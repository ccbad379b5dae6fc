"""``difflab demo``: the main job (see :func:`difflab.demo.run_demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from difflab.cli.args import duration, positive_int, with_default


def cmd_demo(args: argparse.Namespace) -> None:
    from difflab.demo import TIME_BUDGET_S, run_demo

    budget = args.time_budget or TIME_BUDGET_S
    if not args.steps and not (args.out / "run" / "config.json").exists():
        print(f"difflab demo: trains for {budget / 60:g} min, then draws the pictures into {args.out}/",
              flush=True)
    for path in run_demo(args.out, steps=args.steps, time_budget=budget, progress=not args.no_progress):
        print(f"wrote {path}")


def register(sub: argparse._SubParsersAction) -> None:
    from difflab.demo import TIME_BUDGET_S

    p = sub.add_parser("demo", help="train on the embedded MNIST and write samples, a GIF and plots")
    p.add_argument("--out", type=Path, default=Path("demo"), help=with_default("folder", "demo"))
    p.add_argument("--time-budget", type=duration, metavar="DURATION",
                   help=with_default("training time (e.g. 5m)", f"{TIME_BUDGET_S / 60:g}m"))
    p.add_argument("--steps", type=positive_int, help="train this many steps instead of a time budget")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)
