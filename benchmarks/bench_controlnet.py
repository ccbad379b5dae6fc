"""ControlNet: an unconditional MNIST run made to follow edge maps by a few CPU minutes of training.

The base is an unconditional MNIST run (default ``runs/uncond-mnist``; read only: the script
checks that every file of it is byte-for-byte the same at the end). ``difflab train-controlnet
--control edges`` trains a ControlNet for ``--time-budget`` on 4,500 of the 5,000 embedded digits
(``limit 4500``: the first of the data's seeded shuffle); the other 500 are held out. From ``--n``
held-out digits' Canny edge maps, the base with the ControlNet and the base alone draw images from
the same seeds (the run's sampler, ``--steps``), and each image's own Canny edges are compared
with the control's:

- edge IoU: |E_control & E_generated| / |E_control | E_generated| (pixel-exact), mean over images;
- Chamfer distance: the mean distance (pixels) from each edge pixel of one map to the nearest of
  the other, averaged over both directions (the image diagonal when a map is empty);
- digit agreement: the share of images the MNIST classifier reads as the held-out digit whose
  edges they were drawn from;
- FD-digit to the ``--n`` held-out digits (and the floor: ``--n`` other real digits).

Goals (exit status 1 when missed): the ControlNet's mean edge IoU is at least ``--goal-iou-ratio``
(2) times the base's; at control scale 0 the samples are the base's, bit for bit; the base run
folder is unchanged. ``--picture docs/controlnet.png`` writes rows of control edges, ControlNet
samples and base samples.

    OMP_NUM_THREADS=1 python benchmarks/bench_controlnet.py             # ~5 min training + scoring
    OMP_NUM_THREADS=1 python benchmarks/bench_controlnet.py --quick     # ~1 minute, goals not enforced
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, exit_on_missed, load_report, machine_report

TRAIN_DIGITS = 4500


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def held_out(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` embedded MNIST digits the ControlNet never saw (uint8 [n, 1, 28, 28], labels): the
    images ``DataConfig(limit=4500)`` leaves out of its seeded shuffle, in that shuffle's order."""
    from difflab.data import load_dataset, parse_data_spec

    data = load_dataset(parse_data_spec("mnist"))
    rest = np.random.default_rng(0).permutation(len(data))[TRAIN_DIGITS:]
    pick = torch.from_numpy(rest[:n].astype(np.int64))
    assert data.labels is not None
    return data.images[pick], data.labels[pick]


