"""Pictures: image grids, denoising GIFs, forward-process strips, denoising progressions, and plots
of noise schedules and training losses.

Pixel convention: model-space images are floats in [-1, 1] laid out [N, C, H, W] (torch tensors
or numpy float arrays); they map to uint8 by clipping to [-1, 1] then ``round((x + 1) * 127.5)``,
so -1 -> 0, 0 -> 128 and 1 -> 255, the same for every frame of a GIF (the study notes instead
stretch each image to its own min..max, which makes early noisy frames look cleaner than they
are; ``save_gif(..., normalize="minmax")`` does that if wanted). uint8 torch tensors are taken
as [N, C, H, W] pixels; uint8 numpy arrays as [N, H, W, C] (or one H x W (x C) image).

Figures use matplotlib's object API on an Agg canvas, imported inside the functions: importing
difflab stays fast and no pyplot state or backend is touched.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from difflab.schedules import NoiseSchedule

ImagesLike = Tensor | np.ndarray
DEFAULT_FRACTIONS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


# ---- pixels and grids ------------------------------------------------------------------------
def to_uint8(images: ImagesLike) -> np.ndarray:
    """Images in [-1, 1] ([N, C, H, W] or one [C, H, W]) -> uint8 numpy [N, H, W, C] (values
    outside [-1, 1] are clipped, NaN becomes -1). uint8 inputs pass through (see module doc)."""
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        if images.ndim == 2:
            return images[None, :, :, None]
        return images[None] if images.ndim == 3 else images
    x = torch.as_tensor(images).detach().cpu()
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"expected images [N, C, H, W], got shape {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        x = torch.nan_to_num(x.float(), nan=-1.0).clamp(-1, 1).add(1).mul(127.5).round()
        x = x.to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def make_grid(
    images: ImagesLike, nrow: int | None = None, padding: int = 2, pad_value: int = 255
) -> np.ndarray:
    """Tile images into one uint8 array H x W x C (C = 1 for grey: ``grid[..., 0]`` is the 2-D
    picture). ``nrow`` images per row (default ceil(sqrt(N))); tile ``i`` sits at row
    ``i // nrow``, column ``i % nrow``; ``padding`` pixels of ``pad_value`` (0-255) surround and
    separate the tiles, as torchvision's make_grid."""
    pixels = to_uint8(images)
    n, h, w, c = pixels.shape
    nrow = max(1, min(nrow or math.ceil(math.sqrt(n)), n))
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + padding) + padding, nrow * (w + padding) + padding, c),
                   pad_value, dtype=np.uint8)  # fmt: skip
    for i in range(n):
        top = padding + (i // nrow) * (h + padding)
        left = padding + (i % nrow) * (w + padding)
        grid[top : top + h, left : left + w] = pixels[i]
    return grid


def _to_pil(pixels: np.ndarray, scale: int = 1) -> Image.Image:
    img = Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels)
    if pixels.ndim == 3 and pixels.shape[-1] == 4:
        img = img.convert("RGB")
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    return img


