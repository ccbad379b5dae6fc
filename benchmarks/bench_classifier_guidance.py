"""Classifier guidance on unconditional MNIST: agreement with the requested digit against the
classifier scale, and what the gradient costs.

An unconditional run (the demo's recipe, ``difflab train --data mnist``) is guided by a noise-aware
classifier trained on the same schedule (``difflab train-classifier --match RUN``; Dhariwal &
Nichol 2021, Algorithm 2 for DDIM, Algorithm 1 for ancestral DDPM). ``--n`` samples per scale
(seeds 0..n-1, the requested digit cycling through 0..9) are judged by the pre-trained MNIST
classifier (``digit-recognizer-py``), which guidance never sees: agreement is the share it assigns
to the requested digit (binomial standard error beside it), confident the share it classifies
with p > 0.9. The guiding classifier's own agreement on the final images (at t = 0) is shown too:
where it runs far ahead of the independent one, guidance is fooling its classifier rather than
drawing the digit. Then the cost: images/s unguided and guided, interleaved in one run so both see
the same load, with the denoiser evaluations (NFE) and classifier forward+backward passes per image.

Goal (exit status 1 when missed): agreement rises with the scale up to the best one (each step up
by more than -2 points) and the best scale beats unguided sampling by ``--goal`` (30) points.

    OMP_NUM_THREADS=2 python benchmarks/bench_classifier_guidance.py --run runs/uncond-mnist \\
        --classifier runs/clf-mnist
    OMP_NUM_THREADS=1 python benchmarks/bench_classifier_guidance.py --quick   # ~1 minute, checks it runs
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import exit_on_missed, load_report, machine_report

SCALES = (0.0, 1.0, 2.0, 5.0, 10.0)


def train_run(out: Path, steps: int) -> None:
    from difflab.train import TrainConfig, train

    t0 = time.perf_counter()
    train(TrainConfig(steps=steps), out, progress=False, log=lambda s: None)
    seconds = time.perf_counter() - t0
    print(f"trained the unconditional run {out} ({steps} steps) in {seconds:.0f} s", flush=True)


def train_classifier_run(out: Path, run: Path, steps: int) -> None:
    from difflab.classifier_run import ClassifierTrainConfig
    from difflab.run_config import TrainConfig
    from difflab.train.classifier import train_classifier

    cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    clf = ClassifierTrainConfig(data=cfg.data, schedule=cfg.schedule, T=cfg.T,
                                zero_terminal_snr=cfg.zero_terminal_snr, steps=steps)
    result = train_classifier(clf, out, progress=False, log=lambda s: None)
    table = ", ".join(f"t={r.t}: {r.accuracy:.2f}" for r in result.accuracy)
    print(f"trained the classifier {out} ({steps} steps) in {result.seconds:.0f} s; held-out accuracy "
          f"{table}", flush=True)


def score(pipe: Any, clf: Any, scale: float, n: int, sampler: str, steps: int) -> dict[str, Any]:
    from difflab.eval.digit_classifier import digit_probs
    from difflab.eval.scores import confident_share

    labels = torch.arange(n) % clf.num_classes
    t0 = time.perf_counter()
    images = pipe.sample(n, sampler=sampler, steps=steps, seed=0, batch_size=100, class_labels=labels,
                         classifier=clf, classifier_scale=scale)
    seconds = time.perf_counter() - t0
    probs = digit_probs(images)
    agree = float((probs.argmax(1) == labels).double().mean())
    with torch.no_grad():
        own = clf(images, torch.zeros(n, dtype=torch.long)).argmax(1)
    return {"scale": scale, "agreement": agree, "stderr": math.sqrt(agree * (1 - agree) / n),
            "confident": confident_share(probs), "own_agreement": float((own == labels).double().mean()),
            "seconds": seconds}


def counts(pipe: Any, clf: Any, sampler: str, steps: int) -> tuple[int, int]:
    """(denoiser evaluations, classifier forward+backward passes) per guided image."""
    from difflab import sample

    model = clf.guide(pipe.net, [3], 1.0, schedule=pipe.schedule, prediction=pipe.config.prediction,
                      sampler=sampler, steps=steps, spacing="trailing", variance=pipe.config.sample_variance)
    out = sample(model, torch.randn(1, *pipe.image_shape), schedule=pipe.schedule, sampler=sampler,
                 steps=steps, prediction=pipe.config.prediction, return_nfe=True)
    return out.nfe, model.classifier_evals


def cost(pipe: Any, clf: Any, sampler: str, steps: int, n: int, repeats: int) -> dict[str, float]:
    """Images/s unguided and guided (scale 5), interleaved; the best of ``repeats``."""
    labels = torch.arange(n) % clf.num_classes
    times: dict[str, list[float]] = {"unguided": [], "classifier-guided": []}
    for _ in range(repeats):
        for name in times:
            guided = {"classifier": clf, "classifier_scale": 5.0, "class_labels": labels}
            kw = {} if name == "unguided" else guided
            t0 = time.perf_counter()
            pipe.sample(n, sampler=sampler, steps=steps, seed=0, batch_size=n, **kw)
            times[name].append(time.perf_counter() - t0)
    return {name: n / min(ts) for name, ts in times.items()}


def rises(rows: list[dict[str, Any]], tolerance: float = 0.02) -> bool:
    """Agreement goes up with the scale until the best scale (dips within ``tolerance`` allowed)."""
    best = max(range(len(rows)), key=lambda i: rows[i]["agreement"])
    return all(rows[i + 1]["agreement"] > rows[i]["agreement"] - tolerance for i in range(best))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="an unconditional MNIST run (trained here if missing)")
    parser.add_argument("--classifier", type=Path, help="a classifier run for it (trained here if missing)")
    parser.add_argument("--train-steps", type=int, default=1500)
    parser.add_argument("--classifier-steps", type=int, default=1500)
    parser.add_argument("--n", type=int, default=300, help="samples per scale")
    parser.add_argument("--sampler", default="ddim")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--scales", type=float, nargs="+", default=list(SCALES))
    parser.add_argument("--ddpm-steps", type=int, default=100,
                        help="also DDPM (Algorithm 1) at this many steps at scale 0 and the best; 0 = skip")
    parser.add_argument("--goal", type=float, default=0.30,
                        help="points the best scale must beat unguided by")
    parser.add_argument("--quick", action="store_true", help="tiny runs, 20 samples: checks the script runs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    machine_report(torch.device("cpu"))
    from difflab.classifier_run import load_classifier
    from difflab.pipeline import load

    tmp = tempfile.TemporaryDirectory()
    run = args.run or Path(tmp.name) / "run"
    clf_dir = args.classifier or Path(tmp.name) / "clf"
    if args.quick:
        args.n, args.train_steps, args.classifier_steps, args.steps, args.ddpm_steps = 20, 30, 30, 5, 10
    if not (run / "model.safetensors").is_file():
        train_run(run, args.train_steps)
    if not (clf_dir / "config.json").is_file():
        train_classifier_run(clf_dir, run, args.classifier_steps)
    pipe = load(run, "cpu")
    clf = load_classifier(clf_dir, "cpu")
    clf.check_pairing(pipe.config, pipe.image_shape, str(run))
    accuracy = (clf_dir / "accuracy.csv").read_text().strip().splitlines()[1:]
    print(f"\nclassifier {clf_dir}: held-out accuracy by t: "
          + ", ".join(f"t={r.split(',')[0]}: {float(r.split(',')[2]):.2f}" for r in accuracy))
    nfe, passes = counts(pipe, clf, args.sampler, args.steps)

    rows = []
    print(f"\n{args.n} samples per row, {args.sampler} {args.steps} steps (Algorithm 2), run {run}, "
          f"classifier {clf_dir}; NFE {nfe} + {passes} classifier passes per guided image\n")
    print("| sampler | scale | agreement (MNIST classifier) | confident > 0.9 | guiding classifier's own "
          "agreement (t=0) | images/s |")
    print("|---|---|---|---|---|---|")

    def show(r: dict[str, Any]) -> None:
        print(f"| {r['sampler']} | {r['scale']:g} | {r['agreement']:.1%} ± {r['stderr']:.1%} | "
              f"{r['confident']:.1%} | {r['own_agreement']:.1%} | {args.n / r['seconds']:.2f} |", flush=True)

    for s in args.scales:
        r = score(pipe, clf, s, args.n, args.sampler, args.steps)
        r["sampler"] = f"{args.sampler} {args.steps}"
        rows.append(r)
        show(r)
    best = max(rows, key=lambda r: r["agreement"])
    ddpm_rows = []
    if args.ddpm_steps:
        for s in dict.fromkeys((0.0, best["scale"])):
            r = score(pipe, clf, s, args.n, "ddpm", args.ddpm_steps)
            r["sampler"] = f"ddpm {args.ddpm_steps} (Algorithm 1)"
            ddpm_rows.append(r)
            show(r)

    speeds = cost(pipe, clf, args.sampler, args.steps, min(args.n, 100), 1 if args.quick else 2)
    base = speeds["unguided"]
    print(f"\n| {args.sampler} {args.steps} steps | images/s | vs unguided | NFE/image | "
          "classifier passes/image |")
    print("|---|---|---|---|---|")
    for name, ips in speeds.items():
        print(f"| {name} | {ips:.2f} | {ips / base:.2f}x | {nfe} | {passes if name != 'unguided' else 0} |")
    print(load_report("at the end"))

    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "ddpm": ddpm_rows, "speeds": speeds, "nfe": nfe,
                                         "classifier_passes": passes}, indent=2))
    unguided = rows[0] if rows[0]["scale"] == 0 else None
    missed = []
    if unguided is None:
        missed.append("the scales must start at 0 (unguided)")
    elif best["agreement"] < unguided["agreement"] + args.goal:
        missed.append(f"best agreement {best['agreement']:.1%} (scale {best['scale']:g}) beats unguided "
                      f"{unguided['agreement']:.1%} by less than {args.goal:.0%} points")
    if not rises(rows):
        missed.append("agreement does not rise with the scale up to the best one: "
                      + ", ".join(f"{r['scale']:g}: {r['agreement']:.1%}" for r in rows))
    exit_on_missed(missed, "classifier-guidance goal missed", enforce=not args.quick)


if __name__ == "__main__":
    main()
