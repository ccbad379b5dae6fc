"""Time to quality on CPU: digit scores after 2, 5, 10 and 20 minutes of training.

difflab's default config against the diffusers-course recipe (``--preset seed003``: diffusers
UNet2DModel 1.7M, eps target, cosine schedule, AdamW 4e-4, batch 128; run by difflab's loop, whose
overhead against a plain diffusers loop is measured by ``bench_train_speed.py``). Each config trains
once for the longest budget; the EMA weights are copied when each mark is passed, then every copy
draws 256 samples (DDIM, 25 steps, seeds 0..255) scored by the pre-trained MNIST classifier
(confident share, class entropy) and FD-digit against the 5,000 real digits.

With ``--parallel`` (the default on a machine with at least two cores) the two configs train at
the same time, one thread each, each pinned to its own core, so both see the same machine.

    python benchmarks/bench_time_to_quality.py --marks 2 5 10 20
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CONFIGS = ("default", "seed003")


def make_config(name: str):
    from difflab.train import TrainConfig, preset_config

    big = 10**6
    if name == "default":
        return TrainConfig(sample_every=big, checkpoint_every=big)
    return preset_config("seed003", steps=big, sample_every=big, checkpoint_every=big)


def worker(name: str, marks: list[float], out: Path, n: int, steps: int) -> list[dict]:
    from difflab.data import DataConfig, load_dataset
    from difflab.data.images import uint8_to_float
    from difflab.eval.evaluate import frechet
    from difflab.eval.features import DigitFeatures
    from difflab.eval.scores import class_entropy, confident_share
    from difflab.eval.stats import FeatureSet, extract
    from difflab.pipeline import Pipeline
    from difflab.train import train

    cfg = make_config(name)
    pending = sorted(m * 60 for m in marks)
    snaps: list[tuple[float, int, float, dict]] = []

    def on_step(step: int, seconds: float, model: torch.nn.Module) -> None:
        while pending and seconds >= pending[0]:
            snaps.append((pending.pop(0), step, seconds, copy.deepcopy(model.state_dict())))

    res = train(cfg, out, progress=False, log=lambda s: None, max_seconds=max(marks) * 60, on_step=on_step)
    pipe = Pipeline.load(out, "cpu")
    final = copy.deepcopy(pipe.net.state_dict())
    for mark in pending:  # finished before these marks: the final weights stand for them
        snaps.append((mark, res.steps, res.seconds, final))
    digit = DigitFeatures("cpu")
    real_images = uint8_to_float(load_dataset(DataConfig()).images)
    real = FeatureSet.from_features(digit.features(real_images), "FD-digit")
    rows = []
    for mark, step, seconds, state in snaps:
        pipe.net.load_state_dict(state)
        images = pipe.sample(n, sampler="ddim", steps=steps, seed=0, batch_size=128)
        probs = digit.probs(images)
        rows.append({"config": name, "minutes": mark / 60, "steps": step, "train_s": round(seconds),
                     "images_seen": step * cfg.batch_size,
                     "confident": round(confident_share(probs), 3),
                     "entropy": round(class_entropy(probs), 3),
                     "fd_digit": round(frechet(real, extract(images, digit)), 1)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--marks", type=float, nargs="+", default=[2, 5, 10, 20], help="minutes")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps of the scored samples")
    parser.add_argument("--only", choices=CONFIGS)
    parser.add_argument("--serial", action="store_true", help="train the configs one after the other")
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.worker:
        rows = worker(args.worker, args.marks, args.out, args.n, args.steps)
        args.json.write_text(json.dumps(rows))
        return

    names = [c for c in CONFIGS if args.only in (None, c)]
    parallel = not args.serial and len(names) > 1 and (os.cpu_count() or 1) >= 2
    root = args.out or Path(tempfile.mkdtemp(prefix="ttq-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = []
    t0 = time.perf_counter()
    for i, name in enumerate(names):
        cmd = [sys.executable, __file__, "--worker", name, "--marks", *map(str, args.marks),
               "--n", str(args.n), "--steps", str(args.steps),
               "--out", str(root / name), "--json", str(root / f"{name}.json")]
        if parallel and shutil.which("taskset"):
            cmd = ["taskset", "-c", str(i % (os.cpu_count() or 1)), *cmd]
        proc = subprocess.Popen(cmd, env=env)
        if parallel:
            procs.append(proc)
        elif proc.wait():
            sys.exit(f"worker {name} failed")
    if any(p.wait() for p in procs):
        sys.exit("a worker failed")
    rows = [r for name in names for r in json.loads((root / f"{name}.json").read_text())]
    print(f"# time to quality on {platform.processor() or platform.machine()}, 1 thread per config"
          f"{', both at once on separate cores' if parallel else ''}, torch {torch.__version__}, "
          f"{time.perf_counter() - t0:.0f} s in all")
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in sorted(rows, key=lambda r: (r["minutes"], r["config"])):
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if args.out is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