def save_grid(
    images: ImagesLike,
    path: str | Path,
    nrow: int | None = None,
    padding: int = 2,
    pad_value: int = 255,
    scale: int = 1,
) -> Path:
    """Save :func:`make_grid` as a PNG (grey stays 8-bit grey); ``scale`` enlarges each pixel to
    scale x scale (nearest), handy for 28x28 digits."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _to_pil(make_grid(images, nrow, padding, pad_value), scale).save(path)
    return path


# ---- GIFs ------------------------------------------------------------------------------------
def _minmax(x: Tensor) -> Tensor:
    """Stretch each image to [-1, 1] on its own (the study notes' GIF normalisation)."""
    flat = x.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    scale = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    return ((flat - lo[:, None]) / scale[:, None] * 2 - 1).view_as(x)


def _frame(item: ImagesLike, nrow: int | None, padding: int, normalize: str) -> np.ndarray:
    if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim in (2, 3):
        return item[..., None] if item.ndim == 2 else item
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        return make_grid(item, nrow, padding)
    x = torch.as_tensor(item).detach().cpu()
    x = x[None] if x.ndim == 3 else x
    if normalize == "minmax" and x.dtype != torch.uint8:
        x = _minmax(x.float())
    return make_grid(x, nrow, padding)


def save_gif(
    frames: Sequence[ImagesLike],
    path: str | Path,
    duration_s: float = 0.05,
    hold_last: float = 2.0,
    nrow: int | None = None,
    padding: int = 2,
    normalize: Literal["clip", "minmax"] = "clip",
    scale: int = 1,
) -> Path:
    """Write an animated GIF (seed 000's denoising GIF): each frame is a batch in [-1, 1] (made
    into a grid), a uint8 [N, H, W, C] batch, or a ready uint8 picture H x W (x C). Every frame
    shows for ``duration_s`` seconds and the last one for ``hold_last`` seconds, then it loops.
    ``normalize="clip"`` maps [-1, 1] the same way in every frame; ``"minmax"`` stretches each
    image to its own range as the notes do. GIF stores times in 1/100 s, and Pillow merges
    identical consecutive frames (adding their times)."""
    if not frames:
        raise ValueError("save_gif needs at least one frame")
    pictures = [_frame(f, nrow, padding, normalize) for f in frames]
    colour = any(p.shape[-1] != 1 for p in pictures)
    if colour:
        pictures = [np.repeat(p, 3, -1) if p.shape[-1] == 1 else p[..., :3] for p in pictures]
    images = [_to_pil(p, scale) for p in pictures]
    ms = max(10, round(duration_s * 1000))
    durations = [ms] * (len(images) - 1) + [max(ms, round(hold_last * 1000))]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0)
    return path


# ---- labelled strips (matplotlib) ------------------------------------------------------------
def _strip_figure(
    grid: np.ndarray,
    labels: Sequence[str],
    tile: tuple[int, int],
    padding: int,
    rows: int,
    title: str | None,
) -> Figure:
    from matplotlib.figure import Figure

    cols = len(labels)
    fig = Figure(figsize=(max(3.0, 1.3 * cols), 1.3 * rows + (0.9 if title else 0.6)),
                 layout="constrained")  # fmt: skip
    ax = fig.add_subplot()
    grey = grid.shape[-1] == 1
    ax.imshow(grid[..., 0] if grey else grid, cmap="gray" if grey else None, vmin=0, vmax=255,
              interpolation="nearest")  # fmt: skip
    centres = [padding + j * (tile[1] + padding) + tile[1] / 2 - 0.5 for j in range(cols)]
    ax.set_xticks(centres, list(labels))
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        fig.suptitle(title)
    return fig


def forward_timesteps(T: int, fractions: Iterable[float] = DEFAULT_FRACTIONS) -> list[int]:
    """Seed 000's timesteps ``int(f * T) - 1`` for each fraction; -1 (f = 0) is the clean image."""
    return [int(f * T) - 1 for f in fractions]


def forward_images(
    schedule: NoiseSchedule,
    images: Tensor,
    fractions: Iterable[float] = DEFAULT_FRACTIONS,
    generator: torch.Generator | None = None,
) -> Tensor:
    """x_t ~ q(x_t | x_0) for each image at each fraction of T: [k, len(fractions), C, H, W].
    One noise draw per image is shared by its columns, so the strip shows the same noise
    growing (the notes draw fresh noise each time; the distribution per column is the same)."""
    from difflab.diffusion import q_sample

    x0 = images.detach().float().cpu()
    noise = torch.randn(x0.shape, generator=generator)
    cols = []
    for t in forward_timesteps(schedule.T, fractions):
        tt = torch.full((len(x0),), t, dtype=torch.long)
        cols.append(x0 if t < 0 else q_sample(schedule, x0, tt, noise))
    return torch.stack(cols, 1)


def forward_strip(
    schedule: NoiseSchedule,
    images: Tensor,
    fractions: Iterable[float] = DEFAULT_FRACTIONS,
    generator: torch.Generator | None = None,
    padding: int = 2,
) -> np.ndarray:
    """Seed 000's ``show_forward`` as one uint8 grid H x W x C: row i is image i, column j the
    image at ``fractions[j]`` of T (timestep ``int(f * T) - 1``; 0 gives the clean image)."""
    fractions = tuple(fractions)
    noisy = forward_images(schedule, images, fractions, generator)
    return make_grid(noisy.flatten(0, 1), nrow=len(fractions), padding=padding)


