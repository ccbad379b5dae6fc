"""Evaluation cost and scale: extractor speed, and where a trained model sits between the floor
(real vs real) and the ceiling (noise vs real).

1. Images/s of each feature extractor on 28x28 MNIST digits (EfficientNet-Lite0 resizes to 224).
2. FD-EffNetLite0, FD-digit, KID-EffNetLite0 and precision/recall at ``--half`` vs ``--half``
   images: real half A vs real half B (the floor: what sampling noise alone gives), uniform
   noise vs A (the ceiling) and, with ``--run``, the run's samples vs A.
3. With ``--full-eval``, the wall time of ``difflab eval RUN --n 5000`` by stage.

    python benchmarks/bench_eval.py --quick      # ~1 minute: checks the script runs
    python benchmarks/bench_eval.py --run RUN [--full-eval]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from difflab.data import DataConfig, load_dataset
from difflab.data.images import uint8_to_float
from difflab.eval.evaluate import evaluate, frechet
from difflab.eval.features import get_extractor
from difflab.eval.kid import kernel_distance
from difflab.eval.precision_recall import precision_recall
from difflab.eval.stats import extract

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import load_report, machine_report


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def speed(names: list[str], images: torch.Tensor) -> list[dict]:
    rows = []
    for name in names:
        ex = get_extractor(name, "cpu")
        ex.features(images[:8])  # warm-up
        t0 = time.perf_counter()
        ex.features(images)
        dt = time.perf_counter() - t0
        rows.append({"extractor": ex.label, "images": len(images), "seconds": round(dt, 2),
                     "images/s": round(len(images) / dt, 1)})
    return rows


def scale(half: int, run: Path | None, sampler: str, steps: int) -> list[dict]:
    real = uint8_to_float(load_dataset(DataConfig()).images)
    perm = torch.randperm(len(real), generator=torch.Generator().manual_seed(0))
    a, b = real[perm[:half]], real[perm[half : 2 * half]]
    noise = torch.rand(half, *a.shape[1:], generator=torch.Generator().manual_seed(1)) * 2 - 1
    sets = {"real B (floor)": b, "uniform noise (ceiling)": noise}
    if run is not None:
        from difflab.pipeline import load

        sets[f"{run.name} ({sampler} {steps})"] = load(run, "cpu").sample(half, sampler=sampler, steps=steps)
    rows = []
    effnet, digit = get_extractor("effnet-lite0", "cpu"), get_extractor("digit", "cpu")
    ref_e, ref_d = extract(a, effnet), extract(a, digit)
    for label, images in sets.items():
        fe, fd = extract(images, effnet), extract(images, digit)
        kid, kid_std = kernel_distance(ref_e.features, fe.features)
        p, r = precision_recall(ref_e.features, fe.features, k=3)
        rows.append({"set vs real A": label, "FD-EffNetLite0": round(frechet(ref_e, fe), 2),
                     "FD-digit": round(frechet(ref_d, fd), 2),
                     "KID-EffNetLite0 x1000": f"{kid * 1000:.2f} ± {kid_std * 1000:.2f}",
                     "precision-EffNetLite0": round(p, 3), "recall-EffNetLite0": round(r, 3)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a trained run folder to place between floor and ceiling")
    parser.add_argument("--half", type=int, default=2500, help="images per side")
    parser.add_argument("--speed-n", type=int, default=256)
    parser.add_argument("--sampler", default="dpmpp-2m-sde")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--full-eval", action="store_true", help="time `difflab eval RUN --n 5000`")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true",
                        help="64 images a side, no --full-eval: checks the script runs")
    args = parser.parse_args()
    if args.quick:
        args.half, args.speed_n, args.full_eval = 64, 32, False

    machine_report(torch.device("cpu"))
    digits = uint8_to_float(load_dataset(DataConfig()).images[: args.speed_n])
    results: dict[str, list[dict]] = {"speed": speed(["digit", "effnet-lite0"], digits)}
    print(table(results["speed"]), end="\n\n")
    results["scale"] = scale(args.half, args.run, args.sampler, args.steps)
    print(table(results["scale"]), end="\n\n")
    if args.full_eval and args.run is not None:
        report = evaluate(args.run, n=5000, sampler=args.sampler, steps=args.steps, device="cpu",
                          metrics="fd-effnet,fd-digit,kid,precision-recall,digit,bpd", cache=False,
                          progress=False, log=lambda s: None)
        print(report.table())
        results["full_eval"] = [report.to_dict()]
    print(load_report("at the end"))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
