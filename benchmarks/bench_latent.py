"""Latent vs pixel diffusion at equal training time: text-conditional MNIST, the Stable Diffusion
framework in miniature against the same recipe on pixels.

Both models are ``difflab train --cond text`` with the default recipe and the default network for
their input (28x28x1 pixels, or the autoencoder's 7x7x4 latents; the latent model at batch
``--latent-batch``, 256, since its steps are cheap enough), trained for ``--minutes`` of
CPU time each (steps sized from a probe of CPU seconds per step, as bench_text_cond.py does, so
other work on the machine does not shrink either budget). Scored on the same prompts and seeds:
training images per CPU second, sampling images per second (64 prompted images, DDIM ``--steps``
steps at guidance ``--guidance``, the latent model's decoding included; the two models
interleaved, three rounds, the median), FD-digit of those
samples against the 5,000 real digits, and prompt-agreement-digit on the held-out prompts.

Other data (``--data folder:runs/sprites``, ``fashion-mnist``, ...) trains class-conditional
models (``--cond class``; classes cycled over the samples) and scores FD-EffNetLite0 of the samples
against up to ``--real-n`` real images instead of the digit scores.

Goals (exit status 1 when missed; not enforced with ``--quick``): the latent model trains at least
2x the images per second and samples at least 2x as fast as the pixel model, with prompt agreement
within 3 points of it (text models) or an FD-EffNetLite0 at most 1.2x the pixel model's (others).

    OMP_NUM_THREADS=2 python benchmarks/bench_latent.py --vae runs/bench-latent/vae --minutes 8
    OMP_NUM_THREADS=2 python benchmarks/bench_latent.py --vae runs/bench-ae/sprites-f4 \
        --data folder:runs/sprites --runs runs/bench-latent-sprites --minutes 8
    python benchmarks/bench_latent.py --vae runs/bench-latent/vae --quick       # plumbing only
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
from bench_text_cond import BIG, probe_speed

FD_RATIO = 1.2  # class-conditional goal: latent FD-EffNetLite0 at most this times the pixel model's


def make_config(latent: str | None, steps: int, batch_size: int, data: str = "mnist", cond: str = "text"
                ) -> Any:
    from difflab.data import parse_data_spec
    from difflab.train import TrainConfig

    return TrainConfig(data=parse_data_spec(data), cond=cond, latent=latent, steps=steps,
                       batch_size=batch_size, sample_every=BIG, checkpoint_every=BIG, log_every=50)


def train_model(name: str, latent: str | None, root: Path, minutes: float, probe_s: float,
                batch_size: int, data: str = "mnist", cond: str = "text") -> dict[str, Any]:
    """Train (or, when its ``bench.json`` is there, reuse) one model; its training numbers."""
    from difflab.train import train

    record = root / name / "bench.json"
    if record.is_file():
        print(f"  [{name}] reusing {root / name}", flush=True)
        return json.loads(record.read_text())

    per_step = probe_speed(root / f"probe-{name}", probe_s, make_config(latent, BIG, batch_size, data, cond))
    steps = max(20, int(60 * minutes / per_step))
    cfg = make_config(latent, steps, batch_size, data, cond)
    cpu0 = time.process_time()
    result = train(cfg, root / name, progress=False, log=lambda s: print(f"  [{name}] {s}", flush=True))
    cpu = time.process_time() - cpu0
    print(f"  [{name}] {result.steps} steps in {cpu / 60:.1f} CPU min ({result.seconds / 60:.1f} min wall)",
          flush=True)
    out = {"steps": result.steps, "batch": batch_size, "cpu_s": cpu, "wall_s": result.seconds,
           "train_ips_cpu": result.steps * cfg.batch_size / cpu, "per_step_probe": per_step}
    record.write_text(json.dumps(out, indent=2) + "\n")
    return out


def score(run: Path, n: int, steps: int, guidance: float, real: torch.Tensor) -> dict[str, float]:
    """Sample ``n`` images for the held-out prompts (cycled), timed; their FD-digit against ``real``
    and the share the digit classifier reads as the digit the prompt names (with its binomial
    standard error)."""
    import difflab
    from difflab.conditioning.captions import held_out_prompts
    from difflab.eval.digit_classifier import digit_probs, fd_digit

    pipe = difflab.load(run, "cpu")
    prompts, classes = held_out_prompts("digits", [str(i) for i in range(10)])
    picked = [prompts[i % len(prompts)] for i in range(n)]
    named = torch.tensor([classes[i % len(prompts)] for i in range(n)])
    images = pipe.sample(n, prompts=picked, sampler="ddim", steps=steps, guidance=guidance, batch_size=n)
    share = float((digit_probs(images).argmax(1) == named).double().mean())
    stderr = (share * (1 - share) / n) ** 0.5
    return {"fd_digit": fd_digit(images, real), "agreement": share, "stderr": stderr}


def score_classes(run: Path, n: int, steps: int, guidance: float, real: Any) -> dict[str, float]:
    """Sample ``n`` images cycling through the classes; FD-EffNetLite0 against the ``real``
    features."""
    import difflab
    from difflab.eval.effnet import EffNetLite0Features
    from difflab.eval.scores import frechet_distance
    from difflab.eval.stats import extract

    pipe = difflab.load(run, "cpu")
    images = pipe.sample(n, **condition(pipe, n), sampler="ddim", steps=steps, guidance=guidance,
                         batch_size=64)
    fake = extract(images, EffNetLite0Features(torch.device("cpu")))
    return {"fd": frechet_distance(fake.mu, fake.sigma, real.mu, real.sigma)}


def condition(pipe: Any, n: int) -> dict[str, Any]:
    """Digit prompts for text runs, the classes in turn for class-conditional ones."""
    if pipe.is_text:
        return {"prompts": [f"a handwritten {i % 10}" for i in range(n)]}
    return {"class_labels": [i % pipe.num_classes for i in range(n)]}


def sampling_speed(runs: dict[str, Path], n: int, steps: int, guidance: float, rounds: int = 3
                   ) -> dict[str, float]:
    """Images/s of each run sampling ``n`` conditioned images, the runs interleaved round by round
    (so load on the machine hits both alike); the median round of each."""
    import statistics

    import difflab

    pipes = {name: difflab.load(run, "cpu") for name, run in runs.items()}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for pipe in pipes.values():  # warm-up
        pipe.sample(4, **condition(pipe, 4), sampler="ddim", steps=steps, guidance=guidance)
    for _ in range(rounds):
        for name, pipe in pipes.items():
            t0 = time.perf_counter()
            pipe.sample(n, **condition(pipe, n), sampler="ddim", steps=steps, guidance=guidance, batch_size=n)
            times[name].append(time.perf_counter() - t0)
    return {name: n / statistics.median(t) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vae", required=True,
                   help="the autoencoder (a `difflab train-vae` run, or diffusers:DIR)")
    p.add_argument("--minutes", type=float, default=8.0, help="CPU minutes of training per model")
    p.add_argument("--n", type=int, default=480, help="samples scored per model")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps of the scored samples")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--batch", type=int, default=64, help="the pixel model's batch (the default recipe's)")
    p.add_argument("--latent-batch", type=int, default=256,
                   help="the latent model's batch: its steps are cheap enough for 4x the images")
    p.add_argument("--runs", type=Path, default=Path("runs/bench-latent"))
    p.add_argument("--data", default="mnist",
                   help="data spec; other than mnist: class-conditional models scored by FD-EffNetLite0")
    p.add_argument("--real-n", type=int, default=2000, help="real images of the FD-EffNetLite0 reference")
    p.add_argument("--quick", action="store_true",
                   help="20 s per model, 40 samples, 5 steps; goals not enforced")
    args = p.parse_args()
    if args.quick:
        args.minutes, args.n, args.steps, args.runs = 1 / 3, 40, 5, args.runs / "quick"
    machine_report(torch.device("cpu"))
    from difflab.data import DataConfig, load_dataset
    from difflab.latent import load_latent_space

    space = load_latent_space(args.vae)
    print(f"# autoencoder {args.vae}: {space.digest}, factor {space.factor}, scale {space.scale_factor:.4g}")
    from difflab.data import parse_data_spec

    digits = args.data == "mnist"
    cond = "text" if digits else "class"
    data = load_dataset(DataConfig(source="mnist") if digits else parse_data_spec(args.data))
    if digits:
        real, _ = data.batch(torch.arange(len(data)), flip=False)
    else:
        from difflab.eval.effnet import EffNetLite0Features
        from difflab.eval.stats import cached_features

        pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[: args.real_n]
        real = cached_features(data.batch(pick, flip=False)[0], EffNetLite0Features(torch.device("cpu")),
                               name="bench-latent-real")
    rows: dict[str, dict[str, Any]] = {}
    for name, latent, batch in (("pixel", None, args.batch), ("latent", args.vae, args.latent_batch)):
        out = args.runs / name
        if out.exists() and not (out / "bench.json").is_file():
            raise SystemExit(f"{out} exists without bench.json: remove it (or give another --runs)")
        rows[name] = train_model(name, latent, args.runs, args.minutes, 30.0 if args.quick else 90.0, batch,
                                 args.data, cond)
        scored = score if digits else score_classes
        rows[name].update(scored(out, args.n, args.steps, args.guidance, real))
        print(load_report(f"after {name}"), flush=True)
    speed = sampling_speed({name: args.runs / name for name in rows}, 16 if args.quick else 64, args.steps,
                           args.guidance, 1 if args.quick else 3)
    for name, ips in speed.items():
        rows[name]["sample_ips"] = ips
    pix, lat = rows["pixel"], rows["latent"]
    what = "text-conditional MNIST" if digits else f"class-conditional {args.data}"
    print(f"\n{what}, {args.minutes:g} CPU min of training each; {args.n} samples, DDIM "
          f"{args.steps} steps at guidance {args.guidance:g}\n")
    if digits:
        print("| model | steps x batch | train images / CPU s | sample images / s | FD-digit "
              "| prompt agreement |")
        print("|---|---:|---:|---:|---:|---:|")
    else:
        print("| model | steps x batch | train images / CPU s | sample images / s | FD-EffNetLite0 |")
        print("|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        line = f"| {name} | {r['steps']} x {r['batch']} | {r['train_ips_cpu']:.0f} | {r['sample_ips']:.1f} | "
        print(line + (f"{r['fd_digit']:.1f} | {100 * r['agreement']:.1f}% ± {100 * r['stderr']:.1f} |"
                      if digits else f"{r['fd']:.1f} |"))
    train_x, sample_x = lat["train_ips_cpu"] / pix["train_ips_cpu"], lat["sample_ips"] / pix["sample_ips"]
    fd_key = "fd_digit" if digits else "fd"
    fd_x = lat[fd_key] / pix[fd_key]
    gap = 100 * (pix["agreement"] - lat["agreement"]) if digits else 0.0
    print(f"| latent / pixel | | {train_x:.2f}x | {sample_x:.2f}x | {fd_x:.2f}x |"
          + (f" {-gap:+.1f} points |" if digits else ""))
    print(f"\n{load_report('at the end')}")
    missed = []
    if not digits and fd_x > FD_RATIO:
        missed.append(f"latent FD-EffNetLite0 is {fd_x:.2f}x the pixel model's (goal: at most {FD_RATIO}x)")
    if train_x < 2:
        missed.append(f"latent training is {train_x:.2f}x the pixel model's images/s (goal 2x)")
    if sample_x < 2:
        missed.append(f"latent sampling is {sample_x:.2f}x the pixel model's images/s (goal 2x)")
    if gap > 3:
        missed.append(f"latent prompt agreement is {gap:.1f} points below the pixel model's (goal: within 3)")
    exit_on_missed(missed, "latent diffusion goals missed", enforce=not args.quick)


if __name__ == "__main__":
    main()
