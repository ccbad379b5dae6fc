"""Training a noise-aware classifier for classifier guidance: ``train_classifier(config, out)``.

Dhariwal & Nichol 2021 ("Diffusion Models Beat GANs on Image Synthesis", sec. 4.1) train the
guiding classifier p_phi(y | x_t, t) with cross-entropy on noised images x_t ~ q(x_t | x_0) at
uniformly drawn timesteps of the diffusion model's own schedule. A share ``holdout`` of the
images is split off with a permutation seeded by ``seed`` and never trained on; on it the run
measures accuracy as a function of t (the classifier is near perfect at small t and falls to
chance where x_t is noise), logs it and writes it as ``accuracy.csv`` and ``accuracy.png``.

The run folder (``config.json`` is written last, so a folder with one holds a finished run):
``config.json`` (the resolved :class:`~difflab.classifier_run.ClassifierTrainConfig`,
with the schedule a diffusion run must match), ``model.safetensors`` (written atomically through
:mod:`difflab.io`), ``log.jsonl`` (loss and batch accuracy every ``log_every`` steps, then the
accuracy table), ``accuracy.csv`` and ``accuracy.png``. Everything random comes from generators
seeded by ``seed``: the split, the batch order, the timesteps and noise, the evaluation's noise.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab.classifier_run import WEIGHTS, ClassifierTrainConfig
from difflab.data import Batcher, ImageDataset, load_dataset
from difflab.device import resolve_device
from difflab.diffusion import q_sample
from difflab.io import atomic_write, save_weights
from difflab.nets.classifier import NoisyClassifier, default_classifier_config
from difflab.schedules import NoiseSchedule
from difflab.train.lock import run_lock
from difflab.train.loop import TrainingError, steps_for_epochs

Log = Callable[[str], None]


@dataclass
class AccuracyRow:
    """Held-out accuracy at one timestep."""

    t: int
    alpha_bar: float
    accuracy: float
    n: int


@dataclass
class ClassifierResult:
    out: Path
    steps: int
    final_loss: float
    seconds: float
    accuracy: list[AccuracyRow]


def split_indices(n: int, holdout: float, seed: int) -> tuple[Tensor, Tensor]:
    """(train, held-out) indices: a permutation seeded by ``seed``, the first ``round(holdout n)``
    (at least 1) held out; both sorted."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = min(n - 1, max(1, round(holdout * n)))
    return perm[k:].sort().values, perm[:k].sort().values


def eval_timesteps(T: int, count: int) -> list[int]:
    """``count`` timesteps evenly spread over [0, T-1], both ends included."""
    return sorted({round(v) for v in torch.linspace(0, T - 1, min(count, T)).tolist()})


@torch.no_grad()
def accuracy_vs_t(net: nn.Module, data: ImageDataset, indices: Tensor, schedule: NoiseSchedule,
                  ts: list[int], seed: int, device: torch.device, batch_size: int = 256) -> list[AccuracyRow]:
    """Accuracy of ``net`` on x_t of the images ``indices`` at each timestep in ``ts``; the noise
    of image i at timestep t comes from one generator seeded by ``seed``, so the table is
    reproducible."""
    net.eval()
    rows = []
    for t in ts:
        gen = torch.Generator().manual_seed(seed + t)
        right = 0
        for part in indices.split(batch_size):
            x0, y = data.batch(part, device=device, flip=False)
            assert y is not None
            noise = torch.randn(x0.shape, generator=gen).to(device)
            tt = torch.full((len(part),), t, dtype=torch.long, device=device)
            x_t = q_sample(schedule, x0, tt.cpu(), noise)
            right += int((net(x_t, tt).argmax(1) == y).sum())
        rows.append(AccuracyRow(t, float(schedule.alphas_cumprod[t]), right / len(indices), len(indices)))
    return rows


def accuracy_table(rows: list[AccuracyRow], chance: float) -> str:
    """The accuracy-vs-t rows as a markdown table."""
    lines = [f"| t | alpha_bar | held-out accuracy (chance {chance:.3f}) |", "|---|---|---|"]
    lines += [f"| {r.t} | {r.alpha_bar:.4g} | {r.accuracy:.3f} |" for r in rows]
    return "\n".join(lines)


