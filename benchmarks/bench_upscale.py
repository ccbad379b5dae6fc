"""Super-resolution (SR3, ``--cond lowres``) against bicubic enlargement on held-out MNIST digits.

For each factor a run is trained (or reused) on 4,500 of the embedded 5,000 digits (``--limit
4500``: a fixed shuffle) for ``--train-steps`` steps of the default recipe (a fixed count, not a
time budget, so a busy machine changes the time, not the result); the other 500 are shrunk by
the factor (antialiased bicubic, 8-bit, as training does) and enlarged back by bicubic
interpolation and by the run.
Scores against the original 500: PSNR and SSIM (pixel fidelity), FD-digit (the Frechet distance
on the digit classifier's features: do the outputs look like real digits?), the classifier's
accuracy on the outputs against the true labels (is it still the same digit?) and consistency
(the output shrunk again vs the input, dB). SR3 (Saharia et al. 2021, Sec. 4.2) finds that a
sampled upscaler may lose PSNR/SSIM to regression while winning on realism; the table shows
both kinds of score against bicubic.

Goals (exit status 1 when missed): at every factor the run's FD-digit is below bicubic's and its
accuracy at least bicubic's.

    OMP_NUM_THREADS=2 python benchmarks/bench_upscale.py --factors 2 4 --train-steps 1000
    python benchmarks/bench_upscale.py --quick        # 30-step runs: plumbing only, goals not enforced
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_common import exit_on_missed, load_report, machine_report

TRAIN = 4500  # digits the runs train on; the rest of the 5,000 are held out


def held_out() -> tuple[torch.Tensor, torch.Tensor]:
    """The digits ``--limit 4500`` leaves out (the same seeded shuffle), as [-1, 1] and labels."""
    from difflab.data import DataConfig, load_dataset

    data = load_dataset(DataConfig())
    rest = np.sort(np.random.default_rng(0).permutation(len(data))[TRAIN:])
    x, labels = data.batch(torch.as_tensor(rest), flip=False)
    assert labels is not None
    return x, labels


def train_run(out: Path, factor: int, steps: int) -> None:
    from difflab.data import DataConfig
    from difflab.train import TrainConfig, train

    if (out / "model.safetensors").is_file():
        print(f"# reusing {out}", flush=True)
        return
    cfg = TrainConfig(data=DataConfig(limit=TRAIN), cond="lowres", lowres_factor=factor, cond_drop=0.0,
                      sample_guidance=1.0, steps=steps)
    result = train(cfg, out, progress=False)
    print(f"# trained {out}: {result.steps} steps in {result.seconds:.0f} s", flush=True)


def scores(images: torch.Tensor, originals: torch.Tensor, labels: torch.Tensor, small: torch.Tensor,
           factor: int) -> dict[str, float]:
    from difflab.edit import consistency
    from difflab.eval.digit_classifier import digit_probs, fd_digit
    from difflab.eval.reconstruction import psnr, ssim

    return {
        "PSNR dB": psnr(images, originals),
        "SSIM": ssim(images, originals),
        "FD-digit": fd_digit(images, originals),
        "accuracy %": 100 * float((digit_probs(images).argmax(1) == labels).float().mean()),
        "consistency dB": float(consistency(images, small, factor).mean()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--factors", type=int, nargs="+", default=[2, 4])
    p.add_argument("--train-steps", type=int, default=1000, help="training steps per factor")
    p.add_argument("--runs", type=Path, default=Path("runs/bench-upscale"))
    p.add_argument("--n", type=int, default=500, help="held-out digits scored (at most 500)")
    p.add_argument("--sampler", default=None, help="the run's own (dpmpp-2m-sde, 10 steps) by default")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="30-step runs and 64 digits; goals not enforced")
    args = p.parse_args()
    from difflab.conditioning.lowres import shrink
    from difflab.edit import bicubic, upscale_run
    from difflab.pipeline import load

    torch.set_num_threads(max(1, torch.get_num_threads()))
    machine_report(torch.device("cpu"))
    originals, labels = held_out()
    n = 64 if args.quick else min(args.n, len(originals))
    originals, labels = originals[:n], labels[:n]
    rows: list[tuple[str, dict[str, Any]]] = []
    missed: list[str] = []
    for factor in args.factors:
        out = args.runs / (f"x{factor}-quick" if args.quick else f"x{factor}")
        train_run(out, factor, 30 if args.quick else args.train_steps)
        pipe = load(out, "cpu")
        small = shrink(originals, factor)
        t0 = time.perf_counter()
        ours = upscale_run(pipe, small, seed=0, sampler=args.sampler, steps=args.steps)
        seconds = time.perf_counter() - t0
        base = scores(bicubic(small, factor), originals, labels, small, factor)
        run = scores(ours, originals, labels, small, factor)
        run["images/s"] = n / seconds
        sampler = args.sampler or pipe.config.sample_sampler
        rows += [(f"x{factor} bicubic", base), (f"x{factor} difflab ({sampler})", run)]
        if run["FD-digit"] >= base["FD-digit"]:
            missed.append(f"x{factor}: FD-digit {run['FD-digit']:.1f} is not below bicubic's "
                          f"{base['FD-digit']:.1f}")
        if run["accuracy %"] < base["accuracy %"]:
            missed.append(f"x{factor}: accuracy {run['accuracy %']:.1f}% is below bicubic's "
                          f"{base['accuracy %']:.1f}%")
    cols = ["PSNR dB", "SSIM", "FD-digit", "accuracy %", "consistency dB", "images/s"]
    print(f"\n{n} held-out MNIST digits, shrunk and upscaled\n")
    print("| method | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for name, r in rows:
        print(f"| {name} | " + " | ".join(f"{r[c]:.3f}" if c == "SSIM" else
                                          (f"{r[c]:.1f}" if c in r else "-") for c in cols) + " |")
    print(load_report("at the end"))
    exit_on_missed(missed, "super-resolution goals missed", enforce=not args.quick)


if __name__ == "__main__":
    main()
