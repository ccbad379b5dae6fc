"""LoRA fine-tuning: an MNIST run taught Fashion-MNIST in a few CPU minutes by a small adapter.

The base is an unconditional MNIST run (default ``runs/uncond-mnist``; read only: the script
checks that every file of it is byte-for-byte the same at the end). ``difflab finetune --method
lora`` trains a rank-``--rank`` adapter on ``--targets`` for ``--time-budget`` on ``--data``; then
``--n`` samples (seeds 0..n-1, the run's sampler at ``--steps``) are drawn from the base and from
the base with the adapter at scales 0, 0.5 and 1, and scored:

- FD-EffNetLite0 and FD-digit to ``--n`` real images of the new data (Fashion-MNIST's training set,
  a fixed shuffle): how far the samples are from what the adapter was taught;
- FD-digit to the embedded MNIST digits (the base's data): what scale 0 keeps;
- the real-vs-real floor of each FD (two disjoint sets of ``--n`` real images).

Goals (exit status 1 when missed): the adapter at scale 1 at most halves the base's FD-EffNetLite0
to the new data (``--goal-fd-ratio 0.5``); at scale 0 the samples are the base's, bit for bit (so
every FD to the old data is unchanged); the adapter file is at most 10% of the base weights file
(``--goal-size``); the base run folder is unchanged.

    OMP_NUM_THREADS=1 python benchmarks/bench_lora.py                      # ~4 min training + scoring
    OMP_NUM_THREADS=1 python benchmarks/bench_lora.py --quick              # ~1 minute, goals not enforced
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, exit_on_missed, load_report, machine_report


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def real_images(spec: str, size: int, n: int, offset: int = 0) -> torch.Tensor:
    """``n`` real images of ``spec`` in [-1, 1] at ``size``, from a fixed shuffle (from ``offset``)."""
    from difflab.data import load_dataset, parse_data_spec

    data = load_dataset(parse_data_spec(spec, image_size=size, channels=1))
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[offset : offset + n]
    return data.images[pick].float() / 127.5 - 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", type=Path, default=ROOT / "runs" / "uncond-mnist")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--targets", default="attention,conv")
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--time-budget", type=float, default=240.0, help="seconds of fine-tuning (default: 240)")
    p.add_argument("--n", type=int, default=500, help="samples and real images per FD (default: 500)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps (default: 20, the run's sampler)")
    p.add_argument("--out", type=Path, help="adapter folder (default: a temporary one)")
    p.add_argument("--goal-fd-ratio", type=float, default=0.5)
    p.add_argument("--goal-size", type=float, default=0.10)
    p.add_argument("--quick", action="store_true", help="tiny settings, goals not enforced")
    args = p.parse_args()
    if args.quick:
        args.time_budget, args.n, args.steps = 20.0, 64, 5
    torch.set_num_threads(1)

    import difflab
    from difflab.eval.features import get_extractor
    from difflab.eval.scores import feature_statistics, frechet_distance
    from difflab.nets.lora import LoRAConfig, parse_targets
    from difflab.train.finetune import finetune

    machine_report(torch.device("cpu"))
    base_before = tree_digest(args.base)
    tmp = tempfile.TemporaryDirectory()
    out = args.out or Path(tmp.name) / "style"
    lora = LoRAConfig(rank=args.rank, targets=parse_targets(args.targets))  # type: ignore[arg-type]
    t0 = time.perf_counter()
    res = finetune(args.base, out, data=args.data, lora=lora, time_budget=args.time_budget, lr=args.lr,
                   progress=False, log=lambda s: print("  " + s, flush=True), sample_every=10**9)
    train_s = time.perf_counter() - t0
    print(f"\nfine-tuned {res.steps} steps of {difflab.load(args.base, 'cpu').config.batch_size} in "
          f"{res.seconds:.0f} s of training ({train_s:.0f} s with data loading and checkpoints)\n")

    base = difflab.load(args.base, "cpu")
    model_bytes = base.weights_path.stat().st_size  # type: ignore[union-attr]
    adapter_bytes = (out / "adapter.safetensors").stat().st_size
    n_base = sum(p.numel() for p in base.net.parameters())
    import json

    n_adapter = json.loads((out / "adapter.json").read_text())["parameters"]

    size = int(base.image_shape[-1])
    new_real = real_images(args.data, size, 2 * args.n)
    old_real = real_images("mnist", size, 2 * args.n)
    eff, dig = get_extractor("effnet-lite0"), get_extractor("digit")

    def stats(extractor: Any, images: torch.Tensor) -> tuple[Any, Any]:
        return feature_statistics(extractor.features(images))

    refs = {("eff", "new"): stats(eff, new_real[: args.n]), ("dig", "new"): stats(dig, new_real[: args.n]),
            ("dig", "old"): stats(dig, old_real[: args.n])}

    def fd(kind: str, which: str, images: torch.Tensor) -> float:
        mu, sigma = stats(eff if kind == "eff" else dig, images)
        return frechet_distance(mu, sigma, *refs[(kind, which)])

    rows: list[tuple[str, torch.Tensor, float]] = []
    sample_kw = {"steps": args.steps, "seed": 0}
    t0 = time.perf_counter()
    rows.append(("base run", base.sample(args.n, **sample_kw), time.perf_counter() - t0))
    for scale in (0.0, 0.5, 1.0):
        pipe = base.with_lora(out, scale)
        t0 = time.perf_counter()
        rows.append((f"LoRA scale {scale:g}", pipe.sample(args.n, **sample_kw), time.perf_counter() - t0))

    print(f"| | parameters | file | share of the base file |\n|---|---|---|---|\n"
          f"| base run ({base.weights_file}) | {n_base:,} | {model_bytes / 1e3:,.0f} kB | 100% |\n"
          f"| adapter (rank {args.rank}, {args.targets}) | {n_adapter:,} | {adapter_bytes / 1e3:,.0f} kB | "
          f"{adapter_bytes / model_bytes:.1%} |\n")
    print(f"| samples ({args.n}, {base.config.sample_sampler} {args.steps} steps) | FD-EffNetLite0 to "
          f"{args.data} | FD-digit to {args.data} | FD-digit to MNIST | images/s |\n|---|---|---|---|---|")
    scores = {}
    for label, images, seconds in rows:
        s = (fd("eff", "new", images), fd("dig", "new", images), fd("dig", "old", images))
        scores[label] = s
        print(f"| {label} | {s[0]:.1f} | {s[1]:.1f} | {s[2]:.1f} | {args.n / seconds:.0f} |")
    print(f"| real {args.data} (other {args.n}) | {fd('eff', 'new', new_real[args.n:]):.1f} | "
          f"{fd('dig', 'new', new_real[args.n:]):.1f} | {fd('dig', 'old', new_real[args.n:]):.1f} | |")
    print(f"| real MNIST (other {args.n}) | {fd('eff', 'new', old_real[args.n:]):.1f} | "
          f"{fd('dig', 'new', old_real[args.n:]):.1f} | {fd('dig', 'old', old_real[args.n:]):.1f} | |")

    same = torch.equal(rows[0][1], rows[1][1])
    ratio = scores["LoRA scale 1"][0] / scores["base run"][0]
    print(f"\nscale 0 samples identical to the base's: {same}; FD-EffNetLite0 to {args.data}, "
          "scale 1 / base: "
          f"{ratio:.3f}")
    missed = []
    if ratio > args.goal_fd_ratio:
        missed.append(f"FD-EffNetLite0 to {args.data} at scale 1 is {ratio:.2f}x the base's (goal <= "
                      f"{args.goal_fd_ratio})")
    if not same:
        missed.append("samples at scale 0 differ from the base run's")
    if adapter_bytes > args.goal_size * model_bytes:
        missed.append(f"the adapter file is {adapter_bytes / model_bytes:.1%} of the base weights "
                      f"(goal <= {args.goal_size:.0%})")
    if tree_digest(args.base) != base_before:
        missed.append(f"the base run folder {args.base} changed")
    print(load_report("at the end"))
    exit_on_missed(missed, "LoRA goal missed", enforce=not args.quick)


if __name__ == "__main__":
    main()
