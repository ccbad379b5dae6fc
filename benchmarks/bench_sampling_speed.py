"""Sampling speed: images/s at 10, 20 and 50 NFE, difflab's ``sample`` against diffusers' pipelines
on the same network.

The network is seed 003's ``UNet2DModel`` (1.7M parameters) at 32x32, randomly initialised, or the
EMA weights of a trained difflab run with a ``diffusers-unet`` net (``--run RUN``). difflab runs
it through its ``diffusers-unet`` wrapper (``difflab.sample`` with ddim, dpmpp-2m, unipc, euler);
diffusers runs the wrapped ``UNet2DModel`` itself with the matching scheduler built from the same
betas (``trained_betas``, trailing spacing, the run's prediction type):

- ddim: ``DDIMPipeline(unet, DDIMScheduler(clip_sample=False))(eta=0)``;
- dpmpp-2m: ``DDPMPipeline(unet, DPMSolverMultistepScheduler())`` (DDIMPipeline would convert the
  scheduler to DDIM; DDPMPipeline keeps it and its loop is the generic one);
- unipc, euler: DDPMPipeline's loop written out, plus ``init_noise_sigma`` and
  ``scale_model_input`` (Euler needs them; ``UniPCMultistepScheduler.step`` takes no generator,
  so DDPMPipeline cannot call it).

Both sides draw the starting noise, sample ``--batch`` images and return float images in [0, 1]
as numpy (``output_type="np"``). As a check that both compute the same thing, the relative max
difference of their final samples (2 images, the smallest NFE, before the clamp) is printed.
Also difflab's default 0.67M UNet (28x28, random init) alone: the demo's real sampling speed.

Every row of both tables (each sampler in ``--samplers`` at each NFE in ``--nfe`` and each batch
in ``--batches``) comes from one run: after a warm-up, ``--repeats`` rounds, each over all rows in
a rotated order, the two sides of a row in alternating order (difflab, diffusers, then diffusers,
difflab, ...); images/s is the median; ratio = difflab / diffusers (median of the pairs). Exit
status 1 with a loud message when difflab is slower than diffusers by more than ``--tolerance``
(5%) on any row (the goal: difflab's samplers cost nothing over diffusers'). With ``--compile``,
afterwards, the speed-up of ``torch.compile`` on each network (difflab ddim).

    OMP_NUM_THREADS=1 python benchmarks/bench_sampling_speed.py --quick     # ~1 minute
    OMP_NUM_THREADS=1 python benchmarks/bench_sampling_speed.py --batches 16 64 --nfe 10 --repeats 3
    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_sampling_speed.py --run runs/seed003 --compile
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from difflab import NoiseSchedule, sample
from difflab.nets import build_net, default_net_config, param_count
from difflab.nets.diffusers_nets import DiffusersUNet

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import exit_on_missed, load_report, machine_line, machine_report, recipe_net_config, sync

SAMPLERS = ("ddim", "dpmpp-2m", "unipc", "euler")
PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


def to_numpy(x: torch.Tensor) -> np.ndarray:
    """What ``output_type="np"`` returns: [B, H, W, C] floats in [0, 1]."""
    return (x / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy()


# ---- the two sides -------------------------------------------------------------------------------
def diffusers_scheduler(name: str, schedule: NoiseSchedule, prediction: str) -> Any:
    import diffusers as d

    kw = {"num_train_timesteps": schedule.T, "trained_betas": schedule.betas.double().numpy(),
          "prediction_type": PREDICTION_TYPES[prediction], "timestep_spacing": "trailing"}
    if name == "ddim":
        return d.DDIMScheduler(clip_sample=False, **kw)
    if name == "dpmpp-2m":
        return d.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, **kw)
    if name == "unipc":
        return d.UniPCMultistepScheduler(**kw)
    return d.EulerDiscreteScheduler(**kw)


def pipeline_loop(unet: nn.Module, scheduler: Any, batch: int, steps: int, generator: torch.Generator,
                  raw: bool = False) -> Any:
    """``DDPMPipeline.__call__`` written out, with the two lines Euler-type schedulers need
    (``raw``: return the final sample itself, before the conversion to [0, 1])."""
    from diffusers.utils.torch_utils import randn_tensor

    cfg = unet.config
    shape = (batch, cfg.in_channels, cfg.sample_size, cfg.sample_size)
    device = next(unet.parameters()).device
    image = randn_tensor(shape, generator=generator, device=device, dtype=unet.dtype)
    scheduler.set_timesteps(steps)
    image = image * scheduler.init_noise_sigma
    takes_gen = "generator" in inspect.signature(scheduler.step).parameters
    with torch.no_grad():
        for t in scheduler.timesteps:
            model_output = unet(scheduler.scale_model_input(image, t), t).sample
            kw = {"generator": generator} if takes_gen else {}
            image = scheduler.step(model_output, t, image, **kw).prev_sample
    if raw:
        return image
    return (image / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy()


def diffusers_runner(name: str, unet: nn.Module, schedule: NoiseSchedule, prediction: str, batch: int
                     ) -> tuple[str, Callable[[int, int], np.ndarray]]:
    """(how it runs, run(steps, seed) -> images) for diffusers' side."""
    from diffusers import DDIMPipeline, DDPMPipeline

    scheduler = diffusers_scheduler(name, schedule, prediction)
    if name in ("ddim", "dpmpp-2m"):
        pipe = (DDIMPipeline if name == "ddim" else DDPMPipeline)(unet=unet, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        extra = {"eta": 0.0} if name == "ddim" else {}

        def run(steps: int, seed: int) -> np.ndarray:
            gen = torch.Generator().manual_seed(seed)
            return pipe(batch_size=batch, generator=gen, num_inference_steps=steps, output_type="np",
                        **extra).images

        return type(pipe).__name__, run

    def run_loop(steps: int, seed: int) -> np.ndarray:
        return pipeline_loop(unet, scheduler, batch, steps, torch.Generator().manual_seed(seed))

    return "DDPMPipeline loop + scale_model_input", run_loop


def difflab_runner(name: str, net: nn.Module, schedule: NoiseSchedule, prediction: str, batch: int,
                   shape: tuple[int, int, int], device: torch.device) -> Callable[[int, int], np.ndarray]:
    def run(steps: int, seed: int) -> np.ndarray:
        x_T = torch.randn((batch, *shape), generator=torch.Generator().manual_seed(seed)).to(device)
        x = sample(net, x_T, schedule=schedule, sampler=name, steps=steps, prediction=prediction)
        return to_numpy(x)

    return run


def relative_difference(name: str, net: DiffusersUNet, schedule: NoiseSchedule, prediction: str,
                        steps: int) -> float:
    """max |difflab - diffusers| / max |diffusers| of the final samples (before the clamp to
    [0, 1], which saturates a random network's samples) for 2 images from the same noise."""
    size = int(net.image_size)
    x_T = torch.randn((2, net.in_channels, size, size), generator=torch.Generator().manual_seed(0))
    device = next(net.parameters()).device
    ours = sample(net, x_T.to(device), schedule=schedule, sampler=name, steps=steps, prediction=prediction)
    scheduler = diffusers_scheduler(name, schedule, prediction)
    theirs = pipeline_loop(net.inner, scheduler, 2, steps, torch.Generator().manual_seed(0), raw=True)
    return float((ours - theirs).abs().max() / theirs.abs().max())


def timed(run: Callable[[int, int], np.ndarray], steps: int, device: torch.device
          ) -> tuple[float, np.ndarray]:
    sync(device)
    t0 = time.perf_counter()
    out = run(steps, 0)
    sync(device)
    return time.perf_counter() - t0, out


# ---- sections ------------------------------------------------------------------------------------
def load_network(args: argparse.Namespace, device: torch.device
                 ) -> tuple[DiffusersUNet, NoiseSchedule, str, str]:
    """(difflab's diffusers-unet net, its schedule, prediction, description)."""
    if args.run:
        from difflab.pipeline import Pipeline

        pipe = Pipeline.load(args.run, str(device))
        if not isinstance(pipe.net, DiffusersUNet):
            raise SystemExit(f"--run {args.run}: its net is {type(pipe.net).__name__}; this benchmark "
                             "needs a diffusers-unet run (e.g. difflab train --preset seed003)")
        return pipe.net, pipe.schedule, pipe.config.prediction, f"trained run {args.run}"
    torch.manual_seed(0)
    net = build_net(recipe_net_config(args.image_size)).to(device).eval()
    assert isinstance(net, DiffusersUNet)
    return net, NoiseSchedule.from_name("cosine", 1000), "eps", "random init"


def demo_net(device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    net = build_net(default_net_config("unet", in_channels=1, image_size=28)).to(device).eval()
    with torch.no_grad():  # the zero-initialised output conv would make every prediction 0
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return net


@dataclass
class Cell:
    """One row: a sampler at one NFE and batch, run by each side (``runners``: name -> run)."""

    table: str  # "compare" (difflab vs diffusers on seed 003's UNet2DModel) or "demo" (difflab's UNet)
    sampler: str
    nfe: int
    batch: int
    runners: dict[str, Callable[[int, int], np.ndarray]]
    how: str = ""
    check: float = float("nan")
    times: dict[str, list[float]] = field(default_factory=dict)


def make_cells(args: argparse.Namespace, device: torch.device) -> tuple[list[Cell], str]:
    net, schedule, prediction, where = load_network(args, device)
    size = net.image_size
    shape = (net.in_channels, size, size)
    demo = demo_net(device)
    cosine = NoiseSchedule.from_name("cosine", 1000)
    cells = []
    for batch in args.batches:
        for name in args.samplers:
            for nfe in args.nfe:
                if "compare" not in args.skip:
                    how, theirs = diffusers_runner(name, net.inner, schedule, prediction, batch)
                    ours = difflab_runner(name, net, schedule, prediction, batch, shape, device)
                    sides = {"difflab": ours, "diffusers": theirs}
                    cells.append(Cell("compare", name, nfe, batch, sides, how))
                if "demo" not in args.skip:
                    run = difflab_runner(name, demo, cosine, "v", batch, (1, 28, 28), device)
                    cells.append(Cell("demo", name, nfe, batch, {"difflab": run}))
    title = (f"seed 003's UNet2DModel ({param_count(net):,} params, {where}, {prediction} prediction, "
             f"{size}x{size}) and difflab's default UNet ({param_count(demo):,} params, random init, v "
             f"prediction, 28x28)")
    for name in args.samplers if "compare" not in args.skip else []:
        check = relative_difference(name, net, schedule, prediction, min(args.nfe))
        for cell in cells:
            if cell.table == "compare" and cell.sampler == name:
                cell.check = check
    return cells, title


def section_speed(args: argparse.Namespace, device: torch.device
                  ) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """Every cell of both tables in one run: after a warm-up of each runner, ``--repeats`` rounds,
    each round over all cells in a rotated order and, within a cell, the sides in alternating
    order, so every row sees the same machine."""
    cells, title = make_cells(args, device)
    print(f"\n### Sampling images/s: {title}; all rows interleaved in one run, median of {args.repeats} "
          f"rounds\n", flush=True)
    for cell in cells:  # warm-up: allocator, oneDNN primitives for this batch shape, lazy imports
        if cell.nfe == min(args.nfe):
            for run in cell.runners.values():
                timed(run, 2, device)
    for rnd in range(args.repeats):
        k = rnd * max(1, len(cells) // max(1, args.repeats))
        for i, cell in enumerate(cells[k:] + cells[:k]):
            sides = list(cell.runners)
            for side in sides if (rnd + i) % 2 == 0 else sides[::-1]:
                cell.times.setdefault(side, []).append(timed(cell.runners[side], cell.nfe, device)[0])
        print(f"  round {rnd + 1} of {args.repeats} done", flush=True)
    print(f"\n{load_report('after the timed rounds')}\n")
    out: dict[str, list[dict[str, Any]]] = {"compare": [], "demo": []}
    failures = []
    compare = [c for c in cells if c.table == "compare"]
    if compare:
        print("| sampler | NFE | batch | difflab images/s | diffusers images/s | ratio | diffusers path | "
              "check: rel. diff |")
        print("|---|---|---|---|---|---|---|---|")
    for cell in compare:
        t_ours, t_theirs = cell.times["difflab"], cell.times["diffusers"]
        ips_ours = cell.batch / statistics.median(t_ours)
        ips_theirs = cell.batch / statistics.median(t_theirs)
        ratio = statistics.median(b / a for a, b in zip(t_ours, t_theirs, strict=True))
        print(f"| {cell.sampler} | {cell.nfe} | {cell.batch} | {ips_ours:.2f} | {ips_theirs:.2f} | "
              f"{ratio:.3f} | {cell.how} | {cell.check:.1e} |")
        out["compare"].append({"sampler": cell.sampler, "nfe": cell.nfe, "batch": cell.batch,
                               "difflab_images_per_s": ips_ours, "diffusers_images_per_s": ips_theirs,
                               "ratio": ratio, "diffusers_path": cell.how,
                               "check_relative_difference": cell.check, "difflab_s": t_ours,
                               "diffusers_s": t_theirs})
        if ratio < 1 - args.tolerance:
            failures.append(f"{cell.sampler} at NFE {cell.nfe}, batch {cell.batch}: difflab {ips_ours:.2f} "
                            f"vs diffusers {ips_theirs:.2f} images/s ({ratio:.3f}x)")
    demo = [c for c in cells if c.table == "demo"]
    if demo:
        print("\ndifflab's default UNet, same rounds:\n")
        print("| sampler | NFE | batch | images/s |")
        print("|---|---|---|---|")
    for cell in demo:
        ips = cell.batch / statistics.median(cell.times["difflab"])
        print(f"| {cell.sampler} | {cell.nfe} | {cell.batch} | {ips:.1f} |")
        out["demo"].append({"sampler": cell.sampler, "nfe": cell.nfe, "batch": cell.batch,
                            "images_per_s": ips, "seconds": cell.times["difflab"]})
    return out, failures


def section_compile(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    nfe = args.compile_nfe
    print(f"\n### torch.compile for sampling (difflab ddim, NFE {nfe}, batch {args.batch}, default mode; "
          f"median of {args.repeats} interleaved repeats)\n", flush=True)
    print("| network | eager images/s | compiled images/s | speed-up | compile + first run s |")
    print("|---|---|---|---|---|")
    seed003, schedule, prediction, _ = load_network(args, device)
    nets = {"seed 003 UNet2DModel": (seed003, schedule, prediction),
            "difflab default UNet": (demo_net(device), NoiseSchedule.from_name("cosine", 1000), "v")}
    out = []
    for label, (net, sched, pred) in nets.items():
        size = int(net.image_size or 28)
        shape = (int(net.in_channels), size, size)
        eager = difflab_runner("ddim", net, sched, pred, args.batch, shape, device)
        compiled_net = torch.compile(net)
        compiled = difflab_runner("ddim", compiled_net, sched, pred, args.batch, shape, device)
        timed(eager, 2, device)
        compile_s = timed(compiled, 2, device)[0]
        t_e: list[float] = []
        t_c: list[float] = []
        for rep in range(args.repeats):
            pair = [(eager, t_e), (compiled, t_c)]
            for run, times in pair if rep % 2 == 0 else pair[::-1]:
                times.append(timed(run, nfe, device)[0])
        speedup = statistics.median(e / c for e, c in zip(t_e, t_c, strict=True))
        ips_e, ips_c = args.batch / statistics.median(t_e), args.batch / statistics.median(t_c)
        print(f"| {label} | {ips_e:.2f} | {ips_c:.2f} | {speedup:.2f}x | {compile_s:.1f} |", flush=True)
        out.append({"network": label, "eager_images_per_s": ips_e, "compiled_images_per_s": ips_c,
                    "speedup": speedup, "compile_s": compile_s})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings: checks the script runs")
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--batch", type=int, default=16, help="--compile's batch")
    parser.add_argument("--image-size", type=int, default=32, help="of the random-init UNet2DModel")
    parser.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--run", help="a trained difflab run with a diffusers-unet net")
    parser.add_argument("--skip", nargs="*", default=[], choices=("compare", "demo"))
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of each network")
    parser.add_argument("--compile-nfe", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.batch, args.batches, args.nfe, args.repeats, args.compile_nfe = 2, [2], [2, 3], 2, 2
    from difflab.device import resolve_device

    device = resolve_device(args.device)
    machine_report(device)
    results: dict[str, Any] = {"machine": machine_line(device)}
    failures: list[str] = []
    if not {"compare", "demo"} <= set(args.skip):
        speed, failures = section_speed(args, device)
        results.update(speed)
    if args.compile:
        results["compile"] = section_compile(args, device)
    print(load_report("at the end"))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    exit_on_missed(failures, f"GOAL MISSED: difflab samples more than {args.tolerance:.0%} slower than "
                   "diffusers", enforce=not args.quick)


if __name__ == "__main__":
    main()
