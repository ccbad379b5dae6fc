"""Training speed: images/s and peak memory of difflab's training against a plain diffusers loop.

The reference ("recipe") is the training loop of the diffusers course as seed 003 writes it: a
``UNet2DModel`` (1.7M parameters), ``DDPMScheduler(1000, "squaredcos_cap_v2").add_noise``, eps
target with ``F.mse_loss``, AdamW lr 4e-4, a shuffling ``DataLoader`` over the embedded MNIST
(resized once to 32x32; the course's ``ToTensor`` is a per-item uint8 -> float), ``zero_grad;
backward; step`` and ``loss.item()`` every step, batch 128.

Sections (``--sections``; each fits in ~10 minutes on one loaded CPU core, so run them apart):

- ``compare``: images/s of the recipe and of (a) ``difflab.train`` with the *same* UNet2DModel
  and the same recipe (eps target, unweighted MSE, AdamW 4e-4, no EMA; written out in
  ``bench_common.recipe_config``, not the seed003 preset, which follows the study notes): the
  loop's overhead; (b) ``difflab.train`` with difflab's UNet widened to at least the recipe's
  parameter count, same batch and image size, difflab's default recipe otherwise (v target,
  min-SNR, EMA, grad clipping): the "equal network size" ratio; (b') the same with the default
  width and one more level (mult (1, 2, 4, 6): 1.709M parameters at 32x32); (c) difflab's default
  as shipped (0.67M, batch 32, 28x28). Configs run interleaved in one process (one warm-up step
  each, then rounds of ``--seconds`` chunks in rotating order); images/s counts only loop time
  (the loop's own clock from ``on_step``: no setup, no final checkpoint); the ratio is the median
  of the per-round ratios. Equal parameter counts are not equal compute, so every row also gives
  its FLOPs per image and the achieved GFLOP/s, each also as a ratio to the recipe: speed ratio =
  (recipe FLOPs / row FLOPs) x (row GFLOP/s / recipe GFLOP/s), i.e. how much of the speed-up is
  doing less work and how much is doing it faster.
  Goals (exit status 1 with a loud message when one is missed; reported only with ``--quick``):
  (b) trains at least ``--goal`` (1.5) times the recipe's images/s; (a) and (b) are not slower
  than the recipe by more than ``--tolerance``.
- ``memory``: each config in a fresh subprocess for ``--mem-steps`` steps: peak RSS (VmHWM, or
  ``ru_maxrss`` off Linux) minus the RSS after the imports, the peak reset there (on CUDA:
  ``torch.cuda.max_memory_allocated``).
- ``levers``: a lever study on a minimal train step that mirrors difflab's loop (diffusion_loss
  with v target and min-SNR, AdamW, grad clipping, EMA update, ``loss.item()``) on difflab's
  default UNet (``--lever-net default``: 0.67M, batch 32, 28x28; ``equal``: the net of (b) at
  ``--batch``/``--image-size``; ``--lever-batch``/``--lever-size`` change them): channels_last,
  ``torch.compile``, bf16 autocast, AdamW foreach / fused, oneDNN (mkldnn) off; interleaved
  rounds, median step time, compile/warm-up time apart; then the parameter updates timed alone.
- ``scaling``: ms/step and images/s of ``difflab.train`` with the default UNet for each size in
  ``--sizes`` (the default net config at that size) and batch in ``--batches``.

FLOPs per image (forward + backward, ``torch.utils.flop_counter.FlopCounterMode``, attention
through PyTorch's math kernel so that it is counted: the fused CPU attention kernel is invisible
to the counter) are reported with each row; with ``--peak-tflops`` (the device's peak) also the
model FLOP utilisation (MFU). On CUDA the
runs use the GPU (difflab's loop then trains in bf16 autocast; the recipe stays fp32 as written).

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_train_speed.py --quick   # ~1 minute
    OMP_NUM_THREADS=1 python benchmarks/bench_train_speed.py --sections compare   # ~6 minutes
    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_train_speed.py --sections compare
    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_train_speed.py --sections memory
    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_train_speed.py --sections levers
    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_train_speed.py --sections scaling
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from difflab.data import Batcher, ImageDataset, load_dataset, parse_data_spec
from difflab.losses import diffusion_loss
from difflab.nets import build_net, default_net_config, param_count
from difflab.train import TrainConfig, train
from difflab.train.ema import EMA

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (
    RECIPE_BLOCKS,
    RECIPE_DOWN,
    RECIPE_UP,
    exit_on_missed,
    load_report,
    machine_line,
    machine_report,
    recipe_config,
    recipe_net_config,
    sync,
)

BIG = 10**9  # steps / checkpoint / sample intervals that never fire: the time limit ends the runs
SECTIONS = ("compare", "memory", "levers", "scaling")


# ---- the configs ---------------------------------------------------------------------------------
def recipe_unet(image_size: int) -> nn.Module:
    """The course's UNet2DModel (seed 003's MNIST recipe) at ``image_size``."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=image_size, in_channels=1, out_channels=1, layers_per_block=2,
        block_out_channels=RECIPE_BLOCKS, down_block_types=RECIPE_DOWN, up_block_types=RECIPE_UP,
    )