def write_accuracy_csv(rows: list[AccuracyRow], path: Path) -> Path:
    lines = [f"{r.t},{r.alpha_bar:.6g},{r.accuracy:.6f},{r.n}\n" for r in rows]
    text = "t,alpha_bar,accuracy,n\n" + "".join(lines)
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def plot_accuracy(rows: list[AccuracyRow], chance: float, path: Path, title: str) -> Path:
    """Held-out accuracy against t, with the chance level."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    ax.plot([r.t for r in rows], [r.accuracy for r in rows], marker="o", color="tab:blue", label="held out")
    ax.axhline(chance, color="grey", ls="--", lw=1, label=f"chance ({chance:.2f})")
    ax.set(title=title, xlabel="timestep t", ylabel="accuracy on x_t", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))


def prepare(cfg: ClassifierTrainConfig, log: Log) -> tuple[ClassifierTrainConfig, ImageDataset]:
    """Load the labelled data and resolve the network, the class names and ``steps``."""
    data = load_dataset(cfg.data)
    c, h, w = data.shape
    if h != w:
        raise TrainingError(f"images are {h}x{w}; pass --image-size N to resize them to squares")
    if data.labels is None or data.num_classes < 2:
        raise TrainingError(f"a classifier needs labelled data with at least 2 classes, and {data.name} has "
                            "none (image folders get labels from their subfolders)")
    net = cfg.net or default_classifier_config(c, h, data.num_classes)
    if (net.in_channels, net.image_size or h, net.num_classes) != (c, h, data.num_classes):
        raise TrainingError(f"the classifier config takes {net.in_channels}x{net.image_size} images and "
                            f"{net.num_classes} classes, the data has {c}x{h} and {data.num_classes}")
    cfg = cfg.replace(data=cfg.data.replace(image_size=h, channels=c), net=net.replace(image_size=h),
                      class_names=tuple(data.class_names) or tuple(map(str, range(data.num_classes))))
    if cfg.epochs is not None:
        n_train = len(data) - len(split_indices(len(data), cfg.holdout, cfg.seed)[1])
        steps = steps_for_epochs(cfg.epochs, n_train, cfg.batch_size)
        log(f"{cfg.epochs:g} epochs = {steps} steps of {cfg.batch_size} ({n_train} training images)")
        cfg = cfg.replace(steps=steps)
    return cfg, data


def lr_factor(cfg: ClassifierTrainConfig) -> Callable[[int], float]:
    """Linear warm-up over ``warmup_steps``, then a cosine decay to 10% at ``steps``."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def train_classifier(config: ClassifierTrainConfig, out: str | Path, *, progress: bool = True,
                     log: Log = print) -> ClassifierResult:
    """Train ``config`` into the new run folder ``out`` (see the module docs for its files), holding
    the folder's lock; a refused one is left as it was."""
    out = Path(out)
    refuse_existing(out)
    cfg, data = prepare(config, log)
    with run_lock(out):
        refuse_existing(out)
        return fit(cfg, data, out, progress, log)


def refuse_existing(out: Path) -> None:
    if (out / "config.json").exists():
        raise TrainingError(f"{out} already holds a run; choose another --out")


def fit(cfg: ClassifierTrainConfig, data: ImageDataset, out: Path, progress: bool,
        log: Log) -> ClassifierResult:
    """The training loop of :func:`train_classifier` into ``out``, then the accuracy-vs-t table."""
    from tqdm.auto import tqdm

    assert cfg.net is not None
    device = resolve_device(cfg.device)
    out.mkdir(parents=True, exist_ok=True)
    train_idx, held_idx = split_indices(len(data), cfg.holdout, cfg.seed)
    held_idx = held_idx[: cfg.eval_n]
    schedule = cfg.make_schedule()
    torch.manual_seed(cfg.seed)
    net = NoisyClassifier(cfg.net).to(device)
    params = sum(p.numel() for p in net.parameters())
    log(f"{data.summary()}; {len(train_idx)} for training, {len(held_idx)} held out")
    log(f"classifier: {params:,} parameters; {cfg.steps} steps of {cfg.batch_size} on the "
        f"{cfg.schedule_text()}; writing to {out}")
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg))
    batcher = Batcher(len(train_idx), cfg.batch_size, cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    t0 = time.perf_counter()
    window: list[tuple[float, float]] = []
    loss_value = float("nan")
    net.train()
    bar = tqdm(total=cfg.steps, disable=not progress, desc="classifier", unit="step", dynamic_ncols=True)
    with (out / "log.jsonl").open("w") as log_file, bar:
        for step in range(1, cfg.steps + 1):
            flips = batcher.generator()
            x0, y = data.batch(train_idx[batcher.next_indices()], generator=flips, device=device)
            assert y is not None
            t = torch.randint(0, cfg.T, (len(x0),), generator=gen)
            noise = torch.randn(x0.shape, generator=gen).to(device)
            logits = net(q_sample(schedule, x0, t, noise), t.to(device))
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise TrainingError(f"loss became {loss_value} at step {step}; lower --lr")
            window.append((loss_value, float((logits.argmax(1) == y).float().mean())))
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                loss_mean = sum(v[0] for v in window) / len(window)
                acc = sum(v[1] for v in window) / len(window)
                log_file.write(json.dumps({"step": step, "loss": loss_mean, "batch_accuracy": acc,
                                           "lr": scheduler.get_last_lr()[0],
                                           "elapsed_s": round(time.perf_counter() - t0, 2)}) + "\n")
                log_file.flush()
                bar.set_postfix(loss=f"{loss_mean:.3f}", acc=f"{acc:.2f}")
                window.clear()
        seconds = time.perf_counter() - t0
        save_weights(net.state_dict(), out / WEIGHTS, {"step": str(cfg.steps)})
        # config.json last: a folder with one is a finished run that loads
        atomic_write(out / "config.json", lambda tmp: tmp.write_text(cfg.to_json() + "\n"))
        rows = accuracy_vs_t(net, data, held_idx, schedule, eval_timesteps(cfg.T, cfg.eval_timesteps),
                             cfg.seed, device)
        log_file.write(json.dumps({"step": cfg.steps, "accuracy_vs_t": [vars(r) for r in rows]}) + "\n")
    chance = 1 / cfg.net.num_classes
    log(f"held-out accuracy vs t ({len(held_idx)} images):\n{accuracy_table(rows, chance)}")
    write_accuracy_csv(rows, out / "accuracy.csv")
    plot_accuracy(rows, chance, out / "accuracy.png", f"noise-aware classifier, {cfg.schedule_text()}")
    return ClassifierResult(out, cfg.steps, loss_value, seconds, rows)
