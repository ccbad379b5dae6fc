"""The training loop: one function, ``train(config, out)``, resumable bit-for-bit.

Everything random in a step (batch order, flips, timesteps, noise, label dropout) comes from the
batcher and one torch generator whose states are in the checkpoint, so a run killed at any point
and resumed from its last checkpoint ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from difflab.data import Batcher, ImageDataset, load_dataset
from difflab.device import resolve_device
from difflab.losses import diffusion_loss
from difflab.nets.basic_unet import corrupt_loss
from difflab.run_config import TrainConfig
from difflab.train.checkpoint import (
    CheckpointError,
    atomic_write,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    save_weights,
)
from difflab.train.ema import EMA


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to do."""


@dataclass
class TrainResult:
    out: Path
    steps: int
    final_loss: float
    seconds: float
    images_per_s: float


def prepare_data(cfg: TrainConfig, log: Callable[[str], None]) -> tuple[TrainConfig, ImageDataset]:
    """Load the data at the size the network needs and resolve the network config."""
    from difflab.nets import default_net_config, required_image_size

    data = load_dataset(cfg.data)
    c, h, w = data.shape
    if h != w:
        raise TrainingError(f"images are {h}x{w}; pass --image-size N to resize them to squares")
    need = required_image_size(cfg.net_kind, h)
    if need != h:
        log(f"net {cfg.net_kind} needs {need}x{need} images: resizing the data from {h}x{w}")
        data = load_dataset(cfg.data.replace(image_size=need))
        c, h, w = data.shape
    data_cfg = cfg.data.replace(image_size=h, channels=c)
    if cfg.class_cond and not data.num_classes:
        raise TrainingError(f"--class-cond needs labelled data, and {data.name} has no labels")
    net_cfg = cfg.net or default_net_config(
        cfg.net_kind,
        in_channels=c,
        image_size=h,
        n_steps=cfg.T,
        num_classes=data.num_classes if cfg.class_cond else 0,
    )
    return cfg.replace(data=data_cfg, net=net_cfg), data


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Linear warm-up over ``warmup_steps``, then constant or a cosine decay to 10%."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def make_optimizer(cfg: TrainConfig, net: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    params = [p for p in net.parameters() if p.requires_grad]
    # One fused kernel per step instead of a loop over tensors: 5x faster updates on CPU as well
    # (bench_train_speed.py), though only ~2% of a step with small nets.
    fused = {"fused": True} if device.type in ("cuda", "cpu") else {}
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)


