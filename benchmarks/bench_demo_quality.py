"""Quality of the demo after equal CPU time: difflab's default vs the diffusers-course recipe.

Both configs (``default`` and ``recipe``, as in ``bench_time_to_quality.py``: difflab's default as
shipped, and the course's UNet2DModel recipe with eps target and unweighted MSE) train on the
embedded MNIST for ``--minutes`` of training time each, interleaved in one process (one runs while
the other waits, ``--slice`` seconds a turn: both see the same load; each config's images/s is its
solo speed), then draw ``--n`` samples (DDIM, 50 steps, seeds 0..n-1) scored by the pre-trained
MNIST classifier: the share classified with confidence > 0.9, the entropy of the predicted-class
histogram (ln 10 = 2.303 nats is uniform) and FD-digit against the 5,000 real digits.

Goals (exit status 1 when one is missed; reported only with ``--quick``), from the README: after
10 minutes the default has >= 85% confident digits (``--goal-confident``) and a class entropy
>= 2.2 nats (``--goal-entropy``), and it beats the recipe on both scores.

    OMP_NUM_THREADS=1 python benchmarks/bench_demo_quality.py --quick     # ~1 minute
    OMP_NUM_THREADS=1 python benchmarks/bench_demo_quality.py --minutes 10
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import exit_on_missed, load_report, machine_report
from bench_time_to_quality import (
    CONFIGS,
    Trainer,
    make_config,
    print_rows,
    real_digits,
    score,
    speed_table,
    train_interleaved,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps of the scored samples")
    parser.add_argument("--only", choices=CONFIGS)
    parser.add_argument("--slice", type=float, default=20.0, help="seconds of training per turn")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (both configs)")
    parser.add_argument("--goal-confident", type=float, default=0.85)
    parser.add_argument("--goal-entropy", type=float, default=2.2)
    parser.add_argument("--quick", action="store_true",
                        help="12 s of training each, 16 samples of 5 steps: checks the script runs")
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.n, args.steps, args.slice = 0.2, 16, 5, 3.0
    torch.set_num_threads(args.threads)
    machine_report(torch.device("cpu"))
    names = [c for c in CONFIGS if args.only in (None, c)]
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        trainers = [Trainer(name, make_config(name), root / name, [60 * args.minutes]) for name in names]
        print(f"\n### {args.minutes:g} min of training each, interleaved in {args.slice:g} s slices, "
              f"{torch.get_num_threads()} thread(s)\n", flush=True)
        train_interleaved(trainers, args.slice)
        print(f"\n{load_report('after training')}")
        speeds = speed_table(trainers)
        real = real_digits()
        rows = [score(tr, snap, args.n, args.steps, real) for tr in trainers for snap in tr.snapshots]
    print(f"\n### Digit scores ({args.n} samples, DDIM {args.steps} steps)")
    print_rows(rows)
    print(f"\n{load_report('at the end')}")
    by = {r["config"]: r for r in rows}
    missed = []
    if "default" in by:
        d = by["default"]
        if d["confident"] < args.goal_confident:
            missed.append(f"default: {d['confident']:.3f} confident digits, goal >= {args.goal_confident}")
        if d["entropy"] < args.goal_entropy:
            missed.append(f"default: class entropy {d['entropy']:.3f}, goal >= {args.goal_entropy}")
        if "recipe" in by:
            r = by["recipe"]
            if d["confident"] < r["confident"] or d["entropy"] < r["entropy"]:
                missed.append(f"default ({d['confident']:.3f} confident, entropy {d['entropy']:.3f}) "
                              f"does not beat the recipe ({r['confident']:.3f}, {r['entropy']:.3f})")
        print(f"\nGoals after {args.minutes:g} min: default confident >= {args.goal_confident}, entropy >= "
              f"{args.goal_entropy}, better than the recipe on both: {'NOT met' if missed else 'met'}")
    if args.json:
        args.json.write_text(json.dumps({"speeds": speeds, "rows": rows}, indent=2))
    exit_on_missed(missed, "GOAL MISSED: demo quality", enforce=not args.quick)


if __name__ == "__main__":
    main()