def equal_size_net(image_size: int, target: int) -> Any:
    """difflab's default UNet at ``image_size`` widened (base_channels) to the smallest width with
    at least ``target`` parameters: never smaller than the network it is compared with."""
    base = default_net_config("unet", in_channels=1, image_size=image_size)
    for width in range(base.base_channels, 257, 2):
        cfg = base.replace(base_channels=width)
        if param_count(build_net(cfg)) >= target:
            return cfg
    raise ValueError(f"no width up to 256 reaches {target} parameters")


@dataclass
class Row:
    key: str
    label: str
    batch: int
    image_size: int
    params: int
    cfg: TrainConfig | None = None  # None: the recipe
    net_desc: str = ""


def make_rows(args: argparse.Namespace) -> list[Row]:
    s, b = args.image_size, args.batch
    data = parse_data_spec("mnist", image_size=s)
    common = {"steps": BIG, "checkpoint_every": BIG, "sample_every": BIG, "device": args.device}
    recipe_params = param_count(recipe_unet(s))
    a = recipe_config(s, batch_size=b, **common)
    net_b = equal_size_net(s, recipe_params)
    b_cfg = TrainConfig(data=data, net=net_b, batch_size=b, **common)
    default_s = default_net_config("unet", in_channels=1, image_size=s)
    net_b2 = default_s.replace(channel_mult=(*default_s.channel_mult, 6))
    b2_cfg = TrainConfig(data=data, net=net_b2, batch_size=b, **common)
    c_cfg = TrainConfig(**common)
    net_c = default_net_config("unet", in_channels=1, image_size=28)
    diff_a = recipe_net_config(s)
    rows = [
        Row("recipe", "recipe: diffusers-course loop, UNet2DModel", b, s, recipe_params,
            net_desc="UNet2DModel (32, 64, 64)"),
        Row("a", "(a) difflab.train, the same UNet2DModel and recipe", b, s,
            param_count(build_net(diff_a)), a, "UNet2DModel (32, 64, 64)"),
        Row("b", "(b) difflab.train, difflab UNet of equal size", b, s, param_count(build_net(net_b)),
            b_cfg, f"UNet base {net_b.base_channels}, mult {net_b.channel_mult}"),
        Row("b2", "(b') difflab.train, difflab UNet of equal size, one more level", b, s,
            param_count(build_net(net_b2)), b2_cfg,
            f"UNet base {net_b2.base_channels}, mult {net_b2.channel_mult}"),
        Row("c", "(c) difflab default as shipped", 32, 28, param_count(build_net(net_c)), c_cfg,
            f"UNet base {net_c.base_channels}, mult {net_c.channel_mult}"),
    ]
    keep = set(getattr(args, "configs", None) or [r.key for r in rows])
    return [r for r in rows if r.key in keep]


