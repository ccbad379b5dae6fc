"""Editing without retraining, measured: DDIM inversion's reconstruction error against the number
of steps (plain DDIM inversion vs fixed-point iterations per step), and inpainting masked MNIST
digits with RePaint vs replace-known-region.

Inversion: ``--n`` real MNIST digits are inverted with ``difflab.edit.ddim_invert`` and
reconstructed with deterministic DDIM on the same grid (x_0 clipping off, as ``difflab edit
invert`` does); the error is the RMSE on the [-1, 1] scale, the largest error in 8-bit grey
levels, and the share of images that come back bit for bit after quantisation. The same table on
the Gaussian toy with its exact denoiser (tests/toy.py) separates the method's error from the
network's. Inpainting: ``--n-inpaint`` digits with a mask (the bottom half, or the centre 14x14
square) are inpainted by the unconditional run; the pre-trained MNIST classifier's accuracy on
the results against the original labels, and FD-digit against the 5,000 real digits. Rows: the
originals, the masked input (hole black), replace at ``--steps`` and at RePaint's NFE, RePaint
(``--steps``, j = 10, r = 10; Lugmayr et al. 2022).

Goals (exit status 1 when missed): fixed-point inversion (3 iterations) reconstructs with at most
a fifth of plain inversion's RMSE at 50 steps; RePaint's accuracy is at least replace's at the same
number of steps, on both masks.

    OMP_NUM_THREADS=1 python benchmarks/bench_edit.py --run runs/uncond-mnist
    OMP_NUM_THREADS=1 python benchmarks/bench_edit.py --run runs/uncond-mnist --quick   # ~1 minute
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_common import exit_on_missed, load_report, machine_report

STEPS = (10, 25, 50, 100)
STEPS_HELD = 1000  # the first 1,000 shuffled digits are for inversion, the rest for inpainting
METHODS = (("plain DDIM", "ddim", 0), ("fixed-point x1", "fixed-point", 1),
           ("fixed-point x3", "fixed-point", 3))


def masks(size: int = 28) -> dict[str, torch.Tensor]:
    bottom = torch.zeros(1, 1, size, size, dtype=torch.bool)
    bottom[..., size // 2 :, :] = True
    centre = torch.zeros(1, 1, size, size, dtype=torch.bool)
    lo = size // 4
    centre[..., lo : lo + size // 2, lo : lo + size // 2] = True
    return {"bottom half": bottom, "centre 14x14": centre}


def inversion_rows(model: Any, images: torch.Tensor, schedule: Any, prediction: str,
                   steps_list: tuple[int, ...], cond: Any = None) -> list[dict[str, Any]]:
    from difflab.edit import ddim_invert, reconstruct
    from difflab.viz import to_uint8

    rows = []
    for steps in steps_list:
        for label, method, iterations in METHODS:
            t0 = time.perf_counter()
            z, nfe = ddim_invert(model, images, schedule=schedule, prediction=prediction, steps=steps,
                                 method=method, iterations=max(iterations, 1), cond=cond, return_nfe=True)
            rec = reconstruct(model, z, schedule=schedule, prediction=prediction, steps=steps, cond=cond)
            seconds = time.perf_counter() - t0
            err = (rec - images).double()
            levels = abs(to_uint8(rec).astype(int) - to_uint8(images).astype(int))
            rows.append({"steps": steps, "method": label, "nfe": nfe + steps,
                         "rmse": float(err.pow(2).mean().sqrt()), "max_levels": int(levels.max()),
                         "exact_share": float((levels.reshape(len(images), -1).max(1) == 0).mean()),
                         "seconds": seconds})
    return rows


def print_inversion(rows: list[dict[str, Any]], title: str) -> None:
    print(f"\n{title}\n")
    print("| steps | inversion | NFE (invert + reconstruct) | RMSE | largest error (grey levels) | "
          "bit-exact images | s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['steps']} | {r['method']} | {r['nfe']} | {r['rmse']:.2e} | {r['max_levels']} | "
              f"{r['exact_share']:.0%} | {r['seconds']:.1f} |", flush=True)


def inpaint_rows(pipe: Any, images: torch.Tensor, labels: torch.Tensor, real_stats: Any, steps: int,
                 batch: int) -> list[dict[str, Any]]:
    from difflab.edit import inpaint, repaint_levels
    from difflab.eval.digit_classifier import digit_features, digit_probs
    from difflab.eval.scores import feature_statistics, frechet_distance
    from difflab.noise import generators_from_seeds

    repaint_nfe = sum(b < a for a, b in zip(repaint_levels(steps), repaint_levels(steps)[1:], strict=False))
    settings = [("original", None, 0), ("masked input (hole black)", None, 0),
                (f"replace, {steps} steps", "replace", steps),
                (f"replace, {repaint_nfe} steps (RePaint's NFE)", "replace", repaint_nfe),
                (f"RePaint, {steps} steps, j=10, r=10", "repaint", steps)]
    rows = []
    for mask_name, mask in masks(images.shape[-1]).items():
        for label, method, n_steps in settings:
            t0 = time.perf_counter()
            if label == "original":
                out = images
            elif method is None:
                out = torch.where(mask, torch.full_like(images, -1.0), images)
            else:
                parts = []
                for start in range(0, len(images), batch):
                    x = images[start : start + batch]
                    parts.append(inpaint(pipe.net, x, mask, schedule=pipe.schedule,
                                         prediction=pipe.config.prediction, method=method, steps=n_steps,
                                         clip_x0=pipe.config.sample_clip,
                                         generator=generators_from_seeds(range(start, start + len(x)))))
                out = torch.cat(parts).float().clamp(-1, 1)
            seconds = time.perf_counter() - t0
            probs = digit_probs(out)
            fd = frechet_distance(*feature_statistics(digit_features(out)), *real_stats)
            rows.append({"mask": mask_name, "method": label, "kind": method, "steps": n_steps,
                         "accuracy": float((probs.argmax(1) == labels).double().mean()), "fd_digit": fd,
                         "seconds": seconds})
            r = rows[-1]
            print(f"| {mask_name} | {label} | {r['accuracy']:.1%} | {fd:.1f} | {seconds:.0f} |", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/uncond-mnist"),
                        help="an unconditional MNIST run")
    parser.add_argument("--n", type=int, default=64, help="digits inverted")
    parser.add_argument("--n-inpaint", type=int, default=200, help="digits inpainted per mask")
    parser.add_argument("--steps", type=int, default=50, help="inpainting steps")
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--only", choices=("inversion", "inpaint"), help="run one of the two parts")
    parser.add_argument("--quick", action="store_true", help="few images and steps: checks the script runs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    machine_report(torch.device("cpu"))
    from tests.toy import MU, S, exact_eps_model

    from difflab import NoiseSchedule
    from difflab.data import DataConfig, load_dataset
    from difflab.eval.digit_classifier import digit_features
    from difflab.eval.scores import feature_statistics
    from difflab.pipeline import load

    steps_list = STEPS
    if args.quick:
        args.n, args.n_inpaint, args.steps, steps_list = 8, 40, 20, (10, 25)
    torch.manual_seed(0)
    pipe = load(args.run, "cpu")
    real = load_dataset(DataConfig(source="mnist"))
    all_images, all_labels = real.batch(torch.arange(len(real)))
    all_labels = torch.as_tensor(all_labels)
    order = torch.randperm(len(real), generator=torch.Generator().manual_seed(0))
    print(f"\nrun {args.run} ({pipe.config.prediction} prediction, {pipe.config.schedule} schedule, T = "
          f"{pipe.schedule.T}); MNIST digits from the 5,000 embedded ones (the run's training set), shuffled "
          "with seed 0")

    toy_rows: list[dict[str, Any]] = []
    inv_rows: list[dict[str, Any]] = []
    inp_rows: list[dict[str, Any]] = []
    if args.only != "inpaint":
        sched = NoiseSchedule.from_name(pipe.config.schedule, pipe.schedule.T)
        toy = (MU + S * torch.randn(args.n, 1, 28, 28, generator=torch.Generator().manual_seed(0))).double()
        toy_rows = inversion_rows(exact_eps_model(sched), toy, sched, "eps", steps_list)
        print_inversion(toy_rows, f"Gaussian toy (exact denoiser, float64), {args.n} images of 28x28")
        images = all_images[order[: args.n]]
        inv_rows = inversion_rows(pipe.net, images, pipe.schedule, pipe.config.prediction, steps_list)
        print_inversion(inv_rows, f"{args.run}: {args.n} MNIST digits, float32")

    if args.only != "inversion":
        inp = order[STEPS_HELD : STEPS_HELD + args.n_inpaint]  # never the digits inverted above
        real_stats = feature_statistics(digit_features(all_images))
        print(f"\nInpainting {args.n_inpaint} digits per mask with {args.run} (unconditional; DDPM steps, "
              "x_0 clipped as the run samples); accuracy = the MNIST classifier's label equals the "
              "original's\n")
        print("| mask | method | accuracy | FD-digit | s |\n|---|---|---|---|---|")
        inp_rows = inpaint_rows(pipe, all_images[inp], all_labels[inp], real_stats, args.steps, args.batch)
    print(load_report("at the end"))

    if args.json:
        args.json.write_text(json.dumps({"toy": toy_rows, "inversion": inv_rows, "inpaint": inp_rows},
                                        indent=2))
    missed = []
    at = 50 if 50 in steps_list else steps_list[-1]
    plain = next((r for r in inv_rows if r["steps"] == at and r["method"] == "plain DDIM"), None)
    fixed = next((r for r in inv_rows if r["steps"] == at and r["method"] == "fixed-point x3"), None)
    if plain is not None and fixed is not None and fixed["rmse"] > plain["rmse"] / 5:
        missed.append(f"fixed-point x3 RMSE {fixed['rmse']:.2e} > plain {plain['rmse']:.2e} / 5 at {at} "
                      "steps")
    for mask_name in masks() if inp_rows else ():
        rep = next(r for r in inp_rows if r["mask"] == mask_name and r["kind"] == "repaint")
        rpl = next(r for r in inp_rows if r["mask"] == mask_name and r["kind"] == "replace"
                   and r["steps"] == args.steps)
        if rep["accuracy"] < rpl["accuracy"]:
            missed.append(f"{mask_name}: RePaint accuracy {rep['accuracy']:.1%} < replace "
                          f"{rpl['accuracy']:.1%}")
    exit_on_missed(missed, "editing goals missed", enforce=not args.quick)


if __name__ == "__main__":
    main()