def edge_agreement(control: torch.Tensor, images: torch.Tensor, cfg: object) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the IoU of the control edges and the generated image's Canny edges, and their
    symmetric Chamfer distance in pixels."""
    from scipy.ndimage import distance_transform_edt

    from difflab.conditioning.control import compute_control

    gen = compute_control(((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8), cfg)  # type: ignore[arg-type]
    a, b = control[:, 0].numpy() > 0.5, gen[:, 0].numpy() > 0
    inter, union = (a & b).sum((1, 2)), (a | b).sum((1, 2))
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    diag = float(np.hypot(*a.shape[1:]))
    chamfer = []
    for x, y in zip(a, b, strict=True):
        if not x.any() or not y.any():
            chamfer.append(diag)
            continue
        to_y, to_x = distance_transform_edt(~y), distance_transform_edt(~x)
        chamfer.append(0.5 * (to_y[x].mean() + to_x[y].mean()))
    return iou, np.asarray(chamfer)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", type=Path, default=ROOT / "runs" / "uncond-mnist")
    p.add_argument("--time-budget", type=float, default=300.0, help="seconds of training (default: 300)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n", type=int, default=300, help="held-out digits to draw from (default: 300)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps (default: 20, the run's sampler)")
    p.add_argument("--out", type=Path, help="ControlNet folder (default: a temporary one; reused if trained)")
    p.add_argument("--picture", type=Path, help="write control | ControlNet | base rows here")
    p.add_argument("--goal-iou-ratio", type=float, default=2.0)
    p.add_argument("--quick", action="store_true", help="tiny settings, goals not enforced")
    args = p.parse_args()
    if args.quick:
        args.time_budget, args.n, args.steps = 20.0, 32, 5
    torch.set_num_threads(1)
    if not (args.base / "config.json").is_file():
        sys.exit(f"no base run at {args.base}: train one (difflab train --data mnist --out {args.base}) "
                 "or pass --base")

    import difflab
    from difflab.conditioning.control import ControlConfig, as_control, compute_control
    from difflab.data import DataConfig
    from difflab.eval import digit_probs, fd_digit
    from difflab.train.controlnet import train_controlnet

    machine_report(torch.device("cpu"))
    base_before = tree_digest(args.base)
    tmp = tempfile.TemporaryDirectory()
    out = args.out or Path(tmp.name) / "edges"
    cfg = ControlConfig(kind="edges")
    if not (out / "controlnet.safetensors").is_file():
        t0 = time.perf_counter()
        data = DataConfig(source="mnist", limit=TRAIN_DIGITS)
        res = train_controlnet(args.base, out, control=cfg, data=data, time_budget=args.time_budget,
                               lr=args.lr, batch_size=args.batch_size, progress=False,
                               log=lambda s: print("  " + s, flush=True), sample_every=10**9)
        print(f"\ntrained {res.steps} steps of {args.batch_size} in {res.seconds:.0f} s of training "
              f"({time.perf_counter() - t0:.0f} s with the control cache and checkpoints)\n")

    base = difflab.load(args.base, "cpu")
    controlled = base.with_controlnet(out)
    digits, labels = held_out(2 * args.n)
    real, floor_real = digits[: args.n], digits[args.n:]
    control = as_control(compute_control(real, cfg))
    kw = {"steps": args.steps, "seed": 0}
    t0 = time.perf_counter()
    plain = base.sample(args.n, **kw)
    t_base = time.perf_counter() - t0
    t0 = time.perf_counter()
    guided = controlled.sample(args.n, control=control, **kw)
    t_cn = time.perf_counter() - t0
    zero = controlled.sample(min(args.n, 16), control=control[:16], control_scale=0.0, **kw)
    same = torch.equal(zero, plain[: len(zero)])

    real_f = real.float() / 127.5 - 1
    floor_f = floor_real.float() / 127.5 - 1
    rows = []
    for label, images, seconds in (("base, no control", plain, t_base),
                                   ("ControlNet (edges), scale 1", guided, t_cn)):
        iou, chamfer = edge_agreement(control, images, cfg)
        agree = float((digit_probs(images).argmax(1) == labels[: args.n]).float().mean())
        rows.append((label, iou.mean(), chamfer.mean(), agree, fd_digit(images, real_f), args.n / seconds))
    r_agree = float((digit_probs(floor_f).argmax(1) == labels[args.n:]).float().mean())
    print(f"| {args.n} held-out digits' edges ({base.config.sample_sampler}, {args.steps} steps) | "
          "edge IoU | Chamfer (px) | digit agreement | FD-digit to the held-out digits | images/s |\n"
          "|---|---|---|---|---|---|")
    for label, iou, ch, agree, fd, ips in rows:
        print(f"| {label} | {iou:.3f} | {ch:.2f} | {agree:.1%} | {fd:.1f} | {ips:.1f} |")
    print(f"| real digits (other {args.n}) | | | {r_agree:.1%} | {fd_digit(floor_f, real_f):.1f} | |")
    ratio = rows[1][1] / max(rows[0][1], 1e-9)
    print(f"\nedge IoU ControlNet / base: {ratio:.2f}x; scale-0 samples identical to the base's: {same}")

    if args.picture is not None:
        from difflab.viz import save_grid

        k = 10
        grid = torch.cat([control[:k] * 2 - 1, guided[:k], plain[:k]])
        save_grid(grid, args.picture, nrow=k, scale=2)
        print(f"wrote {args.picture} (rows: control edges, ControlNet samples, base samples, same seeds)")

    missed = []
    if ratio < args.goal_iou_ratio:
        missed.append(f"the ControlNet's edge IoU is {ratio:.2f}x the base's (goal >= {args.goal_iou_ratio})")
    if not same:
        missed.append("samples at control scale 0 differ from the base run's")
    if tree_digest(args.base) != base_before:
        missed.append(f"the base run folder {args.base} changed")
    print(load_report("at the end"))
    exit_on_missed(missed, "ControlNet goal missed", enforce=not args.quick)


if __name__ == "__main__":
    main()
