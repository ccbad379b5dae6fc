"""``difflab train-controlnet``: a ControlNet (edges, skeleton or mask control) on a trained run,
and the ``--controlnet`` / ``--control-image`` / ``--control-from`` flags of ``difflab sample``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from difflab.cli.args import add_base_training_args, non_negative_float, with_default


def add_control_args(p: argparse.ArgumentParser) -> None:
    """``--controlnet DIR`` with ``--control-image FILE`` or ``--control-from FILE``, and
    ``--control-scale``."""
    p.add_argument("--controlnet", type=Path, metavar="DIR",
                   help="a ControlNet trained on this run (a `difflab train-controlnet` folder)")
    p.add_argument("--control-image", type=Path, metavar="FILE",
                   help="--controlnet: the control image (the run's size, white = on) for every sample")
    p.add_argument("--control-from", type=Path, metavar="FILE",
                   help="--controlnet: an ordinary image (the run's size) to compute the control image from, "
                   "with the ControlNet's own control kind")
    p.add_argument("--control-scale", type=non_negative_float, default=1.0,
                   help=with_default("strength of the ControlNet's residuals (0: the base run)", 1.0))


def control_kwargs(pipe: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The ``control`` and ``control_scale`` of :meth:`difflab.Pipeline.sample` the flags ask for."""
    from difflab.conditioning.control import ControlConfig, control_from_image, read_control_image

    if pipe.controlnet is None:
        return {}
    shape = (int(pipe.controlnet.hint_config.control_channels), *pipe.image_shape[1:])
    if args.control_image is not None:
        control = read_control_image(args.control_image, shape)
    else:
        control = control_from_image(args.control_from, pipe.control_config or ControlConfig(),
                                     (pipe.image_shape[0], *shape[1:]))
    return {"control": control, "control_scale": args.control_scale}


def check_control_flags(args: argparse.Namespace) -> None:
    """The control flags fit together (before anything is loaded)."""
    image, source = args.control_image, args.control_from
    if args.controlnet is None:
        if image is not None or source is not None:
            raise ValueError("--control-image and --control-from need --controlnet DIR")
        if args.control_scale != 1.0:
            raise ValueError("--control-scale needs --controlnet DIR")
        return
    if (image is None) == (source is None):
        raise ValueError("--controlnet needs one of --control-image FILE (a control image) or "
                         "--control-from FILE (an image to compute it from)")


def cmd_train_controlnet(args: argparse.Namespace) -> None:
    from difflab.conditioning.control import ControlConfig
    from difflab.train.controlnet import train_controlnet

    if args.steps is not None and args.time_budget is not None:
        raise ValueError("give --steps or --time-budget, not both")
    control = ControlConfig(kind=args.control, sigma=args.sigma, threshold=args.threshold)
    result = train_controlnet(args.run, args.out, control=control, data=args.data,
                              control_drop=args.control_drop, steps=args.steps, time_budget=args.time_budget,
                              lr=args.lr, batch_size=args.batch_size, seed=args.seed, weights=args.weights,
                              resume=args.resume, progress=not args.quiet, sample_every=args.sample_every,
                              checkpoint_every=args.checkpoint_every, device=args.device)
    print(f"trained the ControlNet {result.steps} steps in {result.seconds:.0f} s; it is {args.out} "
          f"(difflab sample {args.run} --controlnet {args.out} --control-image FILE)")


def register(sub: argparse._SubParsersAction) -> None:
    from difflab.conditioning.control import CONTROL_KINDS, ControlConfig
    from difflab.data import SPEC_FORMS
    from difflab.nets.controlnet import DEFAULT_LR, DEFAULT_STEPS

    p = sub.add_parser("train-controlnet",
                       help="train a ControlNet (edges, skeleton or mask control) on a trained run "
                       "(read only)")
    p.add_argument("run", type=Path, help="the base run folder (written by `difflab train`; never modified)")
    p.add_argument("--control", choices=CONTROL_KINDS, required=True,
                   help="the control image computed from each training image: Canny edges, the skeleton "
                   "or the mask of the thresholded shape")
    p.add_argument("--out", type=Path, required=True, help="the ControlNet folder to create (or --resume)")
    p.add_argument("--data", help=f"the training images, {SPEC_FORMS} (default: the base run's data)")
    p.add_argument("--sigma", type=non_negative_float, default=ControlConfig.sigma,
                   help=with_default("--control edges: Canny's Gaussian sigma", ControlConfig.sigma))
    p.add_argument("--threshold", type=non_negative_float, default=ControlConfig.threshold,
                   help=with_default("--control skeleton and mask: the grey level (0..1) a shape lies above",
                                     ControlConfig.threshold))
    p.add_argument("--control-drop", type=non_negative_float, default=0.0,
                   help=with_default("share of training images whose control image is dropped (all zero)",
                                     0.0))
    add_base_training_args(p, DEFAULT_STEPS, DEFAULT_LR, "seed of the hint encoder's init and the steps")
    p.set_defaults(func=cmd_train_controlnet)