# ---- timed runs ----------------------------------------------------------------------------------
class _Stop(Exception):
    """Raised from ``on_step`` to end a run after a fixed number of steps."""


@dataclass
class Chunk:
    """One timed run: ``ends[i]`` is the loop time (s) at the end of step i, ``images[i]`` its
    batch. On CUDA the last step is left out (its end was read before the device finished)."""

    ends: list[float] = field(default_factory=list)
    images: list[int] = field(default_factory=list)
    cuda: bool = False

    @property
    def steps(self) -> int:
        return len(self.ends)

    def images_per_s(self) -> float:
        n = len(self.ends) - 1 if self.cuda and len(self.ends) > 1 else len(self.ends)
        return sum(self.images[:n]) / self.ends[n - 1]

    def step_times(self) -> list[float]:
        return [b - a for a, b in zip([0.0, *self.ends[:-1]], self.ends, strict=True)]


class _CourseDataset(torch.utils.data.Dataset):
    """MNIST as the course reads it: per item, uint8 -> float in [0, 1] (``ToTensor``)."""

    def __init__(self, data: ImageDataset) -> None:
        self.images, self.labels = data.images, data.labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i].float() / 255.0, int(self.labels[i]) if self.labels is not None else 0


def run_recipe(row: Row, device: torch.device, seconds: float | None = None, steps: int | None = None,
               seed: int = 0) -> Chunk:
    """The diffusers-course training loop, stopped after ``seconds`` (checked after each step,
    like difflab's ``max_seconds``) or ``steps``."""
    from diffusers import DDPMScheduler

    data = load_dataset(parse_data_spec("mnist", image_size=row.image_size))
    torch.manual_seed(seed)
    loader = torch.utils.data.DataLoader(_CourseDataset(data), batch_size=row.batch, shuffle=True)
    net = recipe_unet(row.image_size).to(device)
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    opt = torch.optim.AdamW(net.parameters(), lr=4e-4)
    losses: list[float] = []
    chunk = Chunk(cuda=device.type == "cuda")
    t0 = time.perf_counter()
    while True:
        for x, _y in loader:
            x = x.to(device) * 2 - 1
            noise = torch.randn_like(x)
            timesteps = torch.randint(0, 999, (x.shape[0],), device=device).long()
            noisy_x = noise_scheduler.add_noise(x, noise, timesteps)
            pred = net(noisy_x, timesteps).sample
            loss = F.mse_loss(pred, noise)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            chunk.ends.append(time.perf_counter() - t0)
            chunk.images.append(x.shape[0])
            if (steps is not None and chunk.steps >= steps) or (
                seconds is not None and chunk.ends[-1] > seconds
            ):
                return chunk


def run_difflab(row: Row, root: Path, device: torch.device, seconds: float | None = None,
                steps: int | None = None) -> Chunk:
    """``difflab.train`` with ``max_seconds=seconds`` (or stopped after ``steps``) in a fresh
    run folder; the step ends come from ``on_step``, i.e. the loop's own clock."""
    assert row.cfg is not None
    chunk = Chunk(cuda=device.type == "cuda")

    def on_step(step: int, elapsed: float, _ema: nn.Module) -> None:
        sync(device)
        chunk.ends.append(elapsed)
        chunk.images.append(row.batch)
        if steps is not None and step >= steps:
            raise _Stop

    out = Path(tempfile.mkdtemp(prefix=f"{row.key}-", dir=root))
    with contextlib.suppress(_Stop):
        train(row.cfg, out, progress=False, log=lambda _: None, max_seconds=seconds, on_step=on_step)
    return chunk


def run_row(row: Row, root: Path, device: torch.device, seconds: float | None = None,
            steps: int | None = None) -> Chunk:
    if row.cfg is None:
        return run_recipe(row, device, seconds, steps)
    return run_difflab(row, root, device, seconds, steps)


