"""Argument types and the parser class shared by every command group."""

from __future__ import annotations

import argparse
from typing import Any


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage is one ``--help`` away)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < float("inf"):  # NaN fails every comparison
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a number > 0, got 0")
    return value


def with_default(text: str, value: Any) -> str:
    """``text`` followed by the default the code uses, e.g. ``"optimizer steps (default: 1500)"``."""
    shown = "on" if value is True else "off" if value is False else value
    return f"{text} (default: {shown})"


def duration(text: str) -> float:
    """Seconds in ``600``, ``90s``, ``10m``, ``1.5h`` or ``1h30m``."""
    from difflab.train.budget import parse_duration

    try:
        return parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def int_list(text: str) -> tuple[int, ...]:
    """``"1,2,4"`` -> ``(1, 2, 4)``; ``"none"`` -> ``()``."""
    if text.strip().lower() == "none":
        return ()
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas (e.g. 1,2,4), "
                                         f"got {text!r}") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def add_base_training_args(p: argparse.ArgumentParser, steps: int, lr: float, seed_help: str) -> None:
    """The flags every training of something on top of a base run shares (LoRA, DreamBooth,
    ControlNet): length, learning rate, batch, seed, the base's weights, intervals, device, resume."""
    p.add_argument("--steps", type=positive_int, help=with_default("optimizer steps", steps))
    p.add_argument("--time-budget", type=duration, metavar="DURATION",
                   help="train for this long instead of --steps (e.g. 5m)")
    p.add_argument("--lr", type=positive_float, default=lr, help=with_default("learning rate", lr))
    p.add_argument("--batch-size", type=positive_int, help="images per step (default: the run's)")
    p.add_argument("--seed", type=int, default=0, help=with_default(seed_help, 0))
    p.add_argument("--weights", choices=("last", "best"),
                   help="which weights of the base run (default: as difflab sample)")
    p.add_argument("--sample-every", type=positive_int, help="sample grid every N steps (default: the run's)")
    p.add_argument("--checkpoint-every", type=positive_int,
                   help="checkpoint every N steps (default: the run's)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: the run's)")
    p.add_argument("--resume", action="store_true", help="continue --out from its last checkpoint")
    p.add_argument("--no-progress", "--quiet", dest="quiet", action="store_true", help="no progress bar")


AUTOENCODER_HELP = ("latent runs: where the run's autoencoder is now, if it moved since training "
                    "(diffusers:DIR or a train-vae run; checked against the run's digest)")

RUN_HELP = "run folder written by `difflab train`, or diffusers:DIR (a local diffusers pipeline folder)"
