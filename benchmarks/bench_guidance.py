"""Classifier-free guidance on class-conditional MNIST: agreement with the requested digit, sample
quality and cost, against the guidance scale, rescale and interval.

The run is the demo's recipe trained with ``--cond class`` (labels dropped 10% of the time), or any
class-conditional run given with ``--run``. ``--n`` samples per setting (seeds 0..n-1, the digit
cycling through 0..9) are drawn with ``--sampler`` at ``--steps`` steps (NFE = 2 x steps when both
branches run) and scored by the pre-trained MNIST classifier: agreement (the share classified as
the requested digit), the share classified with confidence > 0.9 and FD-digit against the 5,000
real digits. Then the cost: images/s of unguided, batched-guided and sequential-guided sampling,
interleaved in one run so all three see the same load.

Goal (exit status 1 when missed), from the conditioning issue: agreement >= 98% (``--goal``) at
some guidance <= 3 with at most 20 NFE.

    OMP_NUM_THREADS=2 python benchmarks/bench_guidance.py --run runs/bench-class
    OMP_NUM_THREADS=2 python benchmarks/bench_guidance.py --train-steps 1500      # trains the run first
    OMP_NUM_THREADS=1 python benchmarks/bench_guidance.py --quick                 # ~1 minute
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import exit_on_missed, load_report, machine_report

SCALES = (0.0, 1.0, 2.0, 3.0, 5.0, 7.5)


def settings(scales: tuple[float, ...]) -> list[tuple[str, Any]]:
    """(label, Guidance) for every scale, then rescale and interval variants at 3 and 5."""
    from difflab.guidance import Guidance

    rows = [(f"w={w:g}", Guidance(w)) for w in scales]
    for w in (3.0, 5.0):
        rows.append((f"w={w:g} rescale 0.7", Guidance(w, rescale=0.7)))
        rows.append((f"w={w:g} interval sigma [0.3, 5]", Guidance(w, interval=(0.3, 5.0))))
    return rows


def train_run(out: Path, steps: int) -> Path:
    from difflab.train import TrainConfig, train

    cfg = TrainConfig(cond="class", steps=steps)
    t0 = time.perf_counter()
    train(cfg, out, resume=(out / "config.json").exists(), progress=False, log=lambda s: None)
    seconds = time.perf_counter() - t0
    print(f"trained {out} ({steps} steps of {cfg.batch_size}) in {seconds:.0f} s", flush=True)
    return out


def score(pipe: Any, guidance: Any, n: int, sampler: str, steps: int, real_feats: Any) -> dict[str, Any]:
    from difflab.eval.digit_classifier import digit_features, digit_probs
    from difflab.eval.scores import confident_share, feature_statistics, frechet_distance

    labels = torch.arange(n) % pipe.num_classes
    t0 = time.perf_counter()
    images = pipe.sample(n, sampler=sampler, steps=steps, seed=0, batch_size=250, class_labels=labels,
                         guidance=guidance)
    seconds = time.perf_counter() - t0
    probs = digit_probs(images)
    fd = frechet_distance(*feature_statistics(digit_features(images)), *real_feats)
    return {"agreement": float((probs.argmax(1) == labels).double().mean()),
            "confident": confident_share(probs), "fd_digit": fd, "seconds": seconds}


def nfe_of(pipe: Any, guidance: Any, sampler: str, steps: int) -> int:
    """Network evaluations per image, counted by the denoiser (2 per guided step)."""
    from difflab import sample
    from difflab.conditioning import ClassCondition
    from difflab.guidance import CFGModel

    classes = ClassCondition(pipe.num_classes)
    model = CFGModel(pipe.net, guidance, classes.null(1), pipe.schedule)
    out = sample(model, torch.randn(1, *pipe.image_shape), schedule=pipe.schedule, sampler=sampler,
                 steps=steps, prediction=pipe.config.prediction, cond=classes.cond([3]), return_nfe=True,
                 clip_x0=pipe.config.sample_clip)
    return out.nfe


def cost(pipe: Any, sampler: str, steps: int, n: int, repeats: int) -> dict[str, float]:
    """Images/s of unguided (null class), batched and sequential guidance at w=3, interleaved."""
    from difflab.guidance import Guidance

    variants = {"unguided": None, "guided, batched": Guidance(3.0),
                "guided, sequential": Guidance(3.0, batched=False)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    labels = torch.arange(n) % pipe.num_classes
    for _ in range(repeats):
        for name, g in variants.items():
            t0 = time.perf_counter()
            if g is None:
                pipe.sample(n, sampler=sampler, steps=steps, seed=0, batch_size=n)
            else:
                pipe.sample(n, sampler=sampler, steps=steps, seed=0, batch_size=n, class_labels=labels,
                            guidance=g)
            times[name].append(time.perf_counter() - t0)
    return {name: n / min(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a class-conditional run folder (trained if missing)")
    parser.add_argument("--train-steps", type=int, default=1500, help="steps when the run is trained here")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--sampler", default="dpmpp-2m")
    parser.add_argument("--steps", type=int, default=10, help="sampling steps (NFE = 2 x steps guided)")
    parser.add_argument("--goal", type=float, default=0.98)
    parser.add_argument("--quick", action="store_true",
                        help="a 30-step run, 40 samples: checks the script runs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    machine_report(torch.device("cpu"))
    from difflab.data import DataConfig, load_dataset
    from difflab.eval.digit_classifier import digit_features
    from difflab.eval.scores import feature_statistics
    from difflab.pipeline import load

    tmp = tempfile.TemporaryDirectory()
    run = args.run or Path(tmp.name) / "run"
    if args.quick:
        args.n, args.train_steps = 40, 30
    if not (run / "model.safetensors").is_file() or args.quick:
        train_run(run, args.train_steps)
    pipe = load(run, "cpu")
    if not pipe.num_classes:
        sys.exit(f"{run} is not class-conditional: train it with --cond class")
    real = load_dataset(DataConfig(source="mnist"))
    real_feats = feature_statistics(digit_features(real.batch(torch.arange(len(real)))[0]))

    rows = []
    print(f"\n{args.n} samples per row, {args.sampler}, {args.steps} steps, run {run}\n")
    print("| guidance | NFE/image | agreement | confident > 0.9 | FD-digit | images/s |")
    print("|---|---|---|---|---|---|")
    for label, g in settings(SCALES):
        r = score(pipe, g, args.n, args.sampler, args.steps, real_feats)
        r.update(setting=label, scale=g.scale, nfe=nfe_of(pipe, g, args.sampler, args.steps))
        rows.append(r)
        print(f"| {label} | {r['nfe']} | {r['agreement']:.1%} | {r['confident']:.1%} | "
              f"{r['fd_digit']:.1f} | {args.n / r['seconds']:.1f} |", flush=True)

    speeds = cost(pipe, args.sampler, args.steps, min(args.n, 200), 1 if args.quick else 3)
    base = speeds["unguided"]
    print("\n| sampling (w=3) | images/s | vs unguided |\n|---|---|---|")
    for name, ips in speeds.items():
        print(f"| {name} | {ips:.1f} | {ips / base:.2f}x |")
    print(load_report("at the end"))

    eligible = [r for r in rows if r["scale"] <= 3 and r["nfe"] <= 20]
    best = max(eligible, key=lambda r: r["agreement"], default=None)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "speeds": speeds}, indent=2))
    missed = []
    if best is None or best["agreement"] < args.goal:
        found = f"{best['agreement']:.1%} at {best['setting']}" if best else "no eligible setting"
        missed.append(f"agreement >= {args.goal:.0%} at guidance <= 3 with NFE <= 20: got {found}")
    exit_on_missed(missed, "guidance goal missed", enforce=not args.quick)


if __name__ == "__main__":
    main()
