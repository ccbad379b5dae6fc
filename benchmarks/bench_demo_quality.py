"""Quality of the demo after equal CPU time: difflab's default vs the diffusers-course recipe.

Both train on the embedded MNIST for the same wall-clock budget on the same machine in one run,
then draw 256 samples (DDIM, 50 steps, seeds 0..255) scored by the pre-trained MNIST classifier:
the share classified with confidence > 0.9 and the entropy of the predicted-class histogram
(ln 10 = 2.303 nats is uniform).

    python benchmarks/bench_demo_quality.py --minutes 10
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from difflab.eval.digit_classifier import digit_scores
from difflab.pipeline import load
from difflab.train import TrainConfig, preset_config, train


def run(name: str, cfg: TrainConfig, minutes: float, root: Path, n: int) -> dict[str, float | str]:
    out = root / name
    res = train(cfg, out, progress=False, log=lambda s: None, max_seconds=minutes * 60)
    pipe = load(out, "cpu")
    t0 = time.perf_counter()
    images = pipe.sample(n, sampler="ddim", steps=50, seed=0, batch_size=128)
    sample_s = time.perf_counter() - t0
    scores = digit_scores(images)
    return {"config": name, "steps": res.steps, "images_per_s": round(res.images_per_s, 1),
            "train_s": round(res.seconds), "sample_s": round(sample_s, 1),
            "confident_share": round(float(scores["confident_share"]), 3),
            "class_entropy": round(float(scores["class_entropy"]), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--only", choices=("default", "seed003"))
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    big = 10**6  # the time limit ends these runs; the default's LR schedule is set by its own steps
    configs = {"default": TrainConfig(sample_every=big),
               "seed003": preset_config("seed003", steps=big, sample_every=big, checkpoint_every=500)}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        rows = [run(name, cfg, args.minutes, root, args.n) for name, cfg in configs.items()
                if args.only in (None, name)]
    print(f"# {args.minutes:g} min of training each on {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
