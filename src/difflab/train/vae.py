"""Training the latent autoencoder: ``train_vae(config, out)`` (``difflab train-vae``), resumable
bit for bit.

The objective is :class:`difflab.latent.VAETrainConfig`'s (reconstruction + KL, optionally the
EfficientNet-Lite0 perceptual term and a patch GAN with Esser et al. 2021's adaptive weight,
eq. 7: lambda = ||grad_L rec|| / (||grad_L gan|| + 1e-4) at the decoder's last layer L).

The run folder follows ``difflab train``'s conventions: ``config.json`` (the resolved config; a
``--resume`` with other fields than the resumable ones is refused), ``checkpoints/step_N.pt``
(everything a step depends on: network, optimizers, LR schedule, discriminator, batcher, the
posterior-noise generator and torch's global RNG; written atomically, the last
``keep_checkpoints`` kept, loaded with ``weights_only=True``), ``model.safetensors`` (the
autoencoder with its config and its scale factor measured on the training images, rewritten at
every checkpoint; :func:`difflab.latent.load_latent_space` reads it), ``log.jsonl`` and
``loss.png``, and at the end the held-out scores (PSNR, SSIM, FD-EffNetLite0 of reconstructions
vs originals) in ``log.jsonl`` and ``reconstructions.png`` (rows of originals over their
reconstructions). Measurements run with the global RNG forked and draw from their own seeded
generators, so a run stopped and resumed ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from difflab.data import Batcher, ImageDataset, load_dataset
from difflab.device import resolve_device
from difflab.eval.reconstruction import reconstruct, reconstruction_scores
from difflab.latent import (
    VAETrainConfig,
    latent_stats,
    save_autoencoder,
    scale_factor_from_data,
    unit_variance_problem,
)
from difflab.latent.space import WEIGHTS
from difflab.nets.autoencoder import AutoencoderConfig, AutoencoderKL, check_divisible
from difflab.nets.patch_discriminator import PatchDiscriminator
from difflab.train.checkpoint import (
    load_latest_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from difflab.train.classifier import split_indices
from difflab.train.lock import run_lock
from difflab.train.loop import (
    TrainingError,
    check_run_config,
    forked_rng,
    global_rng_state,
    set_global_rng_state,
    write_run_config,
)

Log = Callable[[str], None]
GRID = "reconstructions.png"


@dataclass
class VAEResult:
    out: Path
    steps: int
    seconds: float
    scores: dict[str, float] = field(default_factory=dict)
    scale_factor: float = 1.0


def prepare(config: VAETrainConfig, log: Log) -> tuple[VAETrainConfig, ImageDataset]:
    """Load the data, check its size against the factor, resolve the network."""
    data = load_dataset(config.data)
    c, h, w = data.shape
    check_divisible(h, w, config.factor, f"{data.name} images")
    net = config.net or AutoencoderConfig.for_factor(config.factor, c, config.latent_channels)
    if net.in_channels != c:
        raise ValueError(f"the autoencoder takes {net.in_channels}-channel images, {data.name} has {c}")
    return config.replace(net=net), data


MAY_CHANGE = "only --steps and logging/checkpoint/eval intervals may change"


def spread(indices: Tensor, n: int) -> Tensor:
    """``n`` of the sorted ``indices`` evenly spaced from first to last (all when n >= len)."""
    if n >= len(indices):
        return indices
    return indices[torch.linspace(0, len(indices) - 1, n).round().long()]


def hinge_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    """Discriminator hinge loss 1/2 (E relu(1 - D(x)) + E relu(1 + D(x_rec))) (taming)."""
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


def adaptive_weight(rec: Tensor, gan: Tensor, last: Tensor) -> Tensor:
    """Esser et al. 2021, eq. 7: ||grad rec|| / (||grad gan|| + 1e-4) at ``last``, in [0, 1e4]."""
    g_rec = torch.autograd.grad(rec, last, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan, last, retain_graph=True)[0]
    return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, 1e4).detach()


class VAETrainer:
    """One autoencoder run's state and the steps that move it on."""

    def __init__(
        self, cfg: VAETrainConfig, data: ImageDataset, out: Path, device: torch.device, log: Log
    ) -> None:
        assert cfg.net is not None
        self.cfg, self.data, self.out, self.device, self.log = cfg, data, out, device, log
        self.train_idx, held = split_indices(len(data), cfg.holdout, cfg.seed)
        # spread over the whole split (data sets stored sorted by label must not give one class)
        self.held_idx = spread(held, cfg.eval_n)
        self.scale_idx = spread(self.train_idx, cfg.scale_n)
        torch.manual_seed(cfg.seed)
        self.net = AutoencoderKL(cfg.net).to(device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
        warm = cfg.warmup_steps
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0
        )
        self.disc: PatchDiscriminator | None = None
        if cfg.disc_weight > 0:
            self.disc = PatchDiscriminator(data.shape[0], layers=cfg.disc_layers).to(device)
            self.disc_opt = torch.optim.Adam(self.disc.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
        self.perceptual: Any = None
        if cfg.perceptual_weight > 0:
            from difflab.train.perceptual import EffNetPerceptualLoss

            self.perceptual = EffNetPerceptualLoss(cfg.perceptual_size).to(device)
        self.batcher = Batcher(len(self.train_idx), cfg.batch_size, cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)  # posterior samples z = mean + std eps
        self.step = 0
        self.spent_before = 0.0
        self.step_seconds = 0.0  # in train_step, this session
        self.window_s0 = 0.0  # step_seconds at the start of the logging window
        self.window: list[dict[str, float]] = []
        self.log_file: IO[str] | None = None
        self.real_features: Any = None

    # --- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state = {
            "step": self.step,
            "model": self.net.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "batcher": self.batcher.state_dict(),
            "generator": self.gen.get_state(),
            "global_rng": global_rng_state(self.device),
            "train_seconds": self.elapsed(),
        }
        if self.disc is not None:
            state["disc"], state["disc_optimizer"] = self.disc.state_dict(), self.disc_opt.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.batcher.load_state_dict(state["batcher"])
        self.gen.set_state(state["generator"])
        set_global_rng_state(state["global_rng"], self.device)
        if self.disc is not None:
            self.disc.load_state_dict(state["disc"])
            self.disc_opt.load_state_dict(state["disc_optimizer"])
        self.step = int(state["step"])
        self.spent_before = float(state.get("train_seconds", 0.0))

    def resume(self) -> None:
        """Continue from the newest readable checkpoint (an unreadable one is moved aside)."""
        found = load_latest_checkpoint(self.out / "checkpoints", self.log)
        if found:
            self.load_state_dict(found[1])
            self.log(f"resuming {self.out} from step {self.step}")

    def checkpoint(self) -> None:
        save_checkpoint(self.state_dict(), self.out / "checkpoints" / f"step_{self.step:07d}.pt")
        self.save_weights()
        prune_checkpoints(self.out / "checkpoints", self.cfg.keep_checkpoints)

    def images(self, indices: Tensor) -> Tensor:
        return self.data.batch(indices, device=self.device, flip=False)[0]

    @torch.no_grad()
    def save_weights(self) -> tuple[float, float]:
        """Measure the latent scaling on the training images and write ``model.safetensors``:
        scale = 1 / std and, with ``latent_shift``, shift = mean of the sampled latents."""
        with forked_rng(self.device):
            self.net.eval()
            fit = self.images(self.scale_idx)
            stats = scale_factor_from_data(self.net, fit, self.cfg.seed)
            self.net.train()
        shift = stats.mean if self.cfg.latent_shift else 0.0
        extra = {
            "step": str(self.step),
            "latent_mean": repr(stats.mean),
            "latent_std": repr(stats.std),
            "scale_n": str(stats.n),
            "data": self.data.name,
        }
        save_autoencoder(self.net, self.out / WEIGHTS, stats.scale_factor, shift, extra=extra)
        return stats.scale_factor, shift

    # --- the loop ------------------------------------------------------------------------------

    def elapsed(self) -> float:
        """Seconds spent in training steps (this session and before a resume), not evaluations."""
        return self.spent_before + self.step_seconds

    def train_step(self) -> None:
        cfg = self.cfg
        flips = self.batcher.generator()
        x, _ = self.data.batch(
            self.train_idx[self.batcher.next_indices()], generator=flips, device=self.device
        )
        posterior = self.net.encode(x)
        xr = self.net.decode(posterior.sample(self.gen))
        rec = (xr - x).abs().mean() if cfg.recon == "l1" else (xr - x).pow(2).mean()
        kl = posterior.kl().mean() / x[0].numel()
        terms = {"rec": rec, "kl": kl}
        nll = rec
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(xr, x).mean()
            nll = rec + cfg.perceptual_weight * terms["perceptual"]
        loss = nll + cfg.kl_weight * kl
        gan_on = self.disc is not None and self.step >= cfg.disc_start
        if gan_on:
            assert self.disc is not None
            terms["g"] = -self.disc(xr).mean()
            terms["gan_weight"] = adaptive_weight(nll, terms["g"], self.net.last_layer()) * cfg.disc_weight
            loss = loss + terms["gan_weight"] * terms["g"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        if gan_on:
            assert self.disc is not None
            terms["d"] = hinge_d_loss(self.disc(x), self.disc(xr.detach()))
            self.disc_opt.zero_grad(set_to_none=True)
            terms["d"].backward()
            self.disc_opt.step()
        self.step += 1
        record = {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}}
        if not math.isfinite(record["loss"]):
            raise TrainingError(
                f"loss became {record['loss']} at step {self.step}; lower --lr (the last good "
                "checkpoint is kept)"
            )
        self.window.append(record)

    def write_record(self, record: dict[str, Any]) -> None:
        assert self.log_file is not None
        self.log_file.write(json.dumps(record) + "\n")
        self.log_file.flush()

    def log_window(self) -> None:
        keys = self.window[0].keys() | self.window[-1].keys()
        record: dict[str, Any] = {"step": self.step}
        for k in sorted(keys):
            values = [w[k] for w in self.window if k in w]
            record[k] = sum(values) / len(values)
        record["lr"] = self.sched.get_last_lr()[0]
        record["images_per_s"] = round(
            len(self.window) * self.cfg.batch_size / max(self.step_seconds - self.window_s0, 1e-9), 2
        )
        record["elapsed_s"] = round(self.elapsed(), 2)
        self.write_record(record)
        self.bar.set_postfix(rec=f"{record['rec']:.4f}", img_s=f"{record['images_per_s']:.0f}")
        self.window.clear()
        self.window_s0 = self.step_seconds

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out PSNR, SSIM, FD-EffNetLite0 of reconstructions (posterior means), and the scaled
        latents' statistics on the held-out images (reported when far from unit variance)."""
        with forked_rng(self.device):
            self.net.eval()
            originals = self.images(self.held_idx)
            recon = reconstruct(self.net, originals)
            extractor = None
            if self.cfg.eval_fd:
                from difflab.eval.effnet import EffNetLite0Features
                from difflab.eval.stats import extract

                extractor = EffNetLite0Features(self.device)
                if self.real_features is None:
                    self.real_features = extract(originals.cpu(), extractor)
            scores = reconstruction_scores(originals, recon, extractor, self.real_features)
            scale, shift = self.save_weights()
            gen = torch.Generator().manual_seed(self.cfg.seed + 2)
            held = latent_stats(lambda x: (self.net.encode(x).sample(gen) - shift) * scale, originals)
            self.net.train()
        scores.update(
            scale_factor=scale, shift_factor=shift, heldout_latent_std=held.std, heldout_latent_mean=held.mean
        )
        problem = unit_variance_problem(held, "the held-out images' scaled latents")
        if problem:
            self.log(f"warning: {problem}")
        return scores

    def save_grid(self) -> Path:
        from difflab.viz import save_grid

        with forked_rng(self.device):
            self.net.eval()
            originals = self.images(spread(self.held_idx, 32))
            n = len(originals)
            recon = reconstruct(self.net, originals).clamp(-1, 1)
            self.net.train()
        cols = 8
        rows = []
        for start in range(0, n, cols):
            rows += [originals[start : start + cols], recon[start : start + cols]]
        return save_grid(
            torch.cat(rows).cpu(), self.out / GRID, nrow=cols, scale=2 if originals.shape[-1] < 64 else 1
        )

    def run(self, progress: bool) -> dict[str, float]:
        from tqdm.auto import tqdm

        cfg = self.cfg
        self.window_s0 = self.step_seconds
        self.net.train()
        scores: dict[str, float] = {}
        self.bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            disable=not progress,
            desc="autoencoder",
            unit="step",
            dynamic_ncols=True,
        )
        with (self.out / "log.jsonl").open("a") as self.log_file, self.bar:
            while self.step < cfg.steps:
                t0 = time.perf_counter()
                self.train_step()
                self.step_seconds += time.perf_counter() - t0
                self.bar.update(1)
                last = self.step == cfg.steps
                if self.step % cfg.log_every == 0 or last:
                    self.log_window()
                if self.step % cfg.checkpoint_every == 0 or last:
                    self.checkpoint()
                if last or (cfg.eval_every and self.step % cfg.eval_every == 0):
                    scores = self.evaluate()
                    self.write_record({"step": self.step, "eval": scores})
                    self.bar.write(
                        f"step {self.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items())
                    )
            if not scores:  # resumed at the end: evaluate what is there
                scores = self.evaluate()
                self.write_record({"step": self.step, "eval": scores})
        return scores


