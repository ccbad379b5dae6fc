"""The ``difflab`` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from difflab.schedules import SCHEDULES

NETS = ("myunet", "simple-unet", "basic-unet", "unet", "diffusers-unet", "diffusers-cond-unet")


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
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        default="mnist",
        help="mnist | fashion-mnist | digits | folder:PATH | mnist-idx:PATH | cifar10:PATH",
    )
    p.add_argument("--out", required=True, help="run folder to create (or continue with --resume)")
    p.add_argument(
        "--preset",
        choices=("seed000", "seed003", "seed004"),
        help="a study note's recipe (flags given after it still apply)",
    )
    p.add_argument("--net", choices=NETS, help="network (default: unet)")
    p.add_argument("--steps", type=positive_int, help="optimizer steps (default 3000)")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lr", type=non_negative_float)
    p.add_argument("--seed", type=int)
    p.add_argument("--schedule", choices=SCHEDULES)
    p.add_argument("--T", type=positive_int, help="training timesteps")
    p.add_argument("--prediction", choices=("eps", "x0", "v"), help="default: v (x0 for basic-unet)")
    p.add_argument("--objective", choices=("diffusion", "corrupt"),
                   help="corrupt = seed 003's first model: BasicUNet predicting x_0 from a noise mix")
    p.add_argument("--loss", choices=("mse", "l1", "huber"))
    p.add_argument("--weighting", choices=("none", "min-snr"))
    p.add_argument("--image-size", type=positive_int, help="resize the data to N x N")
    p.add_argument("--channels", type=int, choices=(1, 3))
    p.add_argument("--flip", action="store_true", help="random horizontal flips")
    p.add_argument("--limit", type=positive_int, help="train on the first N images only")
    p.add_argument("--class-cond", action="store_true", help="condition on class labels (with CFG dropout)")
    p.add_argument("--ema-decay", type=non_negative_float)
    p.add_argument("--checkpoint-every", type=positive_int)
    p.add_argument("--sample-every", type=positive_int)
    p.add_argument("--eval-every", type=positive_int,
                   help="score the EMA model every N steps (FD-digit on digits, else FD-EffNetLite0) "
                   "into log.jsonl and eval.png")
    p.add_argument("--eval-n", type=positive_int, help="samples per --eval-every score (default 256)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--compile", action="store_true", help="torch.compile the network for training")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def train_config_from_args(args: argparse.Namespace) -> Any:
    from difflab.data import parse_data_spec
    from difflab.train import TrainConfig, preset_config

    data_fields = {
        k: v
        for k, v in {"image_size": args.image_size, "channels": args.channels, "limit": args.limit}.items()
        if v is not None
    }
    if args.flip:
        data_fields["flip"] = True
    overrides: dict[str, Any] = {"data": parse_data_spec(args.data, **data_fields)}
    mapping = {
        "net": "net_kind",
        "steps": "steps",
        "batch_size": "batch_size",
        "lr": "lr",
        "seed": "seed",
        "schedule": "schedule",
        "T": "T",
        "prediction": "prediction",
        "loss": "loss",
        "weighting": "weighting",
        "ema_decay": "ema_decay",
        "checkpoint_every": "checkpoint_every",
        "sample_every": "sample_every",
        "eval_every": "eval_every",
        "eval_n": "eval_n",
        "device": "device",
    }
    for arg, field in mapping.items():
        if getattr(args, arg) is not None:
            overrides[field] = getattr(args, arg)
    if args.class_cond:
        overrides["class_cond"] = True
    if args.compile:
        overrides["compile"] = True
    if args.objective == "corrupt":
        overrides.update(objective="corrupt", prediction="x0", sample_sampler="mix")
        overrides.setdefault("net_kind", "basic-unet")
    if args.prediction is None and "prediction" not in overrides and overrides.get("net_kind"):
        from difflab.nets import predicts

        if predicts(overrides["net_kind"]) == "x0":
            overrides["prediction"] = "x0"
    if args.preset:
        return preset_config(args.preset, **overrides)
    return TrainConfig(**overrides)


def cmd_train(args: argparse.Namespace) -> None:
    from difflab.train import train

    cfg = train_config_from_args(args)
    result = train(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    print(
        f"trained {result.steps} steps in {result.seconds:.0f} s ({result.images_per_s:.0f} images/s); "
        f"weights: {Path(args.out) / 'model.safetensors'}"
    )


def add_sample_args(p: argparse.ArgumentParser) -> None:
    from difflab.samplers import GRIDS, SAMPLERS

    p.add_argument("--sampler", choices=(*SAMPLERS, "mix"), default=None,
                   help="default: ddim (mix for --objective corrupt runs)")
    p.add_argument("--steps", type=positive_int, help="sampling steps (default 50; T for ddpm)")
    p.add_argument(
        "--sigmas",
        choices=GRIDS,
        help="noise levels of the sigma samplers (euler, heun, dpmpp-*, unipc): the respaced "
        "timesteps (default), karras (rho=7) or uniform log-snr",
    )
    p.add_argument(
        "--eta",
        type=non_negative_float,
        help="noise of ddim (0 = deterministic), euler-ancestral and dpmpp-*-sde (default 1)",
    )
    p.add_argument("--variance", choices=("beta", "beta_tilde"), default="beta", help="DDPM sigma^2")
    p.add_argument("--no-clip", action="store_true", help="do not clip predicted x_0 to [-1, 1]")
    p.add_argument("--n", type=positive_int, default=64, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--class-label", type=int, help="class for every image (class-conditional runs)")
    p.add_argument("--device", default="auto")


def write_sample_outputs(
    pipe: Any,
    args: argparse.Namespace,
    out: Path | None,
    gif: Path | None,
    progression: Path | None,
    save_dir: Path | None,
) -> list[Path]:
    from difflab.viz import save_gif, save_grid, save_progression

    frames: list[Any] = []
    snapshots: list[Any] = []
    want_frames = gif is not None or progression is not None

    def callback(i: int, t: int, x: Any, x0: Any) -> None:
        frames.append(x.float().clamp(-1, 1).cpu())
        snapshots.append((t, x.float().cpu()))

    labels = None if args.class_label is None else [args.class_label] * args.n
    images = pipe.sample(
        args.n,
        sampler=args.sampler,
        steps=args.steps,
        eta=args.eta,
        seed=args.seed,
        batch_size=args.n if want_frames else args.batch_size,
        clip_x0=not args.no_clip,
        variance=args.variance,
        class_labels=labels,
        callback=callback if want_frames else None,
        sigmas=getattr(args, "sigmas", None),
    )
    written = []
    if out is not None:
        written.append(save_grid(images, out))
    if gif is not None:
        keep = [*frames[::max(1, len(frames) // 60)], images]
        written.append(save_gif(keep, gif))
    if progression is not None:
        written.append(save_progression(snapshots, progression))
    if save_dir is not None:
        from difflab.data import save_images

        save_images(images, save_dir)
        written.append(save_dir)
    return [Path(p) for p in written]


def cmd_sample(args: argparse.Namespace) -> None:
    from difflab.pipeline import load

    if args.sampler == "ddpm" and args.eta is not None:
        raise ValueError("--eta applies to --sampler ddim only")
    pipe = load(args.run, args.device)
    written = write_sample_outputs(pipe, args, args.out, args.gif, args.progression, args.save_dir)
    for p in written:
        print(f"wrote {p}")


def cmd_show_forward(args: argparse.Namespace) -> None:
    import torch

    from difflab.data import load_dataset, parse_data_spec
    from difflab.schedules import NoiseSchedule
    from difflab.viz import save_forward_strip

    data = load_dataset(parse_data_spec(args.data))
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))[: args.n]
    images, _ = data.batch(idx)
    sched = NoiseSchedule.from_name(args.schedule, args.T)
    save_forward_strip(sched, images, args.out, generator=torch.Generator().manual_seed(args.seed))
    print(f"wrote {args.out}")


def cmd_show_schedule(args: argparse.Namespace) -> None:
    from difflab.viz import plot_schedules

    plot_schedules(args.out, T=args.T)
    print(f"wrote {args.out}")


def cmd_demo(args: argparse.Namespace) -> None:
    """Train the default model on the embedded MNIST and write the pictures."""
    from difflab.pipeline import load
    from difflab.train import TrainConfig, train
    from difflab.viz import plot_loss

    out = Path(args.out)
    run = out / "run"
    cfg = TrainConfig(steps=args.steps) if args.steps else TrainConfig()
    resume = (run / "config.json").exists()
    train(cfg, run, resume=resume, progress=not args.no_progress)
    pipe = load(run, "auto")
    sample_args = argparse.Namespace(
        n=64,
        sampler="ddim",
        steps=50,
        eta=None,
        seed=0,
        batch_size=64,
        no_clip=False,
        variance="beta",
        class_label=None,
    )
    written = write_sample_outputs(
        pipe, sample_args, out / "samples.png", out / "denoise.gif", out / "progression.png", None
    )
    fwd = argparse.Namespace(
        data="mnist", n=8, seed=0, schedule=cfg.schedule, T=cfg.T, out=out / "forward.png"
    )
    cmd_show_forward(fwd)
    plot_loss(run / "log.jsonl", out / "loss.png")
    for p in [*written, out / "loss.png"]:
        print(f"wrote {p}")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="difflab", description="Train, sample and show diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model into a run folder")
    add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="sample images from a trained run")
    p.add_argument("run", type=Path, help="run folder written by `difflab train`")
    add_sample_args(p)
    p.add_argument("--out", type=Path, default=Path("samples.png"), help="grid image to write")
    p.add_argument("--gif", type=Path, help="also write a denoising GIF")
    p.add_argument("--progression", type=Path, help="also write a progression strip")
    p.add_argument("--save-dir", type=Path, help="also write each image as a PNG here")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("show-forward", help="images at 0/25/50/75/100%% of the forward process")
    p.add_argument("--data", default="mnist")
    p.add_argument("--out", type=Path, default=Path("forward.png"))
    p.add_argument("--schedule", choices=SCHEDULES, default="linear")
    p.add_argument("--T", type=positive_int, default=1000)
    p.add_argument("--n", type=positive_int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_show_forward)

    p = sub.add_parser("show-schedule", help="plot alpha-bar and log-SNR of every schedule")
    p.add_argument("--out", type=Path, default=Path("schedules.png"))
    p.add_argument("--T", type=positive_int, default=1000)
    p.set_defaults(func=cmd_show_schedule)

    p = sub.add_parser("demo", help="train on the embedded MNIST and write samples, a GIF and plots")
    p.add_argument("--out", type=Path, default=Path("demo"))
    p.add_argument("--steps", type=positive_int, help="training steps (default: the default config's)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)

    from difflab.cli_eval import add_eval_commands

    add_eval_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from difflab.data import DataError
    from difflab.train.checkpoint import CheckpointError
    from difflab.train.loop import TrainingError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, TrainingError, CheckpointError, DataError, OSError, ImportError) as err:
        print(f"difflab: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("difflab: interrupted; the last checkpoint is intact (continue with --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
