"""Prompt-directed image-to-image on text runs: "turn this 3 into an 8".

``--n`` real MNIST threes are edited by ``difflab.edit.img2img_run`` towards the prompt "a
handwritten 8" (classifier-free guidance ``--guidance``, DDIM ``--steps``) at several strengths,
with each text run given (a pixel run, and a latent run whose img2img works on the image's
latent). The MNIST classifier scores the results: the share read as 8 (the edit took), the share
still read as 3, and the RMSE to the input on [-1, 1] (how much of the image changed).

Goal (exit status 1 when missed): on every run, some strength <= 0.8 turns at least 80% of the
threes into eights.

    OMP_NUM_THREADS=2 python benchmarks/bench_edit_prompt.py \
        --runs runs/bench-latent/pixel runs/bench-latent/latent
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_common import exit_on_missed, load_report, machine_report

SOURCE, TARGET = 3, 8


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, nargs="+", required=True, help="text-conditional MNIST runs")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--strengths", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.8, 0.9])
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--quick", action="store_true", help="8 digits, two strengths; goal not enforced")
    args = p.parse_args()
    if args.quick:
        args.n, args.strengths = 8, [0.5, 0.9]
    machine_report(torch.device("cpu"))
    import difflab
    from difflab.data import DataConfig, load_dataset
    from difflab.edit import img2img_run
    from difflab.eval.digit_classifier import digit_probs

    data = load_dataset(DataConfig(source="mnist"))
    assert data.labels is not None
    threes = torch.nonzero(data.labels == SOURCE).flatten()[: args.n]
    images, _ = data.batch(threes, flip=False)
    print(f"\n{len(images)} MNIST threes -> prompt 'a handwritten {TARGET}', DDIM {args.steps} steps, "
          f"guidance {args.guidance:g}\n")
    print("| run | strength | steps run | read as 8 | still read as 3 | RMSE to the input |")
    print("|---|---:|---:|---:|---:|---:|")
    missed = []
    for run in args.runs:
        pipe = difflab.load(run, "cpu")
        kind = "latent" if pipe.latent is not None else "pixel"
        best = 0.0
        for strength in args.strengths:
            out, plan = img2img_run(pipe, images, strength, sampler="ddim", steps=args.steps, eta=0.0,
                                    prompts=f"a handwritten {TARGET}", guidance=args.guidance)
            read = digit_probs(out).argmax(1)
            took, kept = float((read == TARGET).double().mean()), float((read == SOURCE).double().mean())
            rmse = float((out - images).double().pow(2).mean().sqrt())
            if strength <= 0.8:
                best = max(best, took)
            print(f"| {run.name} ({kind}) | {strength:g} | {plan.steps_run} | {100 * took:.0f}% | "
                  f"{100 * kept:.0f}% | {rmse:.3f} |", flush=True)
        if best < 0.8:
            missed.append(f"{run}: at most {100 * best:.0f}% of the threes become eights at strength <= 0.8")
    print(f"\n{load_report('at the end')}")
    exit_on_missed(missed, "prompt-directed img2img goal missed", enforce=not args.quick)


if __name__ == "__main__":
    main()
