"""Where a training step of the default recipe goes: difflab's loop, phase by phase.

Runs :class:`difflab.train.loop.Trainer` on the embedded MNIST and times each phase of its step
(batch gathering, forward + loss, loss read-back, backward, gradient clipping, optimizer + LR
schedule, EMA, the after-step bookkeeping: logging, checkpoint and grid checks) at each batch size
in ``--batches``, the batch sizes interleaved in rounds so they see the same load. The "overhead"
is everything but forward, backward and the optimizer update: what the loop adds to a bare step.

Goal (exit status 1 when missed; reported only with ``--quick``): the loop's overhead is at most
``--goal-overhead`` (10%) of the step at every batch size.

    python benchmarks/bench_loop_phases.py                  # ~1 minute
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from difflab.train.loop import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import exit_on_missed, load_report, machine_report

PHASES = ("data", "forward+loss", "read-back", "backward", "grad-clip", "optimizer", "ema", "after-step")
CORE = ("forward+loss", "backward", "optimizer")


def timed_step(tr: Trainer, times: dict[str, list[float]]) -> None:
    """One :meth:`Trainer.train_step` + :meth:`Trainer.after_step`, phase by phase (the same
    calls in the same order; keep in step with ``Trainer.train_step``)."""
    marks = [time.perf_counter()]

    def mark() -> None:
        marks.append(time.perf_counter())

    flips = tr.batcher.generator()
    indices = tr.batcher.next_indices()
    x0, labels = tr.data.batch(indices, generator=flips, device=tr.device)
    mark()
    loss = tr.loss(x0, labels, indices)
    mark()
    tr.pending.append((tr.step + 1, loss.detach()))
    tr.read_losses()
    mark()
    tr.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    mark()
    nn.utils.clip_grad_norm_(tr.net.parameters(), tr.cfg.grad_clip)
    mark()
    tr.optimizer.step()
    tr.scheduler.step()
    mark()
    tr.ema.update(tr.net)
    tr.step += 1
    mark()
    tr.after_step()
    mark()
    for name, a, b in zip(PHASES, marks[:-1], marks[1:], strict=True):
        times[name].append(b - a)


def main() -> None:
    from difflab.train import TrainConfig
    from difflab.train.loop import prepare_data

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--goal-overhead", type=float, default=0.10)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3 steps")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps = 2, 3
    torch.set_num_threads(args.threads)
    machine_report(torch.device("cpu"))
    times: dict[int, dict[str, list[float]]] = {b: {p: [] for p in PHASES} for b in args.batches}
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {}
        for b in args.batches:
            cfg, data = prepare_data(TrainConfig(batch_size=b), log=lambda _: None)
            tr = Trainer(cfg, data, Path(tmp) / str(b), torch.device("cpu"), log=lambda _: None)
            tr.out.mkdir(parents=True)
            trainers[b] = tr
        for tr in trainers.values():
            with tr.outputs(progress=False):
                for _ in range(3):  # warm-up
                    timed_step(tr, {p: [] for p in PHASES})
        for _ in range(args.rounds):
            for b, tr in trainers.items():
                with tr.outputs(progress=False):
                    per_round = {p: [] for p in PHASES}
                    for _ in range(args.steps):
                        timed_step(tr, per_round)
                for p in PHASES:
                    times[b][p].append(sum(per_round[p]) / args.steps)
    print(f"\n### One step of the default recipe in difflab's loop, ms (median of {args.rounds} rounds of "
          f"{args.steps} steps, {torch.get_num_threads()} threads)\n")
    print("| phase | " + " | ".join(f"batch {b}" for b in args.batches) + " |")
    print("|---|" + "---|" * len(args.batches))
    med = {b: {p: statistics.median(times[b][p]) * 1e3 for p in PHASES} for b in args.batches}
    for p in PHASES:
        print(f"| {p} | " + " | ".join(f"{med[b][p]:.2f}" for b in args.batches) + " |")
    missed = []
    totals, shares = [], []
    for b in args.batches:
        total = sum(med[b].values())
        overhead = 1 - sum(med[b][p] for p in CORE) / total
        totals.append(f"{total:.1f} ({b / total * 1e3:.0f} img/s)")
        shares.append(f"{overhead:.1%}")
        if overhead > args.goal_overhead:
            missed.append(f"batch {b}: loop overhead {overhead:.1%} > {args.goal_overhead:.0%}")
    print("| **step (images/s)** | " + " | ".join(totals) + " |")
    print("| **loop overhead** | " + " | ".join(shares) + " |")
    print(f"\n{load_report('at the end')}")
    exit_on_missed(missed, "GOAL MISSED: loop overhead", enforce=not args.quick)


if __name__ == "__main__":
    main()
