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

The baseline beside each row is bicubic: the held-out image shrunk by the same factor (antialiased,
8-bit) and enlarged again, the cheapest code of the same spatial size (1 or 3 channels where the
latent has 4). Goals (exit status 1 when missed): every autoencoder beats that baseline's PSNR, and
its scaled held-out latents have a standard deviation within 10% of 1 (the stored scale factor
does its job on images it never saw).

The colour rows need the sprites folder (``python benchmarks/make_sprites.py --out runs/sprites``,
Debian's ``crawl-tiles-data``); ``--keep DIR`` keeps the run folders (for ``bench_latent.py``).

    OMP_NUM_THREADS=1 python benchmarks/bench_autoencoder.py --rows mnist-f2 mnist-f4 fashion-f2 fashion-f4
    OMP_NUM_THREADS=1 python benchmarks/bench_autoencoder.py --rows sprites-f2 sprites-f4 --steps 2000 \
        --base 32 --keep runs/bench-ae
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
from bench_common import exit_on_missed, load_report, machine_report

SPRITES = Path("runs/sprites")

# name -> (data spec, factor, extra VAETrainConfig fields)
ROWS: dict[str, tuple[str, int, dict[str, Any]]] = {
    "mnist-f2": ("mnist", 2, {}),
    "mnist-f4": ("mnist", 4, {}),
    "mnist-f4-perceptual": ("mnist", 4, {"perceptual_weight": 0.1}),
    "mnist-f4-gan": ("mnist", 4, {"disc_weight": 0.5}),
    "fashion-f2": ("fashion-mnist", 2, {}),
    "fashion-f4": ("fashion-mnist", 4, {}),
    "sprites-f2": (f"folder:{SPRITES}", 2, {}),
    "sprites-f4": (f"folder:{SPRITES}", 4, {}),
}
STD_TOLERANCE = 0.1


def fashion_installed() -> bool:
    from difflab.data import DataConfig, load_dataset

    try:
        load_dataset(DataConfig(source="fashion-mnist", limit=10))
    except Exception:
        return False
    return True


def bicubic_psnr(cfg: Any, factor: int) -> float:
    """PSNR of shrink-then-enlarge (bicubic) on the held-out images the autoencoder is scored on."""
    from difflab.conditioning.lowres import enlarge, shrink
    from difflab.data import load_dataset
    from difflab.eval.reconstruction import psnr
    from difflab.train.classifier import split_indices
    from difflab.train.vae import spread

    data = load_dataset(cfg.data)
    _, held = split_indices(len(data), cfg.holdout, cfg.seed)
    originals, _ = data.batch(spread(held, cfg.eval_n))
    return psnr(originals, enlarge(shrink(originals, factor), factor))


def run_row(name: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    from difflab.data import load_dataset, parse_data_spec
    from difflab.latent import VAETrainConfig, load_latent_space
    from difflab.nets.autoencoder import AutoencoderConfig
    from difflab.train.vae import train_vae

    spec, factor, extra = ROWS[name]
    data = parse_data_spec(spec, limit=5000)
    c, h, w = load_dataset(data).shape
    net = AutoencoderConfig.for_factor(factor, c, 4, base=args.base)
    if "disc_weight" in extra:
        extra = {**extra, "disc_start": args.steps // 2}
    cfg = VAETrainConfig(
        data=data,
        net=net,
        factor=factor,
        steps=args.steps,
        eval_n=args.eval_n,
        checkpoint_every=min(args.steps, 250),
        log_every=50,
        **extra,
    )
    t0 = time.perf_counter()
    out = folder / name
    result = train_vae(cfg, out, progress=False, log=lambda _: None, resume=out.is_dir())
    s = result.scores
    params = sum(p.numel() for p in load_latent_space(folder / name).autoencoder.parameters())  # type: ignore[attr-defined]
    return {
        "row": name,
        "data": spec,
        "factor": factor,
        "latent": f"4x{h // factor}x{w // factor}",
        "pixels": f"{c}x{h}x{w}",
        "terms": cfg.terms(),
        "params": params,
        "steps": args.steps,
        "train_s": round(result.seconds, 1),
        "total_s": round(time.perf_counter() - t0, 1),
        "psnr": s["psnr"],
        "ssim": s["ssim"],
        "fd": s.get("fd_effnet_lite0"),
        "bicubic_psnr": bicubic_psnr(cfg, factor),
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
    p.add_argument("--keep", type=Path, help="keep the run folders here (an existing row's run is resumed)")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    machine_report(torch.device("cpu"))
    rows = [r for r in args.rows if not r.startswith("fashion") or fashion_installed()]
    if len(rows) < len(args.rows):
        print("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist): its rows are skipped")
    if any(r.startswith("sprites") for r in rows) and not SPRITES.is_dir():
        sys.exit(f"bench_autoencoder: {SPRITES} is missing; make it with "
                 f"python benchmarks/make_sprites.py --out {SPRITES}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in rows:
            r = run_row(name, args, args.keep or Path(tmp))
            results.append(r)
            print(json.dumps(r), flush=True)
    print(f"\n{args.steps} steps of 32, base width {args.base}; scores on {args.eval_n} held-out images\n")
    print("| data | factor | pixels -> latent | loss | params | train s | PSNR dB | bicubic PSNR dB | SSIM "
          "| FD-EffNetLite0 | scale | held-out std |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    missed = []
    for r in results:
        fd = "-" if r["fd"] is None else f"{r['fd']:.1f}"
        print(
            f"| {r['data']} | {r['factor']} | {r['pixels']} -> {r['latent']} | {r['terms']} | "
            f"{r['params']:,} | "
            f"{r['train_s']:.0f} | {r['psnr']:.2f} | {r['bicubic_psnr']:.2f} | {r['ssim']:.4f} | {fd} | "
            f"{r['scale_factor']:.3f} | {r['heldout_std']:.3f} |"
        )
        if r["psnr"] <= r["bicubic_psnr"]:
            missed.append(f"{r['row']}: PSNR {r['psnr']:.2f} dB does not beat bicubic "
                          f"{r['bicubic_psnr']:.2f} dB")
        if abs(r["heldout_std"] - 1) > STD_TOLERANCE:
            missed.append(f"{r['row']}: held-out latent std {r['heldout_std']:.3f} is not within "
                          f"{STD_TOLERANCE:.0%} of 1")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(load_report("end"))
    exit_on_missed(missed, "bench_autoencoder goals missed")


if __name__ == "__main__":
    main()