def save_forward_strip(
    schedule: NoiseSchedule,
    images: Tensor,
    path: str | Path,
    fractions: Iterable[float] = DEFAULT_FRACTIONS,
    generator: torch.Generator | None = None,
    title: str | None = None,
) -> Path:
    """Save :func:`forward_strip` as a figure with each column titled by its percentage of T and
    timestep."""
    fractions = tuple(fractions)
    grid = forward_strip(schedule, images, fractions, generator)
    labels = [f"{f * 100:g}%\n" + ("clean" if t < 0 else f"t={t}")
              for f, t in zip(fractions, forward_timesteps(schedule.T, fractions), strict=True)]  # fmt: skip
    tile = (images.shape[-2], images.shape[-1])
    title = title or f"forward process q(x_t | x_0), {schedule.name} schedule, T={schedule.T}"
    fig = _strip_figure(grid, labels, tile, 2, len(images), title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _select_snapshots(
    snapshots: Sequence[tuple[int, ImagesLike]], num_columns: int
) -> list[tuple[int, Tensor]]:
    if not snapshots:
        raise ValueError("no snapshots to show; record (t, images) pairs while sampling")
    pick = np.unique(np.round(np.linspace(0, len(snapshots) - 1, min(num_columns, len(snapshots)))))
    out = []
    for i in pick.astype(int):
        t, x = snapshots[i]
        x = torch.as_tensor(x).detach().cpu()
        out.append((int(t), x[None] if x.ndim == 3 else x))
    return out


def progression_strip(
    snapshots: Sequence[tuple[int, ImagesLike]],
    num_columns: int = 10,
    max_samples: int = 4,
    padding: int = 2,
) -> np.ndarray:
    """Seed 004's ``sample_plot_image`` as one uint8 grid: row i is sample i (the first
    ``max_samples`` of each batch), columns are ~``num_columns`` evenly spaced snapshots in the
    order given (usually from pure noise on the left to the result on the right)."""
    chosen = _select_snapshots(snapshots, num_columns)
    k = min(max_samples, min(len(x) for _, x in chosen))
    tiles = torch.stack(
        [x[:k] / 127.5 - 1 if x.dtype == torch.uint8 else x[:k].float() for _, x in chosen], 1
    )
    return make_grid(tiles.flatten(0, 1), nrow=len(chosen), padding=padding)


def save_progression(
    snapshots: Sequence[tuple[int, ImagesLike]],
    path: str | Path,
    num_columns: int = 10,
    max_samples: int = 4,
    title: str | None = None,
) -> Path:
    """Save :func:`progression_strip` with each column labelled by its timestep t; ``snapshots``
    is a list of ``(t, batch)`` with batch x_t or the predicted x_0 in [-1, 1]."""
    chosen = _select_snapshots(snapshots, num_columns)
    grid = progression_strip(snapshots, num_columns, max_samples)
    k = min(max_samples, min(len(x) for _, x in chosen))
    tile = tuple(chosen[0][1].shape[-2:])
    fig = _strip_figure(grid, [f"t={t}" for t, _ in chosen], tile, 2, k, title or "denoising")  # type: ignore[arg-type]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


# ---- plots -----------------------------------------------------------------------------------
def plot_schedules(
    path: str | Path,
    T: int = 1000,
    names: Iterable[str] = ("linear", "scaled_linear", "cosine", "sigmoid"),
) -> Path:
    """alpha_bar(t) and log-SNR(t) = log(alpha_bar / (1 - alpha_bar)) of each named schedule."""
    from matplotlib.figure import Figure

    from difflab.schedules import NoiseSchedule

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_ab, ax_snr = fig.subplots(1, 2)
    t = np.arange(T)
    for name in names:
        s = NoiseSchedule.from_name(name, T)
        ax_ab.plot(t, s.alphas_cumprod.numpy(), label=name)
        ax_snr.plot(t, s.log_snr.numpy(), label=name)
    ax_ab.set(title="signal kept: alpha_bar(t)", xlabel="timestep t", ylabel="alpha_bar", ylim=(0, 1.02))
    ax_snr.set(title="log-SNR(t)", xlabel="timestep t", ylabel="log(alpha_bar / (1 - alpha_bar))")
    for ax in (ax_ab, ax_snr):
        ax.grid(alpha=0.3)
        ax.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def read_log(log: str | Path | Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Records of a ``log.jsonl`` (one JSON object a line; blank or broken lines, such as the cut
    last line of a killed run, are skipped) or an iterable of dicts."""
    if isinstance(log, str | Path):
        records = []
        for line in Path(log).read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                records.append(rec)
        return records
    return [dict(r) for r in log]


def _series(records: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = []
    for r in records:
        step, value = r.get("step"), r.get(key)
        if isinstance(step, int | float) and isinstance(value, int | float) and math.isfinite(value):
            pairs.append((float(step), float(value)))
    arr = np.asarray(pairs, dtype=np.float64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def ema(values: np.ndarray, beta: float = 0.98) -> np.ndarray:
    """Bias-corrected exponential moving average (as TensorBoard's smoothing)."""
    out, s = np.empty(len(values)), 0.0
    for i, v in enumerate(values):
        s = beta * s + (1 - beta) * v
        out[i] = s / (1 - beta ** (i + 1))
    return out


def plot_loss(
    log: str | Path | Iterable[Mapping[str, Any]], path: str | Path, smoothing: float = 0.98
) -> Path:
    """Training loss against step (raw, faint, and its EMA, log y when all positive) from
    ``log.jsonl`` records with ``step`` and ``loss`` (others are ignored); a second panel shows
    ``lr`` when the records have it."""
    from matplotlib.figure import Figure

    records = read_log(log)
    steps, loss = _series(records, "loss")
    if not len(steps):
        where = log if isinstance(log, str | Path) else "the records"
        raise ValueError(f"no records with numeric 'step' and 'loss' in {where}")
    lr_steps, lr = _series(records, "lr")
    fig = Figure(figsize=(10 if len(lr) else 6, 4), layout="constrained")
    axes = fig.subplots(1, 2 if len(lr) else 1, squeeze=False)[0]
    ax = axes[0]
    ax.plot(steps, loss, color="tab:blue", alpha=0.3, lw=0.8, label="loss")
    ax.plot(steps, ema(loss, smoothing), color="tab:blue", lw=1.8, label=f"EMA {smoothing:g}")
    if np.all(loss > 0):
        ax.set_yscale("log")
    ax.set(title="training loss", xlabel="step", ylabel="loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    if len(lr):
        axes[1].plot(lr_steps, lr, color="tab:orange")
        axes[1].set(title="learning rate", xlabel="step", ylabel="lr")
        axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        axes[1].grid(alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def plot_eval(log: str | Path | Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """The ``--eval-every`` scores of ``log.jsonl`` (records ``{"step", "eval": {name: value}}``)
    against step, one panel per score."""
    from matplotlib.figure import Figure

    records = [r for r in read_log(log) if isinstance(r.get("eval"), dict)]
    names = list(dict.fromkeys(k for r in records for k in r["eval"]))
    if not names:
        where = log if isinstance(log, str | Path) else "the records"
        raise ValueError(f"no 'eval' records in {where}; train with --eval-every N")
    fig = Figure(figsize=(5 * len(names), 4), layout="constrained")
    for ax, name in zip(fig.subplots(1, len(names), squeeze=False)[0], names, strict=True):
        steps, values = _series([{"step": r["step"], name: r["eval"].get(name)} for r in records], name)
        ax.plot(steps, values, marker="o", color="tab:green")
        ax.set(title=name, xlabel="step")
        ax.grid(alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def save_data_forward_strip(
    data: Any, out: str | Path, *, schedule: str = "linear", T: int = 1000, n: int = 8, seed: int = 0
) -> Path:
    """Note 000's ``show_forward`` on a data set: ``n`` seeded images of ``data`` (a
    :class:`~difflab.data.DataConfig`) at 0/25/50/75/100% of the forward process."""
    import torch

    from difflab.data import load_dataset
    from difflab.schedules import NoiseSchedule

    images = load_dataset(data)
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    batch, _ = images.batch(idx)
    sched = NoiseSchedule.from_name(schedule, T)
    return save_forward_strip(sched, batch, out, generator=torch.Generator().manual_seed(seed))