# ---- FLOPs -----------------------------------------------------------------------------------------
def flops_per_image(net: nn.Module, image_size: int, device: torch.device, batch: int = 2) -> float:
    """Forward + backward FLOPs of one training step per image (``torch.utils.flop_counter``)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    net = net.to(device)
    x = torch.randn(batch, 1, image_size, image_size, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    # the fused attention kernels (CPU flash attention) are not counted; the math kernel's matmuls are
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = net(x, t)
        out = getattr(out, "sample", out)
        out.float().square().mean().backward()
    return counter.get_total_flops() / batch


def row_flops(row: Row, device: torch.device) -> float:
    if row.cfg is None:
        return flops_per_image(recipe_unet(row.image_size), row.image_size, device)
    net_cfg = row.cfg.net or default_net_config(row.cfg.net_kind, in_channels=1, image_size=row.image_size)
    return flops_per_image(build_net(net_cfg), row.image_size, device)


def flops_cells(flops: float, ips: float, peak_tflops: float | None) -> str:
    achieved = flops * ips / 1e9
    mfu = f"{100 * achieved / (peak_tflops * 1e3):.2f}%" if peak_tflops else "-"
    return f"{flops / 1e9:.3f} | {achieved:.1f} | {mfu}"


def compute_cells(flops: float, ratio: float, recipe_flops: float) -> tuple[str, float, float]:
    """(table cells, FLOPs ratio, GFLOP/s ratio) of a row against the recipe: its FLOPs per image
    as a share of the recipe's, and its achieved GFLOP/s over the recipe's (= speed ratio x FLOPs
    ratio, both images/s measured in the same rounds)."""
    flop_ratio = flops / recipe_flops
    return f"{flop_ratio:.2f}x | {ratio * flop_ratio:.2f}x", flop_ratio, ratio * flop_ratio


# ---- sections ------------------------------------------------------------------------------------
def section_compare(args: argparse.Namespace, rows: list[Row], root: Path, device: torch.device
                    ) -> tuple[list[dict[str, Any]], list[str]]:
    by_key = {r.key: r for r in rows}
    if "recipe" not in by_key:
        raise SystemExit("--sections compare needs the recipe among --configs")
    print(f"\n### Training images/s: difflab vs the diffusers-course loop ({args.rounds} interleaved "
          f"rounds of {args.seconds:g} s per config after a warm-up step, median)\n", flush=True)
    for row in rows:  # warm-up: allocator, oneDNN primitives, lazy imports
        run_row(row, root, device, steps=1)
    rates: dict[str, list[float]] = {r.key: [] for r in rows}
    steps: dict[str, int] = dict.fromkeys(rates, 0)
    for rnd in range(args.rounds):
        order = rows[rnd % len(rows):] + rows[: rnd % len(rows)]
        for row in order:
            chunk = run_row(row, root, device, seconds=args.seconds)
            rates[row.key].append(chunk.images_per_s())
            steps[row.key] += chunk.steps
            print(f"  round {rnd + 1} {row.key}: {chunk.steps} steps, {rates[row.key][-1]:.2f} images/s",
                  flush=True)
    flops = {r.key: row_flops(r, device) for r in rows}
    print(f"\n{load_report('after the timed rounds')}\n")
    print("| config | network | params | batch | size | steps timed | images/s | images/s vs recipe | "
          "GFLOP/image (fwd+bwd) | GFLOP/s achieved | MFU | FLOPs/image vs recipe | GFLOP/s vs recipe |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    out, failures = [], []
    for row in rows:
        ips = statistics.median(rates[row.key])
        ratio = statistics.median(a / b for a, b in zip(rates[row.key], rates["recipe"], strict=True))
        cells, flop_ratio, gflops_ratio = compute_cells(flops[row.key], ratio, flops["recipe"])
        print(f"| {row.label} | {row.net_desc} | {row.params:,} | {row.batch} | {row.image_size} | "
              f"{steps[row.key]} | {ips:.2f} | {ratio:.2f}x | "
              f"{flops_cells(flops[row.key], ips, args.peak_tflops)} | {cells} |")
        out.append({"config": row.key, "label": row.label, "params": row.params, "batch": row.batch,
                    "image_size": row.image_size, "steps": steps[row.key], "images_per_s": ips,
                    "rates": rates[row.key], "ratio_to_recipe": ratio,
                    "gflop_per_image": flops[row.key] / 1e9, "gflop_per_s": flops[row.key] * ips / 1e9,
                    "flops_vs_recipe": flop_ratio, "gflop_per_s_vs_recipe": gflops_ratio})
        if row.key in ("a", "b") and ratio < 1 - args.tolerance:
            failures.append(f"{row.label}: {ratio:.2f}x the recipe's images/s (regression: tolerance "
                            f"{args.tolerance:.0%})")
    if "b" in by_key:
        b = next(r for r in out if r["config"] == "b")
        met = b["ratio_to_recipe"] >= args.goal
        print(f"\nparams: recipe {by_key['recipe'].params:,}, (b) {by_key['b'].params:,} "
              f"({100 * (by_key['b'].params / by_key['recipe'].params - 1):+.1f}%). At equal size (b) "
              f"trains {b['ratio_to_recipe']:.2f}x the recipe's images/s doing {b['flops_vs_recipe']:.2f}x "
              f"its FLOPs per image ({100 * (1 - b['flops_vs_recipe']):.0f}% fewer) at "
              f"{b['gflop_per_s_vs_recipe']:.2f}x its GFLOP/s. Goal >= {args.goal:g}x images/s: "
              f"{'met' if met else 'NOT met'}")
        if not met:
            failures.append(f"{by_key['b'].label}: {b['ratio_to_recipe']:.2f}x the recipe's images/s, "
                            f"goal {args.goal:g}x")
    return out, failures


def reset_peak_rss() -> bool:
    """Reset the process's peak RSS (``ru_maxrss``, VmHWM) to its current RSS: Linux
    ``/proc/self/clear_refs`` 5. False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_kb() -> int:
    """This process's peak RSS in KiB: VmHWM from /proc/self/status where there is one, else
    ``ru_maxrss``. (A child's ``ru_maxrss`` also holds the peak of the forked copy of its parent
    before exec, so a child of a large parent would read that; VmHWM is the child's own.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_memory_child(args: argparse.Namespace) -> None:
    """Internal (``--child KEY``): run one config for ``--mem-steps`` steps, print its memory."""
    import diffusers  # noqa: F401  (imports before the baseline)

    import difflab.viz  # noqa: F401

    device = resolve(args.device)
    row = next(r for r in make_rows(args) if r.key == args.child)
    with tempfile.TemporaryDirectory() as tmp:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        reset = reset_peak_rss()  # building the networks to count parameters peaked above this
        base_kb = peak_rss_kb()
        run_row(row, Path(tmp), device, steps=args.mem_steps)
        peak_kb = peak_rss_kb()
        result = {"key": row.key, "rss_after_imports_mb": base_kb / 1024, "peak_rss_mb": peak_kb / 1024,
                  "train_rss_mb": (peak_kb - base_kb) / 1024, "peak_reset": reset}
        if device.type == "cuda":
            result["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    print("CHILD " + json.dumps(result))


def section_memory(args: argparse.Namespace, rows: list[Row]) -> list[dict[str, Any]]:
    print(f"\n### Peak memory ({args.mem_steps} steps per config, each in a fresh process)\n", flush=True)
    cuda = resolve(args.device).type == "cuda"
    print("| config | batch | size | RSS after imports MB | peak RSS MB | training adds MB |"
          + (" CUDA max allocated MB |" if cuda else ""))
    print("|---|---|---|---|---|---|" + ("---|" if cuda else ""))
    out = []
    for row in rows:
        cmd = [sys.executable, __file__, "--child", row.key, "--mem-steps", str(args.mem_steps),
               "--batch", str(args.batch), "--image-size", str(args.image_size), "--device", args.device]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("CHILD ")]
        if proc.returncode or not lines:
            raise RuntimeError(f"memory run of {row.key} failed:\n{proc.stdout}\n{proc.stderr}")
        res = json.loads(lines[-1][6:])
        extra = f" {res['cuda_max_allocated_mb']:.0f} |" if cuda else ""
        if not res["peak_reset"]:
            print("(could not reset the peak RSS: training peaks below the import peak read as 0)")
        print(f"| {row.label} | {row.batch} | {row.image_size} | {res['rss_after_imports_mb']:.0f} | "
              f"{res['peak_rss_mb']:.0f} | {res['train_rss_mb']:.0f} |{extra}", flush=True)
        out.append({"config": row.key, **res})
    return out


@dataclass(frozen=True)
class Lever:
    channels_last: bool = False
    compile: bool = False
    bf16: bool = False
    optimizer: str = "default"  # default (for-loop on CPU) | foreach | fused
    mkldnn: bool = True


LEVERS: dict[str, Lever] = {
    "baseline": Lever(),  # eager, fp32, contiguous, AdamW's default (a for-loop on CPU): the loop today
    "channels-last": Lever(channels_last=True),
    "bf16": Lever(bf16=True),
    "adamw-foreach": Lever(optimizer="foreach"),
    "adamw-fused": Lever(optimizer="fused"),
    "mkldnn-off": Lever(mkldnn=False),
    "channels-last+foreach": Lever(channels_last=True, optimizer="foreach"),
    "compile": Lever(compile=True),
    "compile+foreach": Lever(compile=True, optimizer="foreach"),
    "compile+fused": Lever(compile=True, optimizer="fused"),
    "compile+channels-last": Lever(compile=True, channels_last=True),
}
LEVER_NOTES = {
    "baseline": "eager fp32, AdamW default (for-loop on CPU, fused on CUDA in the loop)",
    "bf16": "torch.autocast bf16",
    "mkldnn-off": "torch.backends.mkldnn disabled",
    "compile": "torch.compile(net), default mode",
}


class LeverStep:
    """A minimal train step mirroring difflab's loop (lever study only): batch from the Batcher,
    v-target diffusion loss with min-SNR-5, AdamW (lr 2e-3), grad-norm clipping at 1, EMA 0.999,
    ``loss.item()``."""

    def __init__(self, lever: Lever, net_cfg: Any, data: ImageDataset, batch: int, device: torch.device,
                 schedule: Any) -> None:
        self.lever, self.data, self.device, self.schedule = lever, data, device, schedule
        torch.manual_seed(0)
        net = build_net(net_cfg).to(device)
        if lever.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        self.ema = EMA(net, 0.999)
        self.model = torch.compile(net) if lever.compile else net
        kw = {"fused": True} if lever.optimizer == "fused" else {"foreach": True} if (
            lever.optimizer == "foreach") else {}
        self.opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.0, **kw)
        self.batcher = Batcher(len(data), batch, 0)
        self.gen = torch.Generator().manual_seed(1)

    def step(self) -> float:
        with torch.backends.mkldnn.flags(enabled=self.lever.mkldnn):
            x0, _ = self.batcher.next_batch(self.data, device=self.device)
            t = torch.randint(0, self.schedule.T, (x0.shape[0],), generator=self.gen).to(self.device)
            noise = torch.randn(x0.shape, generator=self.gen).to(self.device)
            if self.lever.channels_last:
                x0 = x0.contiguous(memory_format=torch.channels_last)
                noise = noise.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.lever.bf16):
                loss = diffusion_loss(self.model, x0, t, noise, schedule=self.schedule, prediction="v",
                                      weighting="min-snr", snr_gamma=5.0)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
            self.opt.step()
            self.ema.update(self.net)
            return loss.item()


def isolated_costs(net_cfg: Any, device: torch.device, repeats: int = 20) -> dict[str, float]:
    """Median ms of the per-step parameter updates alone (random gradients), free of the noise of
    whole steps: AdamW default / foreach / fused, the EMA update and grad-norm clipping."""

    def median_ms(fn: Callable[[], object]) -> float:
        fn()
        times = []
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(times)

    net = build_net(net_cfg).to(device)
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    out = {}
    for kind, kw in (("default", {}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4, **kw)
        out[f"AdamW step ({kind})"] = median_ms(opt.step)
    ema = EMA(net, 0.999)
    out["EMA update"] = median_ms(lambda: ema.update(net))
    out["clip_grad_norm_"] = median_ms(lambda: nn.utils.clip_grad_norm_(net.parameters(), 1.0))
    return out


def section_levers(args: argparse.Namespace, rows: list[Row], device: torch.device) -> list[dict[str, Any]]:
    if args.lever_net == "equal":
        row = next(r for r in rows if r.key == "b")
        net_cfg, batch, size = row.cfg.net, args.batch, args.image_size  # type: ignore[union-attr]
        if args.lever_size:
            net_cfg = equal_size_net(args.lever_size, row.params)
    else:
        size = args.lever_size or 28
        net_cfg, batch = default_net_config("unet", in_channels=1, image_size=size), 32
    batch = args.lever_batch or batch
    names = args.levers or [n for n in LEVERS if not (args.quick and LEVERS[n].compile)]
    if "baseline" in names:  # the speed-ups are relative to the first lever
        names = ["baseline", *[n for n in names if n != "baseline"]]
    data = load_dataset(parse_data_spec("mnist", image_size=size))
    schedule = TrainConfig().make_schedule()
    print(f"\n### Lever study (minimal train step mirroring the loop): difflab UNet "
          f"{param_count(build_net(net_cfg)):,} params, batch {batch}, {size}x{size}; "
          f"{args.lever_rounds} interleaved rounds of {args.lever_steps} steps, median\n", flush=True)
    steps: dict[str, LeverStep] = {}
    warm: dict[str, float] = {}
    for name in names:  # build and warm up (the first two steps include torch.compile's compile)
        steps[name] = LeverStep(LEVERS[name], net_cfg, data, batch, device, schedule)
        t0 = time.perf_counter()
        for _ in range(2):
            steps[name].step()
        sync(device)
        warm[name] = time.perf_counter() - t0
        print(f"  warm-up {name}: {warm[name]:.1f} s", flush=True)
    times: dict[str, list[float]] = {n: [] for n in names}
    for rnd in range(args.lever_rounds):
        order = names[rnd % len(names):] + names[: rnd % len(names)]
        for name in order:
            t0 = time.perf_counter()
            for _ in range(args.lever_steps):
                steps[name].step()
            sync(device)
            times[name].append((time.perf_counter() - t0) / args.lever_steps)
    base = names[0]
    print(f"| lever | ms/step | images/s | speed-up vs {names[0]} | warm-up s (2 steps, incl. compile) |")
    print("|---|---|---|---|---|")
    out = []
    for name in names:
        ms = 1e3 * statistics.median(times[name])
        speedup = statistics.median(b / a for a, b in zip(times[name], times[base], strict=True))
        note = f" ({LEVER_NOTES[name]})" if name in LEVER_NOTES else ""
        print(f"| {name}{note} | {ms:.1f} | {batch / ms * 1e3:.1f} | {speedup:.2f}x | {warm[name]:.1f} |")
        out.append({"lever": name, "ms_per_step": ms, "images_per_s": batch / ms * 1e3,
                    "speedup": speedup, "warmup_s": warm[name], "times": times[name]})
    costs = isolated_costs(net_cfg, device)
    base_ms = 1e3 * statistics.median(times[base])
    print("\nThe parameter updates alone (median of 20, random gradients; share of a baseline step):\n")
    print("| update | ms | share of a step |")
    print("|---|---|---|")
    for what, ms in costs.items():
        print(f"| {what} | {ms:.2f} | {100 * ms / base_ms:.1f}% |")
    out.append({"isolated_ms": costs})
    return out


def section_scaling(args: argparse.Namespace, root: Path, device: torch.device) -> list[dict[str, Any]]:
    print(f"\n### difflab.train with the default UNet: ms/step by image size and batch "
          f"({args.scaling_steps} steps each, the first left out as warm-up when there are more)\n",
          flush=True)
    print("| size | net params | batch | ms/step | images/s | GFLOP/image |")
    print("|---|---|---|---|---|---|")
    out = []
    for size in args.sizes:
        net_cfg = default_net_config("unet", in_channels=1, image_size=size)
        params = param_count(build_net(net_cfg))
        flops = flops_per_image(build_net(net_cfg), size, device)
        for batch in args.batches:
            cfg = TrainConfig(data=parse_data_spec("mnist", image_size=size), batch_size=batch, steps=BIG,
                              checkpoint_every=BIG, sample_every=BIG, device=args.device)
            row = Row(f"s{size}b{batch}", "", batch, size, params, cfg)
            chunk = run_difflab(row, root, device, steps=args.scaling_steps)
            st = chunk.step_times()
            ms = 1e3 * statistics.median(st[1:] if len(st) > 1 else st)
            ips = batch / ms * 1e3
            print(f"| {size} | {params:,} | {batch} | {ms:.0f} | {ips:.1f} | {flops / 1e9:.3f} |", flush=True)
            out.append({"image_size": size, "batch": batch, "params": params, "ms_per_step": ms,
                        "images_per_s": batch / ms * 1e3, "gflop_per_image": flops / 1e9})
    return out


# ---- main ----------------------------------------------------------------------------------------
def resolve(name: str) -> torch.device:
    from difflab.device import resolve_device

    return resolve_device(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--quick", action="store_true", help="tiny settings: checks the script runs")
    parser.add_argument("--batch", type=int, default=128, help="batch of the recipe, (a) and (b)")
    parser.add_argument("--image-size", type=int, default=32, help="image size of the recipe, (a) and (b)")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="compare: loop time per chunk (short chunks follow a changing load better)")
    parser.add_argument("--rounds", type=int, default=8, help="compare: interleaved rounds")
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="compare: fail when (a) or (b) is below 1 - tolerance times the recipe")
    parser.add_argument("--goal", type=float, default=1.5,
                        help="compare: fail when (b), equal size, is below goal times the recipe's images/s")
    parser.add_argument("--configs", nargs="+", choices=("recipe", "a", "b", "b2", "c"),
                        help="compare/memory: the rows to run (default: all)")
    parser.add_argument("--mem-steps", type=int, default=2)
    parser.add_argument("--lever-net", choices=("default", "equal"), default="default")
    parser.add_argument("--levers", nargs="*", choices=tuple(LEVERS), help="default: all")
    parser.add_argument("--lever-batch", type=int, help="default: 32 (default net), --batch (equal)")
    parser.add_argument("--lever-size", type=int, help="default: 28 (default net), --image-size (equal)")
    parser.add_argument("--lever-rounds", type=int, default=5)
    parser.add_argument("--lever-steps", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[28, 32, 64])
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--scaling-steps", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s, for MFU")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, help="keep the run folders here (default: a temporary folder)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
    if args.child:
        peak_memory_child(args)
        return
    if args.quick:
        args.batch, args.seconds, args.rounds, args.mem_steps = 4, 1.0, 1, 1
        args.lever_rounds, args.lever_steps, args.scaling_steps = 1, 1, 1
        args.lever_batch = args.lever_batch or 4
        args.levers = args.levers or ["baseline", "channels-last", "adamw-fused"]
        args.sizes, args.batches = [28], [4]
        args.configs = args.configs or ["recipe", "b", "c"]
    device = resolve(args.device)
    machine_report(device)
    rows = make_rows(args)
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "out", "child")}
    results: dict[str, Any] = {"machine": machine_line(device), "args": settings}
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        if "compare" in args.sections:
            results["compare"], failures = section_compare(args, rows, root, device)
        if "memory" in args.sections:
            results["memory"] = section_memory(args, rows)
        if "levers" in args.sections:
            results["levers"] = section_levers(args, rows, device)
        if "scaling" in args.sections:
            results["scaling"] = section_scaling(args, root, device)
    print(load_report("at the end"))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    exit_on_missed(failures, "GOAL MISSED: difflab's training speed against the diffusers-course recipe",
                   enforce=not args.quick)


if __name__ == "__main__":
    main()
