"""``difflab train``: train a model (the default recipe, a note's preset, or any mix of flags)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from difflab.cli.args import (
    duration,
    int_list,
    non_negative_float,
    positive_float,
    positive_int,
    with_default,
)
from difflab.nets import NetShape
from difflab.run_config import TrainConfig

# Command-line flag -> TrainConfig field, for the flags that set a field directly.
FIELDS = {
    "net": "net_kind", "steps": "steps", "epochs": "epochs", "batch_size": "batch_size", "lr": "lr",
    "seed": "seed", "schedule": "schedule", "T": "T", "prediction": "prediction", "objective": "objective",
    "loss": "loss", "weighting": "weighting", "ema_decay": "ema_decay",
    "checkpoint_every": "checkpoint_every", "sample_every": "sample_every", "eval_every": "eval_every",
    "eval_n": "eval_n", "device": "device", "cond": "cond", "cond_drop": "cond_drop",
    "time_budget": "time_budget", "factor": "lowres_factor", "latent": "latent",
}
# Command-line flag -> NetShape field (the default UNet's shape).
SHAPE = {"base_channels": "base_channels", "channel_mult": "channel_mult", "res_blocks": "num_res_blocks",
         "attention_res": "attention_resolutions"}
SWITCHES = {"compile": "compile", "keep_best": "keep_best"}


def _config_help(text: str, field: str) -> str:
    return with_default(text, TrainConfig.default(field))


def add_train_args(p: argparse.ArgumentParser) -> None:
    from difflab.data import SPEC_FORMS
    from difflab.nets import NET_KINDS
    from difflab.presets import PRESETS

    p.add_argument("--data", help=f"{SPEC_FORMS} (default: mnist, or the preset's data)")
    p.add_argument("--out", required=True, help="run folder to create (or continue with --resume)")
    p.add_argument("--preset", choices=PRESETS,
                   help="a study note's program, as written (docs/notes.md); flags given with it still apply")
    p.add_argument("--small", action="store_true",
                   help="the scaled-down variant of a preset too large for a CPU (seed004); "
                   "prints its changes")
    p.add_argument("--net", choices=NET_KINDS, help=_config_help("network", "net_kind"))
    p.add_argument("--steps", type=positive_int, help=_config_help("optimizer steps", "steps"))
    p.add_argument("--epochs", type=positive_float,
                   help="train this many passes over the data instead of --steps (the notes count epochs)")
    p.add_argument("--time-budget", type=duration, metavar="DURATION",
                   help="train for this long instead of --steps (e.g. 10m, 90s, 1h30m): the step count is "
                   "fitted to the speed measured in the warm-up, and the learning rate decays over it")
    p.add_argument("--batch-size", type=positive_int, help=_config_help("images per step", "batch_size"))
    p.add_argument("--lr", type=positive_float, help=_config_help("learning rate", "lr"))
    p.add_argument("--seed", type=int, help=_config_help("seed of everything random in training", "seed"))
    p.add_argument("--schedule", choices=TrainConfig.choices("schedule"),
                   help=_config_help("noise schedule", "schedule"))
    p.add_argument("--T", type=positive_int, help=_config_help("training timesteps", "T"))
    p.add_argument("--prediction", choices=TrainConfig.choices("prediction"),
                   help="network target (default: v; x0 for basic-unet)")
    p.add_argument("--objective", choices=TrainConfig.choices("objective"),
                   help=_config_help("corrupt = seed 003's first model: an x_0 predictor on a linear mix "
                                     "with uniform noise, sampled with the mixing sampler", "objective"))
    p.add_argument("--loss", choices=TrainConfig.choices("loss"), help=_config_help("loss", "loss"))
    p.add_argument("--weighting", choices=TrainConfig.choices("weighting"),
                   help=_config_help("per-timestep loss weighting", "weighting"))
    shape = p.add_argument_group("network shape (--net unet; default: base 16, mult 1,2,4, one res block, "
                                 "no level attention at <= 32 px without a context)")
    shape.add_argument("--base-channels", type=positive_int, help="channels of the first level")
    shape.add_argument("--channel-mult", type=int_list, metavar="M1,M2,...",
                       help="channel multiplier per level (one level per entry, halving the size)")
    shape.add_argument("--res-blocks", type=positive_int, help="residual blocks per level")
    shape.add_argument("--attention-res", type=int_list, metavar="S1,S2,...|none",
                       help="feature-map sizes with self-attention, e.g. 7 or 14,7 for 28x28 data")
    shape.add_argument("--net-config", type=Path, metavar="FILE.json",
                       help="the whole network config as JSON, any --net kind (like config.json's 'net')")
    p.add_argument("--image-size", type=positive_int, help="resize the data to N x N")
    p.add_argument("--channels", type=int, choices=(1, 3), help="convert to grey (1) or RGB (3)")
    p.add_argument("--flip", action="store_true", help="random horizontal flips")
    p.add_argument("--limit", type=positive_int, help="train on the first N images only")
    p.add_argument("--cond", choices=TrainConfig.choices("cond"),
                   help=_config_help("condition on class labels or on text captions (sample with --class / "
                                     "--prompt and --guidance)", "cond"))
    p.add_argument("--latent", metavar="VAE",
                   help="latent diffusion: train in the latent space of this autoencoder (a `difflab "
                   "train-vae` run folder, its model.safetensors, or diffusers:DIR); samples are decoded")
    p.add_argument("--factor", type=positive_int, choices=(2, 4, 8),
                   help=_config_help("--cond lowres: the upscaling factor (the network learns to enlarge "
                                     "images shrunk by it; difflab edit upscale)", "lowres_factor"))
    p.add_argument("--cond-drop", type=non_negative_float,
                   help=_config_help("probability of training a sample with the null condition, so one model "
                                     "also samples unconditionally (classifier-free guidance)", "cond_drop"))
    p.add_argument("--ema-decay", type=non_negative_float, help=_config_help("EMA decay", "ema_decay"))
    p.add_argument("--keep-best", action="store_true",
                   help="also keep the weights of the epoch with the lowest mean loss (best.safetensors), "
                   "which sampling then uses")
    p.add_argument("--checkpoint-every", type=positive_int,
                   help=_config_help("steps between checkpoints", "checkpoint_every"))
    p.add_argument("--sample-every", type=positive_int,
                   help=_config_help("steps between sample grids", "sample_every"))
    p.add_argument("--eval-every", type=positive_int,
                   help="score the EMA model every N steps (FD-digit on digits, else FD-EffNetLite0) "
                   "into log.jsonl and eval.png")
    p.add_argument("--eval-n", type=positive_int,
                   help=_config_help("samples per --eval-every score", "eval_n"))
    p.add_argument("--device", help=_config_help("auto | cpu | cuda | cuda:N", "device"))
    p.add_argument("--compile", action="store_true", help="torch.compile the network for training")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--skip-nonfinite", action="store_true",
                   help="skip (and count in log.jsonl) steps whose loss or gradients are NaN/inf instead of "
                   "stopping there; the weights and EMA never take such a step")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_distributed_args(p)


def add_distributed_args(p: argparse.ArgumentParser) -> None:
    from difflab.train.distributed import DEFAULT_TIMEOUT_S

    group = p.add_argument_group("many processes (torchrun; --batch-size stays the global batch)")
    group.add_argument("--grad-accum", type=positive_int, default=1, metavar="K",
                       help=with_default("split each step's batch into K micro-batches (the same result, "
                                         "less memory)", 1))
    group.add_argument("--nproc", type=positive_int, default=1, metavar="N",
                       help=with_default("train on N processes on this machine (one per GPU; gloo on CPU) "
                                         "by launching torchrun --standalone --nproc-per-node N", 1))
    group.add_argument("--dist-timeout", type=positive_float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                       help=with_default("with many processes: stop with an error when another process is "
                                         "silent this long (died or hung)", DEFAULT_TIMEOUT_S))


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    from difflab.data import parse_data_spec
    from difflab.nets import predicts
    from difflab.presets import preset_config

    overrides: dict[str, Any] = {}
    data_fields = {k: v for k, v in {"image_size": args.image_size, "channels": args.channels,
                                     "limit": args.limit}.items() if v is not None}
    if args.flip:
        data_fields["flip"] = True
    if args.data is not None or not args.preset:
        overrides["data"] = parse_data_spec(args.data or "mnist", **data_fields)
    elif data_fields:
        raise ValueError("--image-size, --channels, --flip and --limit need --data with a preset")
    overrides.update({field: getattr(args, arg) for arg, field in FIELDS.items()
                      if getattr(args, arg) is not None})
    overrides.update({field: True for arg, field in SWITCHES.items() if getattr(args, arg)})
    shape = {field: getattr(args, arg) for arg, field in SHAPE.items() if getattr(args, arg) is not None}
    if shape and args.net_config:
        raise ValueError("--net-config gives the whole network; drop --base-channels, --channel-mult, "
                         "--res-blocks and --attention-res, or edit the file")
    if shape:
        overrides["net_shape"] = NetShape(**shape)
    if args.net_config:
        overrides["net"] = read_net_config(args.net_config, args.net)
        overrides["net_kind"] = overrides["net"].kind
    if args.objective == "corrupt" and not args.preset:
        overrides.update(prediction="x0", sample_sampler="mix")
        overrides.setdefault("net_kind", "basic-unet")
    if args.prediction is None and overrides.get("net_kind") and predicts(overrides["net_kind"]) == "x0":
        overrides["prediction"] = "x0"
    if args.factor is not None and args.cond != "lowres":
        raise ValueError("--factor is the upscaling factor of a super-resolution run: add --cond lowres")
    if args.cond == "lowres":  # SR3's recipe: always conditioned, sampled unguided
        overrides.setdefault("cond_drop", 0.0)
        overrides["sample_guidance"] = 1.0
    if args.preset:
        return preset_config(args.preset, small=args.small, **overrides)
    if args.small:
        raise ValueError("--small applies to a --preset")
    return TrainConfig(**overrides)


def read_net_config(path: Path, kind: str | None) -> Any:
    """A network config from a JSON file (``kind`` from the file, else ``--net``, else unet)."""
    import json

    from difflab.nets import net_config_from_dict

    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"--net-config: {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"--net-config: {path} is not a JSON file ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--net-config: {path} must hold a JSON object of network fields")
    data.setdefault("kind", kind or "unet")
    if kind is not None and data["kind"] != kind:
        raise ValueError(f"--net-config: {path} describes a {data['kind']} network, but --net is {kind}")
    try:
        return net_config_from_dict(data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"--net-config: {path}: {err}") from None


def describe_preset(cfg: TrainConfig, small: bool) -> list[str]:
    """The preset's program, its deviations from the note and how long it will take here."""
    from difflab.presets import PROGRAMS, deviations
    from difflab.train.estimate import estimate

    program = PROGRAMS[cfg.preset or ""]
    lines = [f"preset {program.name} (note {program.note}): {program.summary}"]
    lines += [f"  differs from the note: {d}" for d in deviations(program.name, small)]
    lines.append("  " + estimate(cfg).describe())
    if program.small and not small:
        lines.append(f"  a scaled-down variant: --preset {program.name} --small")
    return lines


