"""``difflab show-forward`` and ``difflab show-schedule``: the notes' pictures of the process."""

from __future__ import annotations

import argparse
from pathlib import Path

from difflab.cli.args import positive_int, with_default


def cmd_show_forward(args: argparse.Namespace) -> None:
    from difflab.data import parse_data_spec
    from difflab.viz import save_data_forward_strip

    path = save_data_forward_strip(parse_data_spec(args.data), args.out, schedule=args.schedule, T=args.T,
                                   n=args.n, seed=args.seed)
    print(f"wrote {path}")


def cmd_show_schedule(args: argparse.Namespace) -> None:
    from difflab.viz import plot_schedules

    print(f"wrote {plot_schedules(args.out, T=args.T)}")


def register(sub: argparse._SubParsersAction) -> None:
    from difflab.schedules import SCHEDULES

    p = sub.add_parser("show-forward", help="images at 0/25/50/75/100%% of the forward process")
    p.add_argument("--data", default="mnist", help=with_default("data spec", "mnist"))
    p.add_argument("--out", type=Path, default=Path("forward.png"), help=with_default("image", "forward.png"))
    p.add_argument("--schedule", choices=SCHEDULES, default="linear", help=with_default("schedule", "linear"))
    p.add_argument("--T", type=positive_int, default=1000, help=with_default("timesteps", 1000))
    p.add_argument("--n", type=positive_int, default=8, help=with_default("images", 8))
    p.add_argument("--seed", type=int, default=0, help=with_default("seed of the images and noise", 0))
    p.set_defaults(func=cmd_show_forward)

    p = sub.add_parser("show-schedule", help="plot alpha-bar and log-SNR of every schedule")
    p.add_argument("--out", type=Path, default=Path("schedules.png"),
                   help=with_default("image", "schedules.png"))
    p.add_argument("--T", type=positive_int, default=1000, help=with_default("timesteps", 1000))
    p.set_defaults(func=cmd_show_schedule)
