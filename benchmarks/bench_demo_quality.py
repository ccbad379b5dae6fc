"""Quality of the default model after a time budget: ``difflab train --data mnist --time-budget Nm``.

For each budget in ``--budgets`` (minutes) the script trains ``TrainConfig(time_budget=60 * N)``,
exactly what that command trains (the default recipe, its sample grids and checkpoints included in
the budget), then scores ``--n`` samples drawn as ``difflab sample`` draws them by default (the
run's sampler and steps, seeds 0..n-1) with ``difflab.eval.evaluate``: the share the pre-trained
MNIST classifier calls with confidence >= 0.9, the entropy of its class histogram (ln 10 = 2.303
nats is uniform), FD-digit against the 5,000 real digits, and precision / recall and
FD-EffNetLite0 on EfficientNet-Lite0 features (so a high confident share cannot hide mode
collapse). ``--recipe`` also trains the diffusers-course recipe (``bench_common.recipe_config``)
for the largest budget and scores it the same way. The runs go one after the other, each with
``--threads`` threads (both cores by default: measure on an otherwise idle machine).

Goals (exit status 1 when one is missed; reported only with ``--quick``): after 10 minutes >= 85%
confident digits and class entropy >= 2.2 nats; after 5 minutes >= 80% confident digits; with
``--recipe``, the default beats the recipe of the same budget on confident share and FD-digit.

    python benchmarks/bench_demo_quality.py --quick                 # ~1 minute
    python benchmarks/bench_demo_quality.py --budgets 10 5 --recipe
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
from bench_common import exit_on_missed, load_report, machine_report, recipe_config

GOALS = {10.0: (0.85, 2.2), 5.0: (0.80, None)}  # minutes: (confident share, class entropy)
METRICS = "digit,fd-digit,precision-recall,fd-effnet"
BIG = 10**9


def train_run(name: str, cfg: Any, out: Path, max_seconds: float | None) -> dict[str, Any]:
    from difflab.train import train

    print(f"{name}: training ({load_report('before')})", flush=True)
    t0 = time.perf_counter()
    result = train(cfg, out, progress=False, log=lambda line: print(f"  {line}", flush=True),
                   max_seconds=max_seconds)
    wall = time.perf_counter() - t0
    return {"config": name, "steps": result.steps, "batch": cfg.batch_size,
            "images_seen": result.steps * cfg.batch_size, "train_s": round(result.seconds, 1),
            "wall_s": round(wall, 1), "images_per_s": round(result.images_per_s, 1)}


def score_run(row: dict[str, Any], out: Path, n: int) -> dict[str, Any]:
    from difflab.eval import evaluate

    report = evaluate(out, n=n, metrics=METRICS, seed=0, progress=False, log=lambda _: None, cache=False)
    values = {s.metric: s.value for s in report.scores}
    return {**row, "sampler": f"{report.sampler} {report.steps}",
            "confident": round(values["confident-digit"], 3),
            "entropy": round(values["class-entropy-digit"], 3),
            "fd_digit": round(values["FD-digit"], 2),
            "precision": round(values["precision-EffNetLite0"], 3),
            "recall": round(values["recall-EffNetLite0"], 3),
            "fd_effnet": round(values["FD-EffNetLite0"], 2),
            "sample_s": round(report.seconds.get("sampling", 0.0), 1)}


def print_rows(rows: list[dict[str, Any]]) -> None:
    keys = list(rows[0])
    print("\n| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{r[k]:,}" if k == "images_seen" else str(r[k]) for k in keys) + " |")


def check_goals(rows: list[dict[str, Any]]) -> list[str]:
    missed = []
    default = {r["budget_min"]: r for r in rows if r["config"] == "default"}
    for minutes, (confident, entropy) in GOALS.items():
        r = default.get(minutes)
        if r is None:
            continue
        if r["confident"] < confident:
            missed.append(f"{minutes:g} min: {r['confident']:.3f} confident digits, goal >= {confident}")
        if entropy is not None and r["entropy"] < entropy:
            missed.append(f"{minutes:g} min: class entropy {r['entropy']:.3f}, goal >= {entropy}")
    for r in (r for r in rows if r["config"] == "recipe"):
        d = default.get(r["budget_min"])
        if d and (d["confident"] < r["confident"] or d["fd_digit"] > r["fd_digit"]):
            missed.append(f"{r['budget_min']:g} min: the default ({d['confident']:.3f} confident, "
                          f"FD-digit {d['fd_digit']}) does not beat the recipe ({r['confident']:.3f}, "
                          f"{r['fd_digit']})")
    return missed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[10.0, 5.0], help="minutes")
    parser.add_argument("--recipe", action="store_true", help="also train the course recipe (largest budget)")
    parser.add_argument("--n", type=int, default=256, help="samples scored per run")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--quick", action="store_true", help="a 0.2-minute budget, 32 samples")
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.budgets, args.n = [0.2], 32
    torch.set_num_threads(args.threads)
    machine_report(torch.device("cpu"))
    from difflab.train import TrainConfig

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        for minutes in args.budgets:
            out = root / f"default-{minutes:g}m"
            row = train_run(f"default {minutes:g} min", TrainConfig(time_budget=60 * minutes), out, None)
            rows.append(score_run({"budget_min": minutes, **row, "config": "default"}, out, args.n))
        if args.recipe:
            minutes = max(args.budgets)
            out = root / f"recipe-{minutes:g}m"
            cfg = recipe_config(28, steps=BIG, sample_every=BIG, checkpoint_every=BIG)
            row = train_run(f"recipe {minutes:g} min", cfg, out, 60 * minutes)
            rows.append(score_run({"budget_min": minutes, **row, "config": "recipe"}, out, args.n))
    print(f"\n### After a time budget: {args.n} samples each (the run's default sampler), "
          f"{torch.get_num_threads()} thread(s)")
    print_rows(rows)
    print(f"\n{load_report('at the end')}")
    missed = check_goals(rows)
    print("\nGoals: 10 min >= 85% confident and entropy >= 2.2; 5 min >= 80% confident; better than the "
          f"recipe on confident share and FD-digit: {'NOT met' if missed else 'met'}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    exit_on_missed(missed, "GOAL MISSED: demo quality", enforce=not args.quick)


if __name__ == "__main__":
    main()