def cmd_train(args: argparse.Namespace) -> None:
    from difflab.device import resolve_device
    from difflab.train import train
    from difflab.train.distributed import launched, process_group

    cfg = train_config_from_args(args)
    if args.nproc > 1 and not launched():
        relaunch(args.argv, args.nproc)
        return
    if int(os.environ.get("RANK", "0")) == 0:  # timed on this process alone, before joining the others
        if cfg.preset and not args.resume:
            for line in describe_preset(cfg, args.small):
                print(line, flush=True)
        elif not args.resume:
            from difflab.train.estimate import estimate

            print(estimate(cfg).describe(), flush=True)
    with process_group(resolve_device(cfg.device), timeout=args.dist_timeout) as world:
        result = train(cfg, args.out, resume=args.resume, progress=not args.no_progress,
                       skip_nonfinite=args.skip_nonfinite, grad_accum=args.grad_accum)
        if world.main:
            print(f"trained {result.steps} steps in {result.seconds:.0f} s ({result.images_per_s:.0f} "
                  f"images/s); weights: {Path(args.out) / 'model.safetensors'}")


def relaunch(argv: list[str], nproc: int) -> None:
    """Run this command again on ``nproc`` processes through torchrun's entry point
    (``torch.distributed.run``, ``--standalone``: one machine, a free port)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    from difflab.train import TrainingError

    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    try:
        torchrun(["--standalone", "--nproc-per-node", str(nproc), "-m", "difflab", *rest])
    except ChildFailedError as err:
        rank, failure = min(err.failures.items())
        raise TrainingError(f"{len(err.failures)} of {nproc} processes failed (rank {rank} exited with "
                            f"{failure.exitcode}); their errors are above") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model into a run folder")
    add_train_args(p)
    p.set_defaults(func=cmd_train)
