"""The GPU paths, on a CUDA machine: training throughput of the default recipe (bf16 autocast, data
on the device, channels-last; with and without ``torch.compile``), and the new conditioning paths
end to end on the device: a latent run (autoencoder, latent cache on the GPU, decoding) and a
super-resolution run, each sampled on the GPU and on the CPU from the same seeds.

Checks (exit status 1 when one fails): every run trains with finite losses; GPU samples match the
CPU's within 0.05 on [-1, 1] (bf16 autocast is training-only; sampling is float32, so the gap is
TF32 convolutions and kernel order, not precision loss).

    python benchmarks/bench_gpu.py                 # about 3 minutes on one H200
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_common import exit_on_missed, machine_report

BIG = 10**9


def throughput(cfg: Any, out: Path, seconds: float) -> tuple[float, int, float]:
    """(images/s after the first 20 steps (or half the steps), steps, seconds to the end of the
    first step) of ``seconds`` of training."""
    from difflab.train import train

    marks: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    train(cfg, out, progress=False, log=lambda s: None, max_seconds=seconds,
          on_step=lambda step, s, m: marks.append((step, time.perf_counter() - t0)))
    (s0, t0), (s1, t1) = marks[min(20, len(marks) // 2)], marks[-1]
    ips = (s1 - s0) * cfg.batch_size / (t1 - t0) if s1 > s0 else float("nan")
    return ips, s1, marks[0][1]


def cpu_vs_device(run: Path, device: str, **kwargs: Any) -> tuple[float, tuple[int, ...]]:
    import difflab

    cpu = difflab.load(run, "cpu").sample(**kwargs)
    gpu = difflab.load(run, device).sample(**kwargs)
    return float((cpu - gpu).abs().max()), tuple(gpu.shape)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=15.0, help="training seconds per throughput row")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--steps", type=int, default=400, help="training steps of the latent and lowres runs")
    p.add_argument("--device", default="cuda", help="cpu: a smoke run of the script itself")
    args = p.parse_args()
    dev = args.device
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device (or --device cpu for a smoke run)")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    machine_report(torch.device(dev))
    from difflab.data import DataConfig
    from difflab.latent.config import VAETrainConfig
    from difflab.nets.autoencoder import AutoencoderConfig
    from difflab.train import TrainConfig, train
    from difflab.train.vae import train_vae

    missed: list[str] = []
    quiet = {"progress": False, "log": lambda s: None}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"\n| training on {dev} (default recipe, MNIST 28x28; bf16 autocast on cuda) | images/s "
              "| steps "
              "| first step s |")
        print("|---|---:|---:|---:|")
        rows = [(64, False), (512, False), (2048, False)] + ([] if args.no_compile else [(512, True)])
        rows = rows if dev != "cpu" else rows[:1]
        for batch, compiled in rows:
            cfg = TrainConfig(device=dev, batch_size=batch, steps=BIG, compile=compiled, sample_every=BIG,
                              checkpoint_every=BIG, log_every=50)
            ips, steps, first = throughput(cfg, root / f"speed-{batch}-{compiled}",
                                           args.seconds * (3 if compiled else 1))
            what = f"batch {batch}" + (", torch.compile" if compiled else "")
            print(f"| {what} | {ips:,.0f} | {steps} | {first:.1f} |", flush=True)

        vae = root / "vae"
        t0 = time.perf_counter()
        vae_cfg = VAETrainConfig(net=AutoencoderConfig.for_factor(4, 1, 4), steps=args.steps, batch_size=128,
                                 device=dev, eval_n=128, eval_fd=False, checkpoint_every=args.steps)
        train_vae(vae_cfg, vae, **quiet)
        print(f"\nautoencoder (factor 4): {args.steps} steps of 128 on {dev} in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        checks = []
        lowres = {"cond": "lowres", "cond_drop": 0.0, "sample_guidance": 1.0}
        for name, fields in (("latent", {"latent": str(vae)}), ("lowres x4", lowres)):
            out = root / name.replace(" ", "-")
            t0 = time.perf_counter()
            cfg = TrainConfig(device=dev, steps=args.steps, batch_size=256, sample_every=args.steps,
                              checkpoint_every=args.steps, data=DataConfig(source="mnist"), **fields)
            result = train(cfg, out, **quiet)
            seconds = time.perf_counter() - t0
            finite = torch.isfinite(torch.tensor(result.final_loss)).item()
            kwargs: dict[str, Any] = {"n": 16, "seed": 3, "sampler": "ddim", "steps": 20}
            if name.startswith("lowres"):
                kwargs["lowres"] = torch.rand(16, 1, 7, 7) * 2 - 1
            gap, shape = cpu_vs_device(out, dev, **kwargs)
            checks.append((name, result.steps, seconds, result.final_loss, gap, shape))
            if not finite:
                missed.append(f"{name}: loss {result.final_loss}")
            if gap > 0.05:
                missed.append(f"{name}: GPU samples differ from the CPU's by {gap:.3g}")
        print(f"\n| run on {dev} | steps x 256 | seconds | final loss | max |device - CPU| of 16 samples "
              "| shape |")
        print("|---|---:|---:|---:|---:|---|")
        for name, steps, seconds, loss, gap, shape in checks:
            print(f"| {name} | {steps} | {seconds:.1f} | {loss:.4f} | {gap:.2e} | {shape} |")
    exit_on_missed(missed, "GPU checks failed")


if __name__ == "__main__":
    main()