def train(
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    max_seconds: float | None = None,
    on_step: Callable[[int, float, nn.Module], None] | None = None,
) -> TrainResult:
    """Train ``config`` into the run folder ``out`` (see the README for its layout).

    ``max_seconds`` stops early (with a checkpoint) once that much training time has passed: for
    equal-time comparisons in benchmarks. ``on_step(step, seconds, ema_model)`` is called after
    every optimizer step (e.g. to snapshot the EMA weights at fixed wall-clock times)."""
    from difflab.nets import build_net, param_count

    out = Path(out)
    device = resolve_device(config.device)
    cfg, data = prepare_data(config, log)
    cfg_path = out / "config.json"
    if resume:
        if not cfg_path.is_file():
            raise TrainingError(f"--resume: {out} has no config.json; start it without --resume")
        saved = TrainConfig.from_dict(json.loads(cfg_path.read_text()))
        diff = saved.differences(cfg)
        if diff:
            raise TrainingError(
                f"--resume: {out} was trained with different {', '.join(diff)}; "
                "use the same flags (only --steps and logging/checkpoint intervals may change) or a new --out"
            )
    elif cfg_path.exists():
        raise TrainingError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out"
        )
    atomic_write(cfg_path, lambda tmp: tmp.write_text(cfg.to_json() + "\n"))

    torch.manual_seed(cfg.seed)
    net = build_net(cfg.net).to(device)
    ema = EMA(net, cfg.ema_decay, cfg.ema_warmup)
    optimizer = make_optimizer(cfg, net, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    batcher = Batcher(len(data), cfg.batch_size, cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    schedule = cfg.make_schedule()
    ckpt_dir = out / "checkpoints"
    step = 0
    if device.type != "cpu":
        data.images = data.images.to(device)  # uint8 and small: batches are gathered on the device
    model = torch.compile(net) if cfg.compile else net  # same parameters; state dicts come from net
    if resume and (found := list_checkpoints(ckpt_dir)):
        state = load_checkpoint(found[-1][1])
        net.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        batcher.load_state_dict(state["batcher"])
        gen.set_state(state["generator"])
        step = int(state["step"])
        log(f"resuming {out} from step {step}")
    log(f"{data.summary()}")
    log(
        f"net {cfg.net_kind}: {param_count(net):,} parameters; {cfg.steps} steps of {cfg.batch_size} "
        f"on {device.type}; writing to {out}"
    )

    def checkpoint() -> None:
        state = {
            "step": step,
            "model": net.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "batcher": batcher.state_dict(),
            "generator": gen.get_state(),
        }
        save_checkpoint(state, ckpt_dir / f"step_{step:07d}.pt")
        save_weights(ema.model.state_dict(), out / "model.safetensors", {"step": str(step)})
        prune_checkpoints(ckpt_dir, cfg.keep_checkpoints)

    def sample_grid() -> None:
        from difflab.pipeline import Pipeline
        from difflab.viz import save_grid

        pipe = Pipeline(ema.model, cfg, device)
        images = pipe.sample(cfg.sample_n, sampler=cfg.sample_sampler, steps=cfg.sample_steps, seed=0)
        save_grid(images, out / "samples" / f"step_{step:07d}.png")
        ema.model.eval()

    evaluator = None
    if cfg.eval_every:
        from difflab.train.evaluation import TrainingEval

        evaluator = TrainingEval(cfg, data, device, log)

    def run_eval() -> None:
        scores = evaluator(ema.model)
        log_file.write(json.dumps({"step": step, "eval": scores}) + "\n")
        log_file.flush()
        bar.write(f"step {step}: " + ", ".join(f"{k} {v:g}" for k, v in scores.items()))

    from tqdm.auto import tqdm

    bar = tqdm(
        total=cfg.steps, initial=step, disable=not progress, desc="training", unit="step", dynamic_ncols=True
    )
    log_file = (out / "log.jsonl").open("a")
    t_start, window_t, last_loss = time.perf_counter(), time.perf_counter(), float("nan")
    window: list[tuple[int, torch.Tensor]] = []  # (step, loss) not yet read back from the device
    losses: list[float] = []  # read-back losses of the current logging window
    # Reading a loss back forces a host-device sync; on accelerators do it every log_every steps.
    sync_every = 1 if device.type == "cpu" else cfg.log_every

    def check_finite() -> None:
        if not window:
            return
        numbers = [n for n, _ in window]
        values = torch.stack([v for _, v in window]).float().cpu().tolist()
        window.clear()
        for number, value in zip(numbers, values, strict=True):
            if not math.isfinite(value):
                last = list_checkpoints(ckpt_dir)
                where = f"the last good checkpoint is {last[-1][1]}" if last else "no checkpoint was written"
                raise TrainingError(
                    f"loss became {value} at step {number}; {where}. "
                    "Lower --lr or check the data, then --resume"
                )
        losses.extend(values)

    use_autocast = device.type == "cuda"
    num_classes = int(getattr(net, "num_classes", 0))
    net.train()
    try:
        while step < cfg.steps:
            x0, labels = batcher.next_batch(data, device=device)
            b = x0.shape[0]
            t = torch.randint(0, cfg.T, (b,), generator=gen).to(device)
            noise = torch.randn(x0.shape, generator=gen).to(device)
            cond = None
            if num_classes and labels is not None:
                drop = torch.rand(b, generator=gen).to(device) < cfg.cond_drop
                cond = {"class_labels": torch.where(drop, num_classes, labels)}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast):
                if cfg.objective == "corrupt":
                    amount = torch.rand(b, generator=gen).to(device)
                    loss = corrupt_loss(model, x0, amount, torch.special.ndtr(noise), cfg.loss)
                else:
                    loss = diffusion_loss(
                        model,
                        x0,
                        t,
                        noise,
                        schedule=schedule,
                        prediction=cfg.prediction,
                        loss=cfg.loss,
                        weighting=cfg.weighting,
                        snr_gamma=cfg.snr_gamma,
                        cond=cond,
                    )
            window.append((step + 1, loss.detach()))
            if len(window) >= sync_every:
                check_finite()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            ema.update(net)
            step += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                check_finite()
                now = time.perf_counter()
                ips = len(losses) * cfg.batch_size / max(now - window_t, 1e-9)
                last_loss = losses[-1]
                record = {
                    "step": step,
                    "loss": sum(losses) / len(losses),
                    "lr": scheduler.get_last_lr()[0],
                    "images_per_s": round(ips, 2),
                    "epoch": round(batcher.progress, 4),
                    "elapsed_s": round(now - t_start, 2),
                }
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{ips:.0f}")
                losses.clear()
                window_t = now
            bar.update(1)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                check_finite()
                checkpoint()
            if step % cfg.sample_every == 0 or step == cfg.steps:
                sample_grid()
                net.train()
            if evaluator is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
                run_eval()
                net.train()
            if on_step is not None:
                on_step(step, time.perf_counter() - t_start, ema.model)
            if max_seconds is not None and time.perf_counter() - t_start > max_seconds:
                log(f"stopping at step {step}: the time limit of {max_seconds:.0f} s is reached")
                break
    except CheckpointError as err:
        raise TrainingError(str(err)) from err
    finally:
        bar.close()
        log_file.close()
    check_finite()
    last_loss = losses[-1] if losses else last_loss
    saved = list_checkpoints(ckpt_dir)
    if not saved or saved[-1][0] != step:
        checkpoint()
    seconds = time.perf_counter() - t_start
    try:
        from difflab.viz import plot_loss

        plot_loss(out / "log.jsonl", out / "loss.png")
        if evaluator is not None:
            from difflab.viz import plot_eval

            plot_eval(out / "log.jsonl", out / "eval.png")
    except ValueError:
        pass  # too few records to plot
    return TrainResult(
        out, step, last_loss, seconds, 0.0 if seconds == 0 else step * cfg.batch_size / seconds
    )

