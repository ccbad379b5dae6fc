"""Training a ControlNet on a frozen base run: ``train_controlnet(base_run, out, control="edges")``.

The base run is only read: its config and weights are loaded (the weights identified by the
sha256 of their file), frozen, and a :class:`~difflab.nets.controlnet.ControlNet` is built from
them (Zhang et al. 2023: a trainable copy of the encoder, a hint encoder, zero convolutions). The
control maps of the data (edges, skeletons or masks, :mod:`difflab.conditioning.control`) are
computed once and cached in the output folder. The steps are the training loop's own
(:class:`ControlNetTrainer` is a :class:`~difflab.train.loop.Trainer`: the base run's loss,
objective and conditioning, class labels or captions with their dropout included; EMA, LR
schedule, time budget, sample grids, ``log.jsonl`` and checkpoints that resume bit for bit), with
three differences: only the ControlNet trains and is checkpointed, every batch brings the control
maps of its images (mirrored with them when the data is flipped), optionally dropped to the
all-zero image with probability ``control_drop`` (the paper's 50% prompt dropout is the base run's
own ``cond_drop`` here), and the run's weights file is ``controlnet.safetensors`` (the EMA) next to
``controlnet.json``. ``config.json`` is the base run's config with the ControlNet's data, length and
optimizer settings.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from difflab.conditioning.control import ControlConfig, as_control, control_maps
from difflab.data import DataConfig, ImageDataset, load_dataset
from difflab.device import resolve_device
from difflab.io import atomic_write, save_weights
from difflab.nets.controlnet import (
    CONTROLNET_CONFIG,
    CONTROLNET_WEIGHTS,
    DEFAULT_LR,
    DEFAULT_STEPS,
    ControlledUNet,
    ControlNet,
    HintConfig,
    check_base_net,
    controlnet_info,
)
from difflab.run_config import TrainConfig
from difflab.train.checkpoint import prune_checkpoints, save_checkpoint
from difflab.train.ema import EMA
from difflab.train.finetune import finetune_config
from difflab.train.lock import run_lock
from difflab.train.loop import (
    Log,
    OnStep,
    Trainer,
    TrainingError,
    TrainResult,
    check_run_config,
    drive,
    lr_lambda,
    make_optimizer,
    prepare_data,
    use_channels_last,
    write_run_config,
)


@dataclasses.dataclass
class ControlledImages(ImageDataset):
    """Images with their control maps ``maps`` (uint8 [views, N, 1, H, W]; view 1 holds the mirror
    images' maps when ``flip``). :meth:`batch` draws flips exactly as the plain data set does and
    keeps the batch's control images (float, [0, 1]) in ``last_control``."""

    maps: Tensor | None = None
    last_control: Tensor | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def of(cls, data: ImageDataset, maps: Tensor) -> ControlledImages:
        return cls(**{f.name: getattr(data, f.name) for f in dataclasses.fields(ImageDataset)}, maps=maps)

    def batch(self, indices: Any, generator: torch.Generator | None = None,
              device: torch.device | str | None = None, flip: bool | None = None
              ) -> tuple[Tensor, Tensor | None]:
        assert self.maps is not None
        idx = torch.as_tensor(indices, dtype=torch.long)
        x, y = super().batch(idx, generator, device, flip=False)
        maps = self.maps[0][idx]
        if self.flip if flip is None else flip:  # the draws of ImageDataset.batch, for images and maps
            mask = torch.rand(len(idx), generator=generator) < 0.5
            x[mask.to(x.device)] = x[mask.to(x.device)].flip(-1)
            maps = torch.where(mask[:, None, None, None], self.maps[1][idx], maps)
        self.last_control = as_control(maps).to(x.device)
        return x, y


class ControlNetTrainer(Trainer):
    """The training loop on a frozen base network with a ControlNet: only the ControlNet trains,
    and checkpoints and the run's weights file hold only the ControlNet."""

    def __init__(self, cfg: TrainConfig, data: ControlledImages, out: Path, device: torch.device, log: Log,
                 base_state: dict[str, Tensor], hint: HintConfig, control_drop: float = 0.0) -> None:
        from difflab.nets import build_net

        super().__init__(cfg, data, out, device, log)
        # Replace the loop's freshly initialised network by the frozen base and a ControlNet copied
        # from it, and rebuild what holds the trained parameters (EMA, optimizer, LR schedule); the
        # hint encoder's random init draws from the run's seed.
        torch.manual_seed(cfg.seed)
        base = build_net(cfg.net)
        base.load_state_dict(base_state)
        base = base.to(device).eval().requires_grad_(False)
        net = ControlNet.from_unet(base, hint).to(device)
        if use_channels_last(net, device):
            base, net = base.to(memory_format=torch.channels_last), net.to(memory_format=torch.channels_last)
        self.base, self.net, self.control_drop = base, net, control_drop
        self.ema = EMA(net, cfg.ema_decay, cfg.ema_warmup)
        self.optimizer = make_optimizer(cfg, net, device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           lr_lambda(cfg, lambda: self.total_steps))
        self.model = ControlledUNet(base, net)

    def loss(self, x0: Tensor, labels: Tensor | None, indices: Tensor | None = None) -> Tensor:
        """The loop's loss with the batch's control images bound to the network (dropped to the
        empty image with probability ``control_drop``, drawn from the run's generator). Inside
        the loop's micro-batches (``rows`` of the whole batch) the draws are made for the whole
        batch and cut to those rows, as the loop does with its own."""
        control = self.data.last_control
        assert control is not None, "ControlledImages.batch keeps every batch's control images"
        rows = getattr(self, "rows", None) if getattr(self, "whole", None) is not None else None
        rows = slice(None) if rows is None else rows
        if self.control_drop > 0:
            drop = torch.rand(control.shape[0], generator=self.gen).to(control.device) < self.control_drop
            control = torch.where(drop[:, None, None, None], torch.zeros_like(control), control)
        self.model.bind(control[rows])
        return super().loss(x0, labels, indices)

    def checkpoint(self) -> None:
        """Save the ControlNet's training state and its EMA weights; prune old checkpoints."""
        save_checkpoint(self.state_dict(), self.ckpt_dir / f"step_{self.step:07d}.pt")
        save_weights(self.ema.model.state_dict(), self.out / CONTROLNET_WEIGHTS, {"step": str(self.step)})
        prune_checkpoints(self.ckpt_dir, self.cfg.keep_checkpoints)

    def sample_controls(self, n: int) -> Tensor:
        """The control images of the sample grids: the first ``n`` of a fixed shuffle of the data."""
        assert isinstance(self.data, ControlledImages) and self.data.maps is not None
        pick = torch.randperm(len(self.data), generator=torch.Generator().manual_seed(0))[:n]
        return as_control(self.data.maps[0][pick])

    def sample_grid(self) -> None:
        """Rows of 8 control images, each above the 8 samples drawn with them (seed 0 onwards)."""
        from difflab.pipeline import Pipeline
        from difflab.viz import save_grid

        cfg = self.cfg
        n = max(8, min(cfg.sample_n, 32) // 8 * 8)
        control = self.sample_controls(n)
        pipe = Pipeline(self.base, cfg, self.device).attach_controlnet(self.ema.model)
        images = pipe.sample(len(control), sampler=cfg.sample_sampler, steps=cfg.sample_steps, seed=0,
                             control=control)
        rows = [t for i in range(0, len(control), 8) for t in (control[i:i + 8] * 2 - 1, images[i:i + 8])]
        save_grid(torch.cat(rows), self.out / "samples" / f"step_{self.step:07d}.png", nrow=8)
        self.ema.model.eval()

    def describe(self) -> None:
        super().describe()
        trained = sum(p.numel() for p in self.net.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in self.base.parameters())
        self.log(f"ControlNet: training {trained:,} parameters (the encoder's copy, the hint encoder and the "
                 f"zero convolutions); the base network's {frozen:,} stay frozen")


def train_controlnet(
    base_run: str | Path,
    out: str | Path,
    *,
    control: str | ControlConfig = "edges",
    data: str | DataConfig | None = None,
    hint: HintConfig | None = None,
    control_drop: float = 0.0,
    steps: int | None = None,
    time_budget: float | None = None,
    lr: float = DEFAULT_LR,
    batch_size: int | None = None,
    seed: int = 0,
    weights: str | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Log = print,
    max_seconds: float | None = None,
    on_step: OnStep | None = None,
    sample_every: int | None = None,
    checkpoint_every: int | None = None,
    device: str | None = None,
) -> TrainResult:
    """Train a ControlNet of the run ``base_run`` for ``control`` (a kind, ``edges``, ``skeleton`` or
    ``mask``, or a :class:`ControlConfig`) on ``data`` (default: the base run's data) into the
    folder ``out`` (``controlnet.safetensors``, ``controlnet.json``, ``controls.safetensors``,
    ``config.json``, ``log.jsonl``, checkpoints, sample grids). The base run is never written.
    ``resume`` continues ``out`` from its last checkpoint (the same base weights, control and
    settings; only the length and logging may change)."""
    from difflab.pipeline import Pipeline

    out, base_run = Path(out), Path(base_run)
    control_cfg = control if isinstance(control, ControlConfig) else ControlConfig(kind=control)  # type: ignore[arg-type]
    hint = hint or HintConfig()
    if not 0 <= control_drop < 1:
        raise ValueError(f"--control-drop must lie in [0, 1), got {control_drop}")
    if out.resolve() == base_run.resolve():
        raise TrainingError(f"--out {out} is the base run itself; the base run is read-only, choose a "
                            "new folder")
    base = Pipeline.load(base_run, "cpu", weights)
    if base.weights_sha256 is None or base.weights_file is None:
        raise TrainingError(f"{base_run} is not a difflab run folder with a weights file to train a "
                            "ControlNet on")
    if base.config.objective != "diffusion":
        raise TrainingError("ControlNet trains on diffusion runs; this run was trained with "
                            "--objective corrupt")
    if base.latent is not None:
        raise TrainingError("ControlNet here trains on pixel runs; this one is a latent run")
    try:
        check_base_net(base.net)
    except ValueError as err:
        raise TrainingError(str(err)) from None
    if steps is None and time_budget is None:
        steps = DEFAULT_STEPS
    cfg = finetune_config(base.config, data if data is not None else base.config.data, steps=steps,
                          time_budget=time_budget, lr=lr, batch_size=batch_size, seed=seed,
                          sample_every=sample_every, checkpoint_every=checkpoint_every, device=device)
    cfg = cfg.replace(compile=False)
    if cfg.class_cond and not load_dataset(cfg.data).num_classes:
        log("the data has no labels: the ControlNet learns the class-conditional run's unconditional "
            "(null-class) branch")
        cfg = cfg.replace(cond="none")
    cfg, dataset = prepare_data(cfg, log)
    if cfg.net != base.config.net:
        raise TrainingError("the data needs another network than the base run's; give data of the base run's "
                            "image size and channels")
    check_controlnet_config(out, base.weights_sha256, control_cfg, hint, control_drop, resume)
    check_run_config(cfg, out, resume)
    with run_lock(out):  # checked before, so that a refused command leaves no lock file; again under it
        check_controlnet_config(out, base.weights_sha256, control_cfg, hint, control_drop, resume)
        write_run_config(cfg, out, resume)
        maps = control_maps(dataset, control_cfg, out, log)
        base_state = {k: v.clone() for k, v in base.net.state_dict().items()}
        trainer = ControlNetTrainer(cfg, ControlledImages.of(dataset, maps), out, resolve_device(cfg.device),
                                    log, base_state, hint, control_drop)
        info = controlnet_info(trainer.net, control_cfg.to_dict(), base_run, base.weights_file,
                               base.weights_sha256, cfg.data.to_dict(), control_drop)
        atomic_write(out / CONTROLNET_CONFIG, lambda tmp: tmp.write_text(json.dumps(info, indent=2) + "\n"))
        note = (f"base {base_run} ({base.weights_file}, sha256:{base.weights_sha256[:16]}) is read only; "
                f"the {control_cfg.kind} ControlNet goes to {out / CONTROLNET_WEIGHTS}")
        return drive(trainer, resume=resume, progress=progress, max_seconds=max_seconds, on_step=on_step,
                     note=note)


def check_controlnet_config(out: Path, sha256: str, control: ControlConfig, hint: HintConfig,
                            control_drop: float, resume: bool) -> None:
    """A resumed ControlNet must have the same base weights, control and hint encoder."""
    path = out / CONTROLNET_CONFIG
    if not resume or not path.is_file():
        return
    saved = json.loads(path.read_text())
    if saved.get("base", {}).get("sha256") != sha256:
        was = str(saved.get("base", {}).get("sha256"))[:16]
        raise TrainingError(f"--resume: {out} is a ControlNet of base weights sha256:{was}, but the base run "
                            f"now holds sha256:{sha256[:16]}; resume from the same base")
    now = {"control": control.to_dict(), "hint": hint.to_dict(), "control_drop": control_drop}
    diff = [k for k, v in now.items() if saved.get(k) != v]
    if diff:
        raise TrainingError(f"--resume: {out} was trained with a different {', '.join(diff)}; use the same "
                            "--control / --control-drop or a new --out")