def train_vae(
    config: VAETrainConfig, out: str | Path, *, resume: bool = False, progress: bool = True, log: Log = print
) -> VAEResult:
    """Train ``config`` into the run folder ``out`` (see the module docs for its files), holding the
    folder's lock; a refused one is left as it was."""
    out = Path(out)
    device = resolve_device(config.device)
    cfg, data = prepare(config, log)
    check_run_config(cfg, out, resume, MAY_CHANGE)
    with run_lock(out):
        return fit(cfg, data, out, device, resume, progress, log)


def fit(cfg: VAETrainConfig, data: ImageDataset, out: Path, device: torch.device, resume: bool,
        progress: bool, log: Log) -> VAEResult:
    """Write the config and train (or resume) :func:`train_vae`'s run, holding its lock."""
    from difflab.train.checkpoint import CheckpointError
    from difflab.viz import plot_loss

    write_run_config(cfg, out, resume, MAY_CHANGE)
    trainer = VAETrainer(cfg, data, out, device, log)
    if resume:
        trainer.resume()
    assert cfg.net is not None
    params = sum(p.numel() for p in trainer.net.parameters())
    c, h, w = data.shape
    f = cfg.net.factor
    log(f"{data.summary()}; {len(trainer.train_idx)} for training, {len(trainer.held_idx)} held out")
    log(
        f"autoencoder: {params:,} parameters, {c}x{h}x{w} -> {cfg.net.latent_channels}x{h // f}x{w // f} "
        f"(factor {f}); loss {cfg.terms()}; {cfg.steps} steps of {cfg.batch_size} on {device.type}; "
        f"writing to {out}"
    )
    try:
        scores = trainer.run(progress)
    except CheckpointError as err:
        raise TrainingError(str(err)) from err
    trainer.save_grid()
    with contextlib.suppress(ValueError):  # too few records to plot
        plot_loss(out / "log.jsonl", out / "loss.png")
    return VAEResult(out, trainer.step, trainer.elapsed(), scores, float(scores.get("scale_factor", 1.0)))
