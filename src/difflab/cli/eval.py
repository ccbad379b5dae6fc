"""``difflab fd`` and ``difflab eval``: the evaluation commands (see :mod:`difflab.eval.evaluate`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from difflab.cli.args import AUTOENCODER_HELP, RUN_HELP, positive_int
from difflab.eval.features import FEATURES


def add_extractor_args(p: argparse.ArgumentParser, default: str = "effnet-lite0") -> None:
    p.add_argument("--features", choices=FEATURES, default=default,
                   help="feature extractor: effnet-lite0 (FD-EffNetLite0, offline), digit (FD-digit, MNIST "
                   "classifier) or inception (FID; needs --inception-weights or the torch hub cache)")
    p.add_argument("--inception-weights", type=Path,
                   help="the Inception-V3 FID TorchScript file (inception-2015-12-05.pt)")
    p.add_argument("--download", action="store_true",
                   help="allow downloading the Inception weights into the torch hub cache")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, help="also write the result as JSON")


def note(text: str) -> None:
    """Progress and warnings go to stderr; stdout carries only the result."""
    print(text, file=sys.stderr)


def cmd_fd(args: argparse.Namespace) -> None:
    from difflab.eval.evaluate import fd_paths, write_json

    if args.path_b is None and args.save_stats is None:
        raise ValueError("give two paths to compare, or one path with --save-stats FILE.npz")
    result = fd_paths(args.path_a, args.path_b, features=args.features, batch_size=args.batch_size,
                      device=args.device, image_size=args.image_size, save_stats=args.save_stats,
                      inception_weights=args.inception_weights, allow_download=args.download, log=note)
    if "value" in result:
        print(f"{result['label']}: {result['value']:.4f}  ({result['n_a']} vs {result['n_b']} images)")
    if args.json:
        write_json(result, args.json)


def cmd_eval(args: argparse.Namespace) -> None:
    """Under torchrun the samples are spread over the processes; rank 0 prints and writes."""
    from difflab.device import resolve_device
    from difflab.eval.evaluate import evaluate, write_json
    from difflab.eval.sharded import joined, local_device

    device = local_device(args.device)
    with joined(resolve_device(device)) as (rank, _):
        report = evaluate(
            args.run, n=args.n, metrics=args.metrics, sampler=args.sampler, steps=args.steps, seed=args.seed,
            batch_size=args.sample_batch_size, device=device, data=args.data, real_n=args.real_n,
            features=args.features, bpd_n=args.bpd_n, bpd_timesteps=args.bpd_timesteps,
            inception_weights=args.inception_weights, allow_download=args.download, cache=not args.no_cache,
            progress=not args.no_progress, log=note if rank == 0 else lambda _: None,
            prompt_file=args.prompt_file, guidance=args.guidance, clip_weights=args.clip_weights,
            autoencoder=args.autoencoder,
        )
    if rank == 0:
        print(report.table())
        if args.json:
            write_json(report.to_dict(), args.json)


def register(sub: argparse._SubParsersAction) -> None:
    from difflab.eval.evaluate import METRICS
    from difflab.samplers import SAMPLERS

    p = sub.add_parser("fd", help="Frechet distance between two image folders or .npz statistics")
    p.add_argument("path_a", type=Path, help="folder of images or .npz statistics")
    p.add_argument("path_b", type=Path, nargs="?", help="folder of images or .npz statistics")
    add_extractor_args(p)
    p.add_argument("--image-size", type=positive_int,
                   help="resize (shorter side) and centre-crop every image to N x N first")
    p.add_argument("--save-stats", type=Path, help="save the first path's features and statistics (.npz)")
    p.set_defaults(func=cmd_fd)

    p = sub.add_parser("eval", help="sample a run with fixed seeds and score it against its data")
    p.add_argument("run", type=Path, help=RUN_HELP)
    p.add_argument("--n", type=positive_int, default=5000, help="generated images (default 5000)")
    p.add_argument("--metrics", help=f"comma-separated, from: {','.join(METRICS)} "
                   "(default: fd-effnet,kid,precision-recall, plus fd-digit,digit on digit data)")
    p.add_argument("--sampler", choices=SAMPLERS, help="default: the run's (ddim)")
    p.add_argument("--steps", type=positive_int, help="sampling steps (default: the run's, 50)")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    p.add_argument("--sample-batch-size", type=positive_int, default=256)
    p.add_argument("--data", help="compare with this data spec instead of the run's training data")
    p.add_argument("--real-n", type=positive_int, help="use at most N real images (seeded subset)")
    p.add_argument("--bpd-n", type=positive_int, default=256, help="real images scored by bpd")
    p.add_argument("--bpd-timesteps", type=positive_int, default=50, help="strata of the bpd estimate")
    p.add_argument("--no-cache", action="store_true", help="recompute the real-data features")
    p.add_argument("--prompt-file", type=Path,
                   help="prompt-agreement: prompts to score, one per line, each naming one digit (default: "
                   "the held-out caption templates x classes)")
    p.add_argument("--guidance", type=float,
                   help="prompt-agreement and clip-score: classifier-free guidance scale (default: the "
                   "run's)")
    p.add_argument("--clip-weights", type=Path,
                   help="clip-score: a local CLIP model folder (CLIPModel.save_pretrained with its "
                   "tokenizer, e.g. openai/clip-vit-base-patch32); nothing is downloaded")
    p.add_argument("--autoencoder", help=AUTOENCODER_HELP)
    p.add_argument("--no-progress", action="store_true")
    add_extractor_args(p)
    p.set_defaults(func=cmd_eval)
