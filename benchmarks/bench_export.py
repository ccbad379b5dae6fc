"""Trained runs exported with ``difflab export``, sampled by diffusers and by difflab from the same seeds.

For every run given (default: the trained runs under ``runs/`` of each kind that exist: pixel,
class-conditional, latent, text, latent + text, super-resolution) the run is exported to a temporary
folder, the folder is loaded with ``DiffusionPipeline.from_pretrained`` (``trust_remote_code`` for
the custom pipelines) and sampled with DDIM, and difflab's DDIM samples the run itself from the same
seeds (guided where the run is conditional). The table gives the pipeline written, the conversion
check's difference and the largest pixel difference between the two libraries' images on [0, 1].

Goal: every row within 1e-4. Exit status 1 when a row misses it, 2 when no run was found.

    python benchmarks/bench_export.py [RUN ...] [--n 4] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

GOAL = 1e-4
DEFAULT_RUNS = ("runs/uncond-mnist", "runs/bench-class", "runs/sprites-ldm", "runs/bench-latent/pixel",
                "runs/bench-latent/latent", "runs/bench-upscale/x2")


def kwargs_for(pipe, n: int):
    """(diffusers call kwargs, difflab sample kwargs) for a run of this kind."""
    import torch

    cfg = pipe.config
    if cfg.cond == "class":
        labels = [i % pipe.num_classes for i in range(n)]
        return {"class_labels": labels, "guidance_scale": 3.0}, {"class_labels": labels, "guidance": 3.0}
    if cfg.cond == "text":
        prompts = [f"a handwritten {i % 10}" for i in range(n)]
        return {"prompt": prompts, "guidance_scale": 3.0}, {"prompts": prompts, "guidance": 3.0}
    if cfg.cond == "lowres":
        c, h, w = pipe.lowres_condition.small_shape
        gen = torch.Generator().manual_seed(0)
        small = (torch.rand(n, c, h, w, generator=gen) * 255).round() / 127.5 - 1
        return {"image": small}, {"lowres": small}
    return {"batch_size": n}, {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    runs = args.runs or [Path(r) for r in DEFAULT_RUNS if (Path(r) / "config.json").is_file()]
    if not runs:
        print("no trained runs found; give run folders", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="bench_export."))
    os.environ.setdefault("HF_MODULES_CACHE", str(tmp / "modules"))  # before diffusers is imported
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as dlog

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import difflab
    from bench_common import exit_on_missed, load_report, machine_report
    from difflab.interop.export import export_run

    machine_report(torch.device("cpu"))
    dlog.set_verbosity_error()
    torch.set_grad_enabled(False)
    rows, worst = [], 0.0
    for run in runs:
        t0 = time.perf_counter()
        out = tmp / run.name
        report = export_run(run, out)
        pipe = difflab.load(run, device="cpu")
        theirs_kw, ours_kw = kwargs_for(pipe, args.n)
        ref = DiffusionPipeline.from_pretrained(out, trust_remote_code=report.needs_trust_remote_code)
        ref.set_progress_bar_config(disable=True)
        gens = [torch.Generator().manual_seed(i) for i in range(args.n)]
        extra = {} if report.needs_trust_remote_code else {"use_clipped_model_output": True}
        theirs = ref(generator=gens, num_inference_steps=args.steps, output_type="np", **extra,
                     **theirs_kw).images
        ours = pipe.sample(args.n, sampler="ddim", steps=args.steps, eta=0.0, seed=0, **ours_kw)
        ours = ((ours + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()
        diff = float(np.abs(theirs - ours).max())
        worst = max(worst, diff)
        kind = pipe.config.cond + (" latent" if pipe.config.latent else "")
        rows.append((str(run), kind, report.pipeline_class, f"{report.max_difference:.1e}", f"{diff:.1e}",
                     f"{time.perf_counter() - t0:.0f}"))
    head = ("run", "cond", "pipeline", "conversion check", f"max diff. to diffusers (DDIM-{args.steps})", "s")
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"goal: every row within {GOAL:g} (worst {worst:.1e})")
    print(load_report("at the end"))
    exit_on_missed([f"{r[0]}: {r[4]}" for r in rows if float(r[4]) > GOAL], "diffusers' images differ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
