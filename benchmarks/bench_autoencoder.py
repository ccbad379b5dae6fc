"""The latent autoencoder: held-out PSNR / SSIM / reconstruction FD-EffNetLite0 per data set and
downsampling factor, and what the switchable perceptual and patch-GAN terms change.

Each row is one ``difflab train-vae`` run (``difflab.train.vae.train_vae``) of ``--steps`` steps
of batch 32 with the shipped objective (L1 + 1e-6 KL, Adam 4.5e-4) on the named data (5,000
images; 10% held out with a fixed seed), then scored on ``--eval-n`` held-out images:
reconstructions are decode(mean of q(z|x)); PSNR and SSIM are per image in [0, 1], averaged;
FD-EffNetLite0 is the Frechet distance between the EfficientNet-Lite0 features of the
reconstructions and of the originals (a floor for any latent diffusion model on that
autoencoder: its samples can be no closer to the data than the decoder's reconstructions). The
scale factor (1 / std of the training latents) and the held-out std after scaling are reported.

    OMP_NUM_THREADS=1 python benchmarks/bench_autoencoder.py                # every row (~25 min here)
    OMP_NUM_THREADS=1 python benchmarks/bench_autoencoder.py --rows mnist-f4 --steps 50 --eval-n 64  # quick
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import load_report, machine_report

# name -> (data spec, factor, extra VAETrainConfig fields)
ROWS: dict[str, tuple[str, int, dict[str, Any]]] = {
    "mnist-f2": ("mnist", 2, {}),
    "mnist-f4": ("mnist", 4, {}),
    "mnist-f4-perceptual": ("mnist", 4, {"perceptual_weight": 0.1}),
    "mnist-f4-gan": ("mnist", 4, {"disc_weight": 0.5}),
    "fashion-f2": ("fashion-mnist", 2, {}),
    "fashion-f4": ("fashion-mnist", 4, {}),
}


def fashion_installed() -> bool:
    from difflab.data import DataConfig, load_dataset

    try:
        load_dataset(DataConfig(source="fashion-mnist", limit=10))
    except Exception:
        return False
    return True


def run_row(name: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    from difflab.data import parse_data_spec
    from difflab.latent import VAETrainConfig, load_latent_space
    from difflab.nets.autoencoder import AutoencoderConfig
    from difflab.train.vae import train_vae

    spec, factor, extra = ROWS[name]
    net = AutoencoderConfig.for_factor(factor, 1, 4, base=args.base)
    if "disc_weight" in extra:
        extra = {**extra, "disc_start": args.steps // 2}
    cfg = VAETrainConfig(
        data=parse_data_spec(spec, limit=5000),
        net=net,
        factor=factor,
        steps=args.steps,
        eval_n=args.eval_n,
        checkpoint_every=args.steps,
        log_every=50,
        **extra,
    )
    t0 = time.perf_counter()
    result = train_vae(cfg, folder / name, progress=False, log=lambda _: None)
    s = result.scores
    params = sum(p.numel() for p in load_latent_space(folder / name).autoencoder.parameters())  # type: ignore[attr-defined]
    return {
        "row": name,
        "data": spec,
        "factor": factor,
        "latent": f"4x{28 // factor}x{28 // factor}",
        "terms": cfg.terms(),
        "params": params,
        "steps": args.steps,
        "train_s": round(result.seconds, 1),
        "total_s": round(time.perf_counter() - t0, 1),
        "psnr": s["psnr"],
        "ssim": s["ssim"],
        "fd": s.get("fd_effnet_lite0"),
        "scale_factor": s["scale_factor"],
        "heldout_std": s["heldout_latent_std"],
        "heldout_mean": s["heldout_latent_mean"],
        "n": args.eval_n,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", nargs="+", choices=tuple(ROWS), default=list(ROWS))
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--eval-n", type=int, default=200)
    p.add_argument(
        "--base", type=int, default=16, help="width of the first level (levels: base, 2 base, ...)"
    )
    p.add_argument("--json", type=Path, help="write the rows here")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    machine_report(torch.device("cpu"))
    rows = [r for r in args.rows if not r.startswith("fashion") or fashion_installed()]
    if len(rows) < len(args.rows):
        print("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist): its rows are skipped")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in rows:
            r = run_row(name, args, Path(tmp))
            results.append(r)
            print(json.dumps(r), flush=True)
    print(f"\n{args.steps} steps of 32, base width {args.base}; scores on {args.eval_n} held-out images\n")
    print("| data | factor | latent | loss | params | train s | PSNR dB | SSIM | FD-EffNetLite0 | scale "
          "| held-out std |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        fd = "-" if r["fd"] is None else f"{r['fd']:.1f}"
        print(
            f"| {r['data']} | {r['factor']} | {r['latent']} | {r['terms']} | {r['params']:,} | "
            f"{r['train_s']:.0f} | {r['psnr']:.2f} | {r['ssim']:.4f} | {fd} | {r['scale_factor']:.3f} | "
            f"{r['heldout_std']:.3f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(load_report("end"))


if __name__ == "__main__":
    main()
