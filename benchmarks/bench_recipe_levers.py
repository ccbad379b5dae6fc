"""Levers of the default recipe, measured against images seen (not time, so the load of a shared
machine does not change the answer): batch size, learning rate and network shape, each a full
run with its own warm-up and cosine decay, scored with several samplers.

Each ``--config`` is ``NAME:key=value,...`` over ``batch``, ``lr``, ``base``, ``mult`` (``1-2-4``),
``res`` and ``attn`` (``7`` or ``14-7``); every config trains on the embedded MNIST for
``--images`` images (steps = images / batch), and its EMA weights draw ``--n`` samples (seeds
0..n-1) with every sampler in ``--samplers`` (``name:steps``), scored by the MNIST classifier
(share with confidence >= 0.9, class entropy) and FD-digit against the 5,000 real digits. Runs go
one after the other with ``--threads`` threads; to use two cores for two configs, start two
processes with one thread each. No goal: it chooses the defaults (benchmarks/README.md).

    OMP_NUM_THREADS=1 python benchmarks/bench_recipe_levers.py --quick
    OMP_NUM_THREADS=1 python benchmarks/bench_recipe_levers.py --images 150000 \\
        --config b64:batch=64 b128:batch=128 b128-lr3e-3:batch=128,lr=3e-3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import load_report, machine_report
from bench_time_to_quality import real_digits

DEFAULT_SAMPLERS = "ddim:50,dpmpp-2m:20,dpmpp-2m-sde:10,dpmpp-2m-sde:20,dpmpp-3m-sde:10,ddpm:100"
KEYS = {"batch", "lr", "base", "mult", "res", "attn"}


def parse_config(text: str) -> tuple[str, dict[str, str]]:
    name, _, rest = text.partition(":")
    fields = dict(item.split("=", 1) for item in rest.split(",") if item)
    unknown = set(fields) - KEYS
    if unknown:
        raise SystemExit(f"--config {text}: unknown keys {sorted(unknown)}; use {sorted(KEYS)}")
    return name, fields


def train_config(fields: dict[str, str], images: int) -> Any:
    from difflab.nets import NetShape
    from difflab.train import TrainConfig

    def ints(key: str) -> tuple[int, ...] | None:
        return tuple(int(v) for v in fields[key].split("-") if v) if key in fields else None

    shape = NetShape(base_channels=int(fields["base"]) if "base" in fields else None,
                     channel_mult=ints("mult"),
                     num_res_blocks=int(fields["res"]) if "res" in fields else None,
                     attention_resolutions=ints("attn"))
    base = TrainConfig()
    batch = int(fields.get("batch", base.batch_size))
    return base.replace(batch_size=batch, lr=float(fields.get("lr", base.lr)), steps=max(1, images // batch),
                        net_shape=None if shape.is_default() else shape, sample_every=10**9,
                        checkpoint_every=10**9)


def score(run: Path, samplers: list[str], n: int, real: torch.Tensor) -> list[dict[str, Any]]:
    from difflab.eval.digit_classifier import digit_scores, fd_digit
    from difflab.pipeline import load

    pipe = load(run, "cpu")
    rows = []
    for spec in samplers:
        name, steps = spec.split(":")
        images = pipe.sample(n, sampler=name, steps=int(steps), seed=0, batch_size=128)
        s = digit_scores(images)
        rows.append({"sampler": spec, "confident": round(float(s["confident_share"]), 3),
                     "entropy": round(float(s["class_entropy"]), 3),
                     "fd_digit": round(fd_digit(images, real), 1)})
    return rows


def main() -> None:
    from difflab.nets import param_count
    from difflab.pipeline import load
    from difflab.train import train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="+", default=["default:"], help="NAME:key=value,...")
    parser.add_argument("--images", type=int, default=150_000, help="images seen per config")
    parser.add_argument("--samplers", default=DEFAULT_SAMPLERS)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="640 images, 16 samples, two samplers")
    parser.add_argument("--out", type=Path, help="keep the runs here")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.images, args.n, args.samplers = 640, 16, "ddim:5,dpmpp-2m-sde:5"
    torch.set_num_threads(args.threads)
    machine_report(torch.device("cpu"))
    real = real_digits()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        for text in args.config:
            name, fields = parse_config(text)
            cfg = train_config(fields, args.images)
            result = train(cfg, root / name, progress=False, log=lambda _: None)
            params = param_count(load(root / name, "cpu").net)
            for r in score(root / name, args.samplers.split(","), args.n, real):
                rows.append({"config": name, "batch": cfg.batch_size, "lr": cfg.lr, "params": params,
                             "steps": result.steps, "images": result.steps * cfg.batch_size, **r})
                print(json.dumps(rows[-1]), flush=True)
    keys = list(rows[0])
    print(f"\n### {args.images:,} images per config, {args.n} samples (seeds 0..{args.n - 1})\n")
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    print(f"\n{load_report('at the end')}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
