"""Soak test: SIGKILL a tiny training run N times at random points and check that nothing is lost.

Each round starts (or resumes) the run of ``tests/kill_harness.py`` and kills it with SIGKILL:
one round in three inside an atomic write (a checkpoint, the EMA weights or config.json; the
temporary file whole or cut in half), the others after a random delay. After every kill the run
folder must hold only whole files and, once a checkpoint was written, a loadable one; the final
resume must end with the weights of an uninterrupted run, bit for bit, and no temporary file.
Prints the counts and exits 1 on any failure.

    python benchmarks/soak_kill.py --kills 40 [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from tests import kill_harness as kh  # noqa: E402

STEPS = 48  # a longer run than the test's, so random kills land at many steps
WRITES = ("step_{:07d}.pt", "model.safetensors", "config.json")


def soak(kills: int, seed: int, root: Path) -> tuple[Counter[str], list[str]]:
    rng = random.Random(seed)
    data = kh.make_data(root / "data")
    ref, run = root / "ref", root / "run"
    kh.run_to_end(data, ref, resume=False, steps=STEPS)
    counts: Counter[str] = Counter()
    failures: list[str] = []
    had_checkpoint = False
    history: list[str] = []  # the kills since the last resume to the end, for a failure's report
    round_no = 0
    while counts["kills"] < kills:
        round_no += 1
        done = [s for s, _ in kh_list(run)]
        last = max(done, default=0)
        pause = None
        if round_no % 3 == 0 and last + 4 <= STEPS:
            kind = rng.choice(WRITES)
            if kind.startswith("step_"):
                name, k = kind.format(last + 4 * rng.randint(1, max(1, (STEPS - last) // 4))), 1
            elif kind == "model.safetensors":
                name, k = kind, rng.randint(1, max(1, (STEPS - last) // 4))
            else:
                name, k = kind, 1
            pause = (name, k, rng.random() < 0.5)
        session = kh.start(data, run, resume=(run / "config.json").is_file(), pause=pause, steps=STEPS)
        if pause is not None:
            if session.wait_for(kh.PAUSED):
                counts["mid-write kills" + (" (temp cut in half)" if pause[2] else "")] += 1
            else:
                counts["runs that ended before the pause"] += 1
        else:
            session.wait_for("wrote.config.json.1")
            delay = rng.uniform(0.0, 2.0)
            session.process.join(delay)
        if session.kill():
            counts["kills"] += 1
            if pause is None:
                counts["random-time kills"] += 1
        else:
            if session.process.exitcode != 0:
                failures.append(f"round {round_no} ({pause or 'random'}): the run exited with "
                                f"{session.process.exitcode}")
            counts["runs that finished before the kill"] += 1
            shutil.rmtree(run, ignore_errors=True)  # start over: a finished run has nothing left to kill
            had_checkpoint = False
            continue
        marks = sorted(p.name for p in session.marks.iterdir())
        history.append(f"{pause or f'random after {delay:.2f} s'} from step {last}: wrote {', '.join(marks)}")
        had_checkpoint = had_checkpoint or bool(kh_list(run))
        problems = kh.check_run_folder(run, had_checkpoint)
        if problems:
            failures.append(f"kill {counts['kills']} ({pause or 'random'}): {'; '.join(problems)}")
        shutil.rmtree(session.marks, ignore_errors=True)
        if counts["kills"] % 10 == 0 or counts["kills"] == kills:
            counts["resumes to the end"] += 1
            try:
                kh.run_to_end(data, run, resume=True, steps=STEPS)
            except RuntimeError as err:
                failures.append(f"after kill {counts['kills']}: {err}")
                shutil.rmtree(run)
                continue
            diff = kh.same_weights(ref, run)
            if diff:
                failures.append(f"after kill {counts['kills']}: weights differ from the uninterrupted run "
                                f"({', '.join(diff[:3])}); the kills: " + " | ".join(history))
            if kh.temp_files(run):
                failures.append(f"after kill {counts['kills']}: temporary files left: {kh.temp_files(run)}")
            shutil.rmtree(run)
            had_checkpoint = False
            history.clear()
    return counts, failures


def kh_list(run: Path) -> list[tuple[int, Path]]:
    from difflab.train.checkpoint import list_checkpoints

    return list_checkpoints(run / "checkpoints")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import torch

    from bench_common import load_report, machine_report

    machine_report(torch.device("cpu"))
    root = Path(tempfile.mkdtemp(prefix="difflab-soak-"))
    t0 = time.perf_counter()
    try:
        counts, failures = soak(args.kills, args.seed, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{counts['kills']} SIGKILLs in {time.perf_counter() - t0:.0f} s ({STEPS}-step runs)\n")
    print("| what | count |\n|---|---|")
    for key, n in sorted(counts.items()):
        print(f"| {key} | {n} |")
    print(f"| failures | {len(failures)} |")
    for line in failures:
        print("FAIL", line)
    print(load_report("at the end"))
    print(f"goal: no half-written file, always a checkpoint, bit-identical resumes: "
          f"{'met' if not failures else 'MISSED'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
