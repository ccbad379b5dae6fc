"""The ``difflab`` command: one module per command group, each calling library functions."""

from __future__ import annotations

import sys

from difflab.cli import (
    classifier,
    controlnet,
    demo,
    edit,
    eval,
    export,
    finetune,
    sample,
    serve,
    show,
    train,
    vae,
)
from difflab.cli.args import Parser

GROUPS = (train, classifier, vae, finetune, controlnet, sample, show, demo, eval, edit, export, serve)


def build_parser() -> Parser:
    parser = Parser(prog="difflab", description="Train, sample, evaluate and show diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors that are the user's to fix: reported in one line, without a traceback."""
    from difflab.data import DataError
    from difflab.io import CheckpointError

    errors: tuple[type[BaseException], ...] = (ValueError, CheckpointError, DataError, OSError, ImportError)
    if "difflab.train.loop" in sys.modules:  # only loaded by the commands that train
        errors += (sys.modules["difflab.train.loop"].TrainingError,)
    if "difflab.train.distributed" in sys.modules:  # a process of a torchrun launch lost the others
        errors += (sys.modules["difflab.train.distributed"].PeerLost,)
    return errors


USAGE, RUNTIME = 2, 1  # exit statuses: the flags are wrong / the files, data or run are


def exit_status(err: BaseException) -> int:
    """2 for a bad value or combination of flags (``ValueError``, as argparse's own errors), 1 for
    what went wrong with the files, data, disk or training (every other user error)."""
    from difflab.data import DataError

    return USAGE if isinstance(err, ValueError) and not isinstance(err, DataError) else RUNTIME


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for commands that relaunch themselves
    try:
        args.func(args)
    except Exception as err:
        if not isinstance(err, user_errors()):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"difflab: error: {message}", file=sys.stderr)
        return exit_status(err)
    except KeyboardInterrupt:
        print("difflab: interrupted; the last checkpoint is intact (continue with --resume)", file=sys.stderr)
        return 130
    return 0


__all__ = ["build_parser", "main"]
