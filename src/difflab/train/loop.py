"""The training loop: ``train(config, out)``, resumable bit-for-bit.

Everything random in a step comes from state the checkpoint holds: batch order and flips from the
batcher; timesteps, noise, label dropout and caption templates from one torch generator; dropout
inside the network from torch's global RNG (CPU, and CUDA's on a GPU). Sample grids, evaluations
and ``on_step`` run with the global RNG forked, so they never shift it. A run killed at any point
and resumed from its last checkpoint therefore ends with the same weights as one that never
stopped.

A run is a :class:`Trainer`: built from the config (or resumed from the newest checkpoint), it
takes one optimizer step at a time (:meth:`Trainer.train_step`), then does what is due
(:meth:`Trainer.after_step`: epoch end, log record, checkpoint, sample grid, evaluation), and
:meth:`Trainer.finish` writes the final checkpoint and plots. A run with a time budget fits its
step count early on (:mod:`difflab.train.budget`).

Many processes (torchrun, :mod:`difflab.train.distributed`): ``batch_size`` is the global batch,
and every rank draws the same global batch from the batcher, its flips and the generator ``gen``
(timesteps, noise, label dropout, captions, all drawn at the global batch size), then keeps its
own rows: sample i of a step gets the same draws on any number of processes, at the cost of
drawing the whole batch's randomness on every rank (small next to a forward pass). With
``grad_accum`` K, each rank's rows are split in K micro-batches and each replays the step's draws
from the same generator state. A micro-batch of n rows weighs its mean loss by ``world * n / B``,
so DDP's average of the ranks' summed gradients is the gradient of the global batch's mean loss.
The network's own dropout draws from torch's global RNG, re-seeded every step from (seed, step,
rank) on many processes, so no per-rank state needs saving. Only rank 0 writes; a checkpoint holds
the global state (batcher, generator, step), so a run resumes on any number of processes.
"""

from __future__ import annotations

import inspect
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor, nn

from difflab.conditioning.lowres import LowResCondition, check_factor
from difflab.conditioning.text import TextConfig
from difflab.data import Batcher, ImageDataset, load_dataset
from difflab.data.batcher import micro_batches, seed_from
from difflab.device import resolve_device
from difflab.latent.cache import LatentDataset
from difflab.latent.space import LatentSpace
from difflab.losses import diffusion_loss
from difflab.nets.basic_unet import corrupt_loss
from difflab.run_config import TrainConfig
from difflab.train.budget import (
    REFIT_AT,
    REFIT_TOLERANCE,
    SideWork,
    calibration_done,
    fit_steps,
    format_duration,
    refit_steps,
)
from difflab.train.checkpoint import (
    CheckpointError,
    atomic_write,
    list_checkpoints,
    load_latest_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    save_weights,
    weights_step,
)
from difflab.train.distributed import World, is_collective_failure, lost_message, world
from difflab.train.ema import EMA
from difflab.train.lock import run_lock

Log = Callable[[str], None]
OnStep = Callable[[int, float, nn.Module], None]

BEST_WEIGHTS = "best.safetensors"
FINAL_WEIGHTS = "model.safetensors"

clock = time.perf_counter  # the training clock (time budgets, speeds); tests replace it


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to do."""


@dataclass
class TrainResult:
    out: Path
    steps: int
    final_loss: float
    seconds: float
    images_per_s: float


def steps_for_epochs(epochs: float, n: int, batch_size: int) -> int:
    """Optimizer steps in ``epochs`` passes over ``n`` samples: the batcher spans epochs without
    dropping samples, so an epoch is ``n / batch_size`` steps; a partial last step counts."""
    return max(1, math.ceil(round(epochs * n / batch_size, 9)))  # round: 1.1 * 50 is 55.00000000000001


def prepare_data(cfg: TrainConfig, log: Log) -> tuple[TrainConfig, ImageDataset]:
    """Load the data at the size the network needs and resolve the network config and, for a
    run counted in ``epochs``, its ``steps``."""
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
        raise TrainingError(f"--cond class needs labelled data, and {data.name} has no labels "
                            "(image folders get labels from their subfolders)")
    text = resolve_text(cfg, data) if cfg.cond == "text" else None
    if cfg.latent is not None:
        if cfg.net_kind != "unet":
            raise TrainingError(f"--latent trains --net unet (it takes any latent size), not {cfg.net_kind}")
        cfg, (c, h, w) = resolve_latent(cfg, data, log)
    if cfg.cond == "lowres":
        if cfg.net_kind != "unet":
            raise TrainingError(f"--cond lowres needs --net unet (it joins the low-resolution image to x_t "
                                f"on the channels), not {cfg.net_kind}")
        check_factor(cfg.lowres_factor, h)
    net_cfg = cfg.net or default_net_config(
        cfg.net_kind,
        in_channels=c,
        image_size=h,
        n_steps=cfg.T,
        num_classes=data.num_classes if cfg.class_cond else 0,
        context_dim=text.dim if text else 0,
        shape=cfg.net_shape,
        concat_channels=c if cfg.cond == "lowres" else 0,
    )
    check_net_fits(net_cfg, c, h)
    if cfg.cond == "lowres" and getattr(net_cfg, "concat_channels", 0) != c:
        raise TrainingError(f"--cond lowres needs a network with concat_channels={c} (the image's channels), "
                            f"got {getattr(net_cfg, 'concat_channels', 0)}")
    if text and getattr(net_cfg, "context_dim", 0) != text.dim:
        raise TrainingError(f"--cond text needs a network with context_dim={text.dim} ({text.encoder}'s "
                            f"width), got {getattr(net_cfg, 'context_dim', 0)}")
    cfg = cfg.replace(data=data_cfg, net=net_cfg, text=text)
    if cfg.class_cond or (text and data.num_classes):
        cfg = cfg.replace(class_names=tuple(data.class_names) or tuple(map(str, range(data.num_classes))))
    if cfg.epochs is not None:
        steps = steps_for_epochs(cfg.epochs, len(data), cfg.batch_size)
        log(f"{cfg.epochs:g} epochs = {steps} steps of {cfg.batch_size} ({len(data)} images)")
        cfg = cfg.replace(steps=steps)
    return cfg, data


def resolve_latent(cfg: TrainConfig, data: ImageDataset, log: Log
                   ) -> tuple[TrainConfig, tuple[int, int, int]]:
    """A latent run's autoencoder: its digest, its path made absolute, no x_0 clipping, and the
    latent shape the network works at (a one-line error when the factor does not divide the
    image size)."""
    from difflab.latent import load_latent_space
    from difflab.latent.space import DIFFUSERS_PREFIX

    assert cfg.latent is not None
    try:
        space = load_latent_space(cfg.latent)
        shape = space.latent_shape(data.shape)
    except (CheckpointError, ValueError) as err:
        raise TrainingError(f"--latent {cfg.latent}: {err}") from None
    if cfg.latent_digest and cfg.latent_digest != space.digest:
        raise TrainingError(f"--latent {cfg.latent}: this run was trained with the autoencoder "
                            f"{cfg.latent_digest}, and {cfg.latent} holds {space.digest}; use the one it "
                            "was trained with")
    spec = cfg.latent
    if spec.startswith(DIFFUSERS_PREFIX):
        spec = DIFFUSERS_PREFIX + str(Path(spec[len(DIFFUSERS_PREFIX):]).resolve())
    else:
        spec = str(Path(spec).resolve())
    if cfg.sample_clip:
        log("latent run: sampling without x_0 clipping (latents are not confined to [-1, 1])")
    log(f"latent diffusion: {data.shape[0]}x{data.shape[1]}x{data.shape[2]} images <-> "
        f"{shape[0]}x{shape[1]}x{shape[2]} latents of the autoencoder {space.digest} "
        f"(scale factor {space.scale_factor:.5g})")
    return cfg.replace(latent=spec, latent_digest=space.digest, sample_clip=False), shape


def keep_autoencoder(cfg: TrainConfig, out: Path) -> None:
    """Copy a difflab autoencoder file into the run folder (``autoencoder.safetensors``), so the
    run samples and decodes wherever it is moved; diffusers folders stay where they are."""
    import shutil

    from difflab.latent.space import DIFFUSERS_PREFIX, RUN_COPY, WEIGHTS

    assert cfg.latent is not None
    if cfg.latent.startswith(DIFFUSERS_PREFIX) or (out / RUN_COPY).is_file():
        return
    source = Path(cfg.latent)
    source = source / WEIGHTS if source.is_dir() else source
    atomic_write(out / RUN_COPY, lambda tmp: shutil.copyfile(source, tmp))


def check_same_autoencoder(cfg: TrainConfig, out: Path) -> None:
    """A resumed latent run must use the autoencoder it started with (named by both digests)."""
    try:
        saved = json.loads((out / "config.json").read_text()).get("latent_digest", "")
    except (OSError, ValueError, AttributeError):
        return  # write_run_config says what is wrong with the file
    if saved != cfg.latent_digest:
        now = cfg.latent_digest or "none (a pixel run)"
        raise TrainingError(f"--resume: {out} was trained with the autoencoder {saved or 'none (pixels)'}, "
                            f"and this one is {now}; resume with the autoencoder it was trained with")


def check_net_fits(net_cfg: Any, channels: int, size: int) -> None:
    """A given network config (``--net-config``) must take the data's channels and size."""
    got_c = getattr(net_cfg, "in_channels", channels)
    if got_c != channels:
        raise TrainingError(f"the network takes {got_c}-channel images and the data has {channels}; "
                            f"pass --channels {got_c} or change in_channels in the network config")
    got = getattr(net_cfg, "image_size", None)
    if got is not None and got != size:
        raise TrainingError(f"the network is built for {got}x{got} images and the data is {size}x{size}; "
                            f"pass --image-size {got} or change image_size in the network config")


def resolve_text(cfg: TrainConfig, data: ImageDataset) -> TextConfig:
    """Where a text run's captions come from: the folder's captions file, else templates over the
    class names (:mod:`difflab.conditioning.captions`)."""
    from difflab.conditioning.captions import template_set_for

    if cfg.net_kind != "unet":
        raise TrainingError(f"--cond text needs --net unet, whose cross-attention masks the padding of "
                            f"prompts; {cfg.net_kind} does not")
    text = cfg.text or TextConfig()
    if data.captions is not None and any(data.captions):
        return text.replace(captions="file", templates="")
    if data.num_classes:
        templates = text.templates or template_set_for(data.class_names)
        return text.replace(captions="templates", templates=templates)
    raise TrainingError(f"--cond text needs captions, and {data.name} has neither labels (captions are "
                        "made from class names) nor a metadata.jsonl / captions.csv beside the images")


def lr_lambda(cfg: TrainConfig, total: Callable[[], int | None] | None = None) -> Callable[[int], float]:
    """Linear warm-up over ``warmup_steps``, then constant or a cosine decay to 10% at the last
    step: ``cfg.steps``, or ``total()`` (None while a time budget's length is not fitted yet: the
    decay waits)."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        steps = total() if total is not None else cfg.steps
        if cfg.lr_schedule == "constant" or steps is None:
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, steps - cfg.warmup_steps)
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


def use_channels_last(net: nn.Module, device: torch.device) -> bool:
    """Whether to store ``net`` NHWC: 1.05-1.2x the images/s of the default UNet on a CPU
    (benchmarks/README.md, "The loop, phase by phase"), for every network of 2-D convolutions on
    CPU or CUDA."""
    return device.type in ("cpu", "cuda") and any(isinstance(m, nn.Conv2d) for m in net.modules())


MAY_CHANGE = "only --steps and logging/checkpoint intervals may change"


def write_run_config(cfg: Any, out: Path, resume: bool, may_change: str = MAY_CHANGE) -> None:
    """Write ``out/config.json`` once :func:`check_run_config` lets it."""
    check_run_config(cfg, out, resume, may_change)
    atomic_write(out / "config.json", lambda tmp: tmp.write_text(cfg.to_json() + "\n"))


def check_run_config(cfg: Any, out: Path, resume: bool, may_change: str = MAY_CHANGE) -> None:
    """Refuse, writing nothing, a new run where a run is, and a resumed one whose config differs
    from the saved one (of ``cfg``'s type) beyond the fields its ``differences`` skips
    (``may_change`` names them for the error). Called before the run's lock is taken too, so a
    refused command leaves no trace in the folder."""
    cfg_path = out / "config.json"
    if resume:
        if not cfg_path.is_file():
            raise TrainingError(f"--resume: {out} has no config.json; start it without --resume")
        try:
            saved = type(cfg).from_dict(json.loads(cfg_path.read_text()))
        except (ValueError, TypeError, AttributeError, UnicodeDecodeError) as err:
            why = " ".join(str(err).split())[:200]
            raise TrainingError(f"--resume: {cfg_path} is not a {type(cfg).__name__} this difflab can read "
                                f"({why}); restore it from a copy, or start a new --out") from None
        diff = saved.differences(cfg)
        if diff:
            raise TrainingError(
                f"--resume: {out} was trained with different {', '.join(diff)}; "
                f"use the same flags ({may_change}) or a new --out"
            )
    elif cfg_path.exists():
        raise TrainingError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out"
        )


def global_rng_state(device: torch.device) -> dict[str, Tensor]:
    """torch's global RNG states that a step on ``device`` draws from (dropout)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_global_rng_state(state: dict[str, Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@contextmanager
def forked_rng(device: torch.device) -> Iterator[None]:
    """Run the body with torch's global RNG restored afterwards, so side work (sample grids,
    evaluations, callbacks) does not change the draws of later training steps."""
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        yield


@dataclass
class EpochLosses:
    """The running sum of this epoch's step losses and the best finished epoch so far
    (``{"epoch", "step", "loss"}``, lowest mean loss); both live in the checkpoint."""

    total: float = 0.0
    count: int = 0
    best: dict[str, Any] | None = None

    def add(self, values: list[float]) -> None:
        self.total += sum(values)
        self.count += len(values)

    def close_epoch(self) -> float:
        """The mean loss of the epoch just finished; the next one starts from zero."""
        mean = self.total / max(self.count, 1)
        self.total, self.count = 0.0, 0
        return mean

    def is_best(self, loss: float) -> bool:
        return self.best is None or loss < self.best["loss"]

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total, "count": self.count, "best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total, self.count, self.best = float(state["total"]), int(state["count"]), state["best"]


class Trainer:
    """One run's state (network, EMA, optimizer, LR schedule, batcher, generator, step counter,
    loss bookkeeping) and the parts of the loop that move it on."""

    def __init__(
        self, cfg: TrainConfig, data: ImageDataset | LatentDataset, out: Path, device: torch.device, log: Log
    ) -> None:
        """``data``: the images (a latent run encodes them into its cache, or takes them already
        as a :class:`~difflab.latent.cache.LatentDataset`)."""
        from difflab.nets import build_net

        self.cfg, self.out, self.device, self.log = cfg, out, device, log
        self.world: World = world()  # this process among the run's (one of one without torchrun)
        self.pixels = data  # the images; ``data`` is what the steps draw from (latents for latent runs)
        # rank 0 writes a latent run's cache, the others read it; other runs build with no collective
        # (a Trainer built on one rank alone, as the step-time estimate does, must not wait for the rest)
        with self.world.main_first() if cfg.latent else nullcontext():
            self.space, self.data = self._latent_data(data) if cfg.latent else (None, data)
        torch.manual_seed(cfg.seed)
        self.net = build_net(cfg.net).to(device)
        if use_channels_last(self.net, device):
            self.net = self.net.to(memory_format=torch.channels_last)
        self.ema = EMA(self.net, cfg.ema_decay, cfg.ema_warmup)
        self.optimizer = make_optimizer(cfg, self.net, device)
        # The run's length: cfg.steps, or None until a time budget is fitted (see difflab.train.budget).
        self.total_steps: int | None = None if cfg.time_budget else cfg.steps
        self.spent_before = 0.0  # training seconds of the sessions before a resume
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(cfg, lambda: self.total_steps))
        self.batcher = Batcher(len(data), cfg.batch_size, cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.schedule = cfg.make_schedule()
        self.ckpt_dir = out / "checkpoints"
        self.step = 0
        if device.type != "cpu":  # small: batches are gathered on the device
            if isinstance(self.data, LatentDataset):
                self.data.to_device(device)
            else:
                self.data.images = self.data.images.to(device)
        self.model = torch.compile(self.net) if cfg.compile else self.net  # same parameters as net
        self.num_classes = int(getattr(self.net, "num_classes", 0))
        with forked_rng(device):  # loading the encoder must not move the RNG the steps draw from
            self.captions = self._caption_table() if cfg.cond == "text" else None
        self.lowres = LowResCondition(cfg.lowres_factor, data.shape) if cfg.cond == "lowres" else None
        self.use_autocast = device.type == "cuda"
        self.evaluator = self._make_evaluator()
        # Reading a loss back forces a host-device sync; on accelerators do it every log_every steps.
        self.sync_every = 1 if device.type == "cpu" else cfg.log_every
        self.pending: list[tuple[int, Tensor]] = []  # (step, loss) not yet read back from the device
        self.window: list[float] = []  # read-back losses of the current logging window
        self.epoch_losses = EpochLosses()
        self.epoch_ended = False  # did the last step's batch finish an epoch?
        self.last_loss = float("nan")
        self.bar: Any = None
        self.log_file: IO[str] | None = None
        self.t_start = self.window_t = clock()
        self.calibration: tuple[int, float] | None = None  # (step, time) where timing started
        # Where the budget was fitted: step, training seconds, seconds reserved for the end, refits done.
        self.fit_point: dict[str, float] | None = None
        # Steps with a non-finite loss or gradient: skipped (no update, EMA untouched) when
        # skip_nonfinite, else training stops there.
        self.skip_nonfinite = False
        self.skipped_nonfinite = 0
        # Micro-batches per optimizer step (set before distribute()); the DDP wrapper of net when
        # the run has many processes; the rows of the global batch the current micro-batch holds
        # (None: the whole batch) and the global batch's labels and indices.
        self.grad_accum = 1
        self.ddp: nn.Module | None = None
        self.rows: slice | None = None
        self.whole: tuple[Tensor | None, Tensor] | None = None

    def _latent_data(self, data: ImageDataset | LatentDataset) -> tuple[LatentSpace, LatentDataset]:
        """The autoencoder of a latent run, and the data as its cached latent posteriors (given
        already as a :class:`LatentDataset`, or from the run folder's cache)."""
        from difflab.latent import load_latent_space
        from difflab.latent.cache import latent_dataset

        assert self.cfg.latent is not None
        space = load_latent_space(self.cfg.latent, self.device)
        if space.digest != self.cfg.latent_digest:
            raise TrainingError(f"{self.cfg.latent} holds the autoencoder {space.digest}, but the run config "
                                f"names {self.cfg.latent_digest}; it changed since the run started")
        if isinstance(data, LatentDataset):
            self.pixels = data.pixels
            return space, data
        return space, latent_dataset(space, data, self.out, self.log, self.device)

    def _caption_table(self) -> Any:
        """Every training caption encoded once, on the device (see :class:`CaptionTable`)."""
        from difflab.conditioning.captions import CaptionTable
        from difflab.conditioning.text import get_encoder

        cfg, text = self.cfg, self.cfg.text
        assert text is not None, "prepare_data resolves the text config"
        t0 = time.perf_counter()
        encoder = get_encoder(text.encoder, text.max_length)
        if text.captions == "file":
            assert self.data.captions is not None
            table = CaptionTable.from_captions(self.data.captions, encoder, self.device)
            what = f"{len(table.captions)} distinct captions from the data's captions file"
        else:
            table = CaptionTable.from_templates(text.templates, cfg.class_names, encoder, self.device)
            what = (f"{len(table.captions)} captions ({table.num_templates} '{text.templates}' templates "
                    f"x {table.num_classes} classes)")
        self.log(f"text: {what} and the empty prompt, encoded by {text.encoder} in "
                 f"{time.perf_counter() - t0:.1f} s")
        return table

    def _make_evaluator(self) -> Callable[[nn.Module], dict[str, float]] | None:
        if not self.cfg.eval_every or not self.world.main:  # rank 0 evaluates
            return None
        from difflab.train.evaluation import TrainingEval

        return TrainingEval(self.cfg, self.pixels, self.device, self.log, self.space)

    # --- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "model": self.net.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "batcher": self.batcher.state_dict(),
            "generator": self.gen.get_state(),
            "global_rng": global_rng_state(self.device),
            "epoch_losses": self.epoch_losses.state_dict(),
            "train_seconds": self.elapsed(),
            "total_steps": self.total_steps,
            "fit_point": self.fit_point,
            "skipped_nonfinite": self.skipped_nonfinite,
        }

    def distribute(self) -> None:
        """Wrap the network in DistributedDataParallel when the run has many processes (after
        a subclass has put its own network in place); the EMA and the saved weights stay on the
        bare network, so their keys never change with the process count."""
        if self.grad_accum > 1 or self.world.distributed:
            norms = [type(m).__name__ for m in self.net.modules()
                     if isinstance(m, nn.modules.batchnorm._BatchNorm)]
            if norms:
                raise ValueError(f"--net {self.cfg.net_kind} normalises over the batch ({norms[0]}), so "
                                 "splitting the batch over processes or micro-batches would change it: "
                                 "train it on one process without --grad-accum, or use --net unet")
            micro_batches(self.cfg.batch_size, 0, self.world.size, self.grad_accum)  # a batch too small
        if not self.world.distributed:
            return
        if self.model is not self.net and getattr(self.model, "_orig_mod", None) is not self.net:
            raise TrainingError(f"{type(self).__name__} runs on one process; start it without torchrun")
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device] if self.device.type == "cuda" else None
        # Buffers (constant tables here) are not re-sent before every forward pass.
        params = inspect.signature(DistributedDataParallel).parameters
        flag = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
        no_buffer_sync = {flag: False}
        self.ddp = DistributedDataParallel(self.net, device_ids=ids, **no_buffer_sync)
        self.model = torch.compile(self.ddp) if self.cfg.compile else self.ddp

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.batcher.load_state_dict(state["batcher"])
        self.gen.set_state(state["generator"])
        self.step = int(state["step"])
        if "global_rng" in state:
            set_global_rng_state(state["global_rng"], self.device)
        else:
            self.log("this checkpoint predates saving torch's RNG: dropout will draw differently "
                     "than in an uninterrupted run")
        if "epoch_losses" in state:
            self.epoch_losses.load_state_dict(state["epoch_losses"])
        self.spent_before = float(state.get("train_seconds", 0.0))
        self.skipped_nonfinite = int(state.get("skipped_nonfinite", 0))
        if self.cfg.time_budget and state.get("total_steps"):
            self.set_total_steps(int(state["total_steps"]))
            self.fit_point = state.get("fit_point")

    def resume(self) -> None:
        """Continue from the newest checkpoint in the run folder, if there is one (read by rank 0
        and sent to the others, which need no copy of the run folder)."""
        found = self.world.broadcast(self.world.run_on_main(lambda: load_latest_checkpoint(self.ckpt_dir,
                                                                                              self.log)))
        if found:
            self.load_state_dict(found[1])
            self.log(f"resuming {self.out} from step {self.step}")

    def save(self) -> None:
        """:meth:`checkpoint` on rank 0 while the others wait: no rank runs ahead of a save, and a
        failed save stops every rank."""
        self.world.run_on_main(self.checkpoint)

    def checkpoint(self) -> None:
        """Save the training state and the EMA weights; prune old checkpoints (rank 0 only)."""
        save_checkpoint(self.state_dict(), self.ckpt_dir / f"step_{self.step:07d}.pt")
        save_weights(self.ema.model.state_dict(), self.out / FINAL_WEIGHTS, {"step": str(self.step)})
        prune_checkpoints(self.ckpt_dir, self.cfg.keep_checkpoints)

    # --- the loop ----------------------------------------------------------------------------

    def describe(self) -> None:
        from difflab.nets import param_count

        cfg = self.cfg
        self.log(self.pixels.summary())
        if self.total_steps is None:
            assert cfg.time_budget is not None
            length = f"{format_duration(cfg.time_budget)} of training (steps fitted after the warm-up)"
        else:
            length = f"{self.total_steps} steps"
        self.log(
            f"net {cfg.net_kind}: {param_count(self.net):,} parameters; {length} of batch "
            f"{cfg.batch_size} on {self.device.type}; writing to {self.out}"
        )
        if self.world.distributed or self.grad_accum > 1:
            share = micro_batches(cfg.batch_size, 0, self.world.size, self.grad_accum)
            self.log(f"{self.world.size} process{'es' if self.world.distributed else ''} x {self.grad_accum} "
                     f"micro-batch{'es' if self.grad_accum > 1 else ''} per step (rank 0: "
                     f"{'+'.join(str(r.stop - r.start) for r in share)} of the batch of {cfg.batch_size})")

    @contextmanager
    def outputs(self, progress: bool) -> Iterator[None]:
        """The progress bar and ``log.jsonl``, open for the loop."""
        from tqdm.auto import tqdm

        main = self.world.main  # the other ranks show and write nothing
        self.bar = tqdm(
            total=self.total_steps, initial=self.step, disable=not (progress and main), desc="training",
            unit="step", dynamic_ncols=True,
        )
        self.log_file = (self.out / "log.jsonl").open("a") if main else None
        skipped = self.pixels.skipped_files
        if skipped:
            self.write_record({"step": self.step, "skipped_files": len(skipped), "files": skipped[:20]})
        try:
            yield
        finally:
            self.bar.close()
            if self.log_file is not None:
                self.log_file.close()

    def run(self, max_seconds: float | None, on_step: OnStep | None) -> None:
        """Step until the run's length (``cfg.steps`` or the fitted time budget), or until
        ``max_seconds`` of training in this session."""
        self.t_start = self.window_t = clock()
        self.net.train()
        agree = self.world.agree  # decisions that read the clock are rank 0's, on every rank
        while self.total_steps is None or self.step < self.total_steps:
            self.train_step()
            self.after_step()
            if self.total_steps is None:
                self.calibrate()
            elif self.fit_point is not None:
                self.maybe_refit()
            if on_step is not None and self.world.main:
                with forked_rng(self.device):
                    on_step(self.step, self.elapsed(), self.ema.model)
            if max_seconds is not None and agree(self.session_elapsed() > max_seconds):
                self.log(f"stopping at step {self.step}: the time limit of {max_seconds:.0f} s is reached")
                break
            budget = self.cfg.time_budget
            if budget is not None and agree(self.elapsed() >= budget and self.step != self.total_steps):
                self.stop_at_budget()
                break

    def session_elapsed(self) -> float:
        """Training seconds since this session started."""
        return clock() - self.t_start

    def elapsed(self) -> float:
        """Training seconds of the run, earlier sessions included."""
        return self.spent_before + self.session_elapsed()

    # --- time budget -------------------------------------------------------------------------

    def calibrate(self) -> None:
        """Time the steps after the first few; once :func:`calibration_done`, fit the run's length."""
        from difflab.train.budget import SKIP_STEPS

        budget = self.cfg.time_budget
        assert budget is not None
        if self.calibration is None:
            if self.step >= SKIP_STEPS:
                self.calibration = (self.step, clock())
            return
        step0, t0 = self.calibration
        timed_s = clock() - t0
        if self.world.agree(calibration_done(self.step, timed_s, budget, self.cfg.warmup_steps)):
            self.fit_budget(timed_s / (self.step - step0))

    def fit_budget(self, seconds_per_step: float) -> None:
        """Time one checkpoint, sample grid and evaluation, fit the step count, save it."""
        cfg = self.cfg
        assert cfg.time_budget is not None
        side = []
        for task, every in ((self.save, cfg.checkpoint_every), (self.sample_grid, cfg.sample_every),
                            (self.run_eval if self.evaluator else None, cfg.eval_every)):
            if task is None:
                continue
            t0 = clock()
            with forked_rng(self.device):
                if task == self.save or self.world.main:
                    task()
            side.append(SideWork(clock() - t0, every))
        self.net.train()
        steps = fit_steps(cfg.time_budget, self.elapsed(), self.step, seconds_per_step, side)
        self.fit_point = {"step": self.step, "elapsed": self.elapsed(),
                          "reserve": sum(w.seconds for w in side), "refits": 0}
        self.set_total_steps(steps)
        self.save()  # the fitted length survives a kill from here on
        self.write_record({"step": self.step, "time_budget_s": cfg.time_budget, "fitted_steps": steps,
                           "seconds_per_step": round(seconds_per_step, 5),
                           "side_work_s": [round(w.seconds, 3) for w in side]})
        self.log(f"time budget {format_duration(cfg.time_budget)}: {seconds_per_step:.3f} s per step here "
                 f"(and {sum(w.per_step() for w in side):.3f} s per step of sample grids and checkpoints), "
                 f"so {steps} steps in all; the learning rate decays over them")

    def maybe_refit(self) -> None:
        """At the shares :data:`REFIT_AT` of the budget, measure the speed since the fit again and
        refit the step count when it moved by more than :data:`REFIT_TOLERANCE`."""
        fit, budget = self.fit_point, self.cfg.time_budget
        assert fit is not None and budget is not None and self.total_steps is not None
        done = int(fit["refits"])
        if not self.world.agree(done < len(REFIT_AT) and self.elapsed() >= REFIT_AT[done] * budget):
            return
        fit["refits"] = done + 1
        steps = self.world.broadcast(refit_steps(budget, self.elapsed(), self.step, int(fit["step"]),
                                                 fit["elapsed"], fit["reserve"]))
        if abs(steps - self.total_steps) <= REFIT_TOLERANCE * self.total_steps:
            return
        self.log(f"time budget: {REFIT_AT[done]:.0%} spent at step {self.step}, at a speed that fits {steps} "
                 f"steps rather than {self.total_steps}: refitted")
        self.write_record({"step": self.step, "refitted_steps": steps, "previous_steps": self.total_steps})
        self.set_total_steps(steps)

    def stop_at_budget(self) -> None:
        """The budget is spent before the fitted step count (the machine got slower after the
        fit, or the budget is shorter than the calibration): end the run here."""
        budget = format_duration(self.cfg.time_budget or 0)
        if self.total_steps is None:
            self.log(f"stopping at step {self.step}: the time budget of {budget} ran out before the speed "
                     "was measured, so the learning rate never decayed; give a longer --time-budget")
        else:
            self.log(f"stopping at step {self.step} of the {self.total_steps} fitted: the time budget of "
                     f"{budget} is spent (this machine got slower after the fit)")
        self.set_total_steps(self.step)

    def set_total_steps(self, steps: int) -> None:
        """Fix the run's length (a fitted time budget; rank 0's on every rank): the LR schedule,
        config.json, the bar."""
        steps = self.world.broadcast(steps)
        self.total_steps = steps
        self.cfg = self.cfg.replace(steps=steps)
        if self.world.main:
            atomic_write(self.out / "config.json", lambda tmp: tmp.write_text(self.cfg.to_json() + "\n"))
        if self.bar is not None:
            self.bar.total = steps
            self.bar.refresh()

    def train_step(self) -> None:
        """Draw a batch, take one optimizer step, update the EMA; the loss is queued for reading."""
        epoch = self.batcher.epoch
        flips = self.batcher.generator()  # what Batcher.next_batch does, keeping the indices
        indices = self.batcher.next_indices()
        x0, labels = self.data.batch(indices, generator=flips, device=self.device)
        x0 = x0.contiguous(memory_format=torch.channels_last) if x0.shape[1] > 1 else x0
        self.epoch_ended = self.batcher.epoch > epoch
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.backward(x0, labels, indices)
        clip = self.cfg.grad_clip
        norm = nn.utils.clip_grad_norm_(self.net.parameters(), clip) if clip > 0 else None
        if self.nonfinite(loss, norm):
            self.scheduler.step()
            self.step += 1
            return
        self.pending.append((self.step + 1, loss.detach()))
        if len(self.pending) >= self.sync_every:
            self.read_losses()
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.net)
        self.step += 1

    def backward(self, x0: Tensor, labels: Tensor | None, indices: Tensor) -> Tensor:
        """Backpropagate the loss of the global batch (x0, labels, indices), or of this rank's
        rows of it as ``grad_accum`` micro-batches (see the module docstring); return the global
        batch's mean loss (on every rank)."""
        if self.ddp is None and self.grad_accum == 1:
            loss = self.loss(x0, labels, indices)
            loss.backward()
            return loss.detach()
        b, size = x0.shape[0], self.world.size
        parts = micro_batches(b, self.world.rank, size, self.grad_accum)
        if self.ddp is not None:  # the network's dropout: no per-rank RNG state to save
            torch.manual_seed(seed_from(self.cfg.seed, self.step, self.world.rank))
        start = self.gen.get_state()
        total = torch.zeros((), device=self.device)
        self.whole = (labels, indices)
        try:
            for k, rows in enumerate(parts):
                self.gen.set_state(start)  # every micro-batch replays the step's draws, keeping its rows
                self.rows = rows
                last = k == len(parts) - 1
                with nullcontext() if last or self.ddp is None else self.ddp.no_sync():  # type: ignore[operator]
                    loss = self.loss(x0[rows], None if labels is None else labels[rows], indices[rows])
                    n = rows.stop - rows.start
                    (loss * (size * n / b)).backward()
                total += loss.detach().float() * (n / b)
        finally:
            self.rows, self.whole = None, None
        return self.world.sum(total)

    def loss(self, x0: Tensor, labels: Tensor | None, indices: Tensor | None = None) -> Tensor:
        """The training loss of one batch, with timesteps, noise, label dropout and captions from
        ``gen``; ``indices`` (into the data) pick the captions of a captions file. Inside
        :meth:`backward`'s micro-batches, ``x0`` holds the rows ``self.rows`` of the global batch,
        whose draws are made in full and cut to those rows."""
        cfg, device, gen = self.cfg, self.device, self.gen
        b = x0.shape[0]
        rows, n = (slice(None), b)
        if self.whole is not None and self.rows is not None:
            rows, n = self.rows, len(self.whole[1])
        t = torch.randint(0, cfg.T, (n,), generator=gen)[rows].to(device)
        noise = torch.randn((n, *x0.shape[1:]), generator=gen)[rows].to(device)
        cond = None
        if self.num_classes and labels is not None:
            drop = torch.rand(n, generator=gen)[rows].to(device) < cfg.cond_drop
            cond = {"class_labels": torch.where(drop, self.num_classes, labels)}
        elif self.captions is not None:
            all_labels, all_indices = (labels, indices) if self.whole is None else self.whole
            cond = {"context": self.captions.draw(n, all_labels, all_indices, cfg.cond_drop, gen)[rows]}
        elif self.lowres is not None:
            drop = torch.rand(n, generator=gen)[rows].to(device) < cfg.cond_drop if cfg.cond_drop else None
            cond = self.lowres.training(x0, drop)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.use_autocast):
            if cfg.objective == "corrupt":
                amount = torch.rand(n, generator=gen)[rows].to(device)
                return corrupt_loss(self.model, x0, amount, torch.special.ndtr(noise), cfg.loss)
            return diffusion_loss(
                self.model,
                x0,
                t,
                noise,
                schedule=self.schedule,
                prediction=cfg.prediction,
                loss=cfg.loss,
                weighting=cfg.weighting,
                snr_gamma=cfg.snr_gamma,
                cond=cond,
            )

    def nonfinite(self, loss: Tensor, grad_norm: Tensor | None) -> bool:
        """Whether this step's loss or gradients hold NaN/inf (one host sync): then stop with a
        clear error before the update touches the weights or the EMA, or, with ``skip_nonfinite``,
        count the step and log it, and the caller skips the update."""
        if grad_norm is None:
            grads = [p.grad for p in self.net.parameters() if p.grad is not None]
            grad_norm = nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        finite = torch.isfinite(loss.detach().float()) & torch.isfinite(grad_norm.float())
        if bool(finite):
            return False
        value = loss.item()
        what = f"loss became {value}" if not math.isfinite(value) else "the gradients became non-finite"
        if not self.skip_nonfinite:
            last = list_checkpoints(self.ckpt_dir)
            where = f"the last good checkpoint is {last[-1][1]}" if last else "no checkpoint was written"
            raise TrainingError(
                f"{what} at step {self.step + 1}; stopped before the update (weights and EMA are "
                f"untouched); {where}. Lower --lr or check the data, then --resume, or pass "
                "--skip-nonfinite to skip such steps"
            )
        self.skipped_nonfinite += 1
        self.write_record({"step": self.step + 1, "skipped_nonfinite": self.skipped_nonfinite, "why": what})
        self.log(f"step {self.step + 1}: {what}; skipped it ({self.skipped_nonfinite} so far)")
        return True

    def read_losses(self) -> None:
        """Read the queued losses back from the device; stop with a clear error at NaN or inf."""
        if not self.pending:
            return
        numbers = [n for n, _ in self.pending]
        values = torch.stack([v for _, v in self.pending]).float().cpu().tolist()
        self.pending.clear()
        for number, value in zip(numbers, values, strict=True):
            if not math.isfinite(value):
                last = list_checkpoints(self.ckpt_dir)
                where = f"the last good checkpoint is {last[-1][1]}" if last else "no checkpoint was written"
                raise TrainingError(
                    f"loss became {value} at step {number}; {where}. "
                    "Lower --lr or check the data, then --resume"
                )
        self.window.extend(values)
        self.epoch_losses.add(values)

    def due(self, every: int) -> bool:
        return self.step % every == 0 or self.step == self.total_steps

    def after_step(self) -> None:
        """What is due after a step: epoch end, log record, checkpoint, sample grid, evaluation."""
        cfg = self.cfg
        if self.epoch_ended:
            self.end_epoch()
        if self.due(cfg.log_every):
            self.write_log_record()
        self.bar.update(1)
        if self.due(cfg.checkpoint_every):
            self.read_losses()
            self.save()
        if self.due(cfg.sample_every) and self.world.main:  # the others wait at the next collective
            with forked_rng(self.device):
                self.sample_grid()
            self.net.train()
        if self.evaluator is not None and self.due(cfg.eval_every):
            with forked_rng(self.device):
                self.run_eval()
            self.net.train()

    def write_log_record(self) -> None:
        """One ``log.jsonl`` record: the mean loss of the window, LR, speed, epochs, time."""
        self.read_losses()
        if not self.window:  # every step of the window was skipped (skip_nonfinite)
            return
        now = clock()
        ips = len(self.window) * self.cfg.batch_size / max(now - self.window_t, 1e-9)
        self.last_loss = self.window[-1]
        record = {
            "step": self.step,
            "loss": sum(self.window) / len(self.window),
            "lr": self.scheduler.get_last_lr()[0],
            "images_per_s": round(ips, 2),
            "epoch": round(self.batcher.progress, 4),
            "elapsed_s": round(now - self.t_start, 2),
        }
        self.write_record(record)
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{ips:.0f}")
        self.window.clear()
        self.window_t = now

    def write_record(self, record: dict[str, Any]) -> None:
        if not self.world.main:
            return
        assert self.log_file is not None, "records are written inside Trainer.outputs()"
        self.log_file.write(json.dumps(record) + "\n")
        self.log_file.flush()

    def end_epoch(self) -> None:
        """Log the mean loss of the epoch just finished; with ``keep_best``, write the EMA weights
        to ``best.safetensors`` when it is the lowest so far."""
        self.read_losses()
        epoch, loss = self.batcher.epoch, self.epoch_losses.close_epoch()
        record: dict[str, Any] = {"step": self.step, "epoch": epoch, "epoch_loss": loss}
        if self.cfg.keep_best and self.epoch_losses.is_best(loss):
            self.epoch_losses.best = {"epoch": epoch, "step": self.step, "loss": loss}
            metadata = {k: repr(v) for k, v in self.epoch_losses.best.items()}
            if self.world.main:
                save_weights(self.ema.model.state_dict(), self.out / BEST_WEIGHTS, metadata)
            record["best"] = True
            self.log(f"epoch {epoch}: mean loss {loss:.5f}, the lowest so far: wrote {BEST_WEIGHTS}")
        self.write_record(record)

    def sample_grid(self) -> None:
        from difflab.pipeline import Pipeline
        from difflab.viz import save_grid

        cfg = self.cfg
        pipe = Pipeline(self.ema.model, cfg, self.device, latent=self.space)
        extra = {} if self.lowres is None else {"lowres": self.lowres_inputs(cfg.sample_n)}
        images = pipe.sample(cfg.sample_n, sampler=cfg.sample_sampler, steps=cfg.sample_steps, seed=0,
                             **extra)
        save_grid(images, self.out / "samples" / f"step_{self.step:07d}.png")
        self.ema.model.eval()

    def lowres_inputs(self, n: int) -> Tensor:
        """The low-resolution images a super-resolution run's sample grids upscale: the first
        ``n`` of a fixed shuffle of the data, shrunk."""
        from difflab.conditioning.lowres import shrink

        assert self.lowres is not None
        pick = torch.randperm(len(self.data), generator=torch.Generator().manual_seed(0))[:n]
        x0, _ = self.pixels.batch(pick, device=self.device, flip=False)
        return shrink(x0, self.lowres.factor)

    def run_eval(self) -> None:
        assert self.evaluator is not None
        scores = self.evaluator(self.ema.model)
        self.write_record({"step": self.step, "eval": scores})
        self.bar.write(f"step {self.step}: " + ", ".join(f"{k} {v:g}" for k, v in scores.items()))

    def finish(self) -> TrainResult:
        """Read the last losses, make sure the last step has a checkpoint, plot the logs."""
        self.read_losses()
        self.last_loss = self.window[-1] if self.window else self.last_loss
        saved = list_checkpoints(self.ckpt_dir)
        # A kill between the last checkpoint and its weights leaves model.safetensors a step behind.
        stale = self.world.main and weights_step(self.out / FINAL_WEIGHTS) != self.step
        if self.world.agree(not saved or saved[-1][0] != self.step or stale):
            self.save()
        seconds = self.elapsed()
        if self.world.main:
            self.plot_logs()
        ips = 0.0 if seconds == 0 else self.step * self.cfg.batch_size / seconds
        return TrainResult(self.out, self.step, self.last_loss, seconds, ips)

    def plot_logs(self) -> None:
        from difflab.viz import plot_eval, plot_loss

        try:
            plot_loss(self.out / "log.jsonl", self.out / "loss.png")
            if self.evaluator is not None:
                plot_eval(self.out / "log.jsonl", self.out / "eval.png")
        except ValueError:
            pass  # too few records to plot


def train(
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Log = print,
    max_seconds: float | None = None,
    on_step: OnStep | None = None,
    skip_nonfinite: bool = False,
    grad_accum: int = 1,
) -> TrainResult:
    """Train ``config`` into the run folder ``out`` (see the README for its layout), holding its
    lock (:mod:`difflab.train.lock`: a second writer is refused).

    Inside a process group (torchrun and :func:`difflab.train.distributed.process_group`) every
    rank calls this: ``config.batch_size`` is the global batch, split over the ranks; rank 0
    writes and logs (``log`` and ``on_step`` run there only). ``grad_accum`` splits each rank's
    share in that many micro-batches; neither changes the result beyond floating-point rounding.

    ``max_seconds`` stops early (with a checkpoint) once that much training time has passed: for
    equal-time comparisons in benchmarks. ``on_step(step, seconds, ema_model)`` is called after
    every optimizer step (e.g. to snapshot the EMA weights at fixed wall-clock times).
    ``skip_nonfinite`` skips (and counts) steps whose loss or gradients are NaN/inf instead of
    stopping there."""
    out = Path(out)
    here = world()
    device = resolve_device(config.device)
    if here.distributed:
        from difflab.train.distributed import device_for

        device = device_for(device)
    if not here.main:
        log, progress = _silent, False
    if grad_accum < 1:
        raise ValueError(f"--grad-accum must be at least 1, got {grad_accum}")
    cfg, data = prepare_data(config, log)
    if here.main:
        check_folder(cfg, out, resume)
    with run_lock(out) if here.main else nullcontext():

        def prepare_folder() -> None:  # checked again: the folder may have changed before the lock
            if resume:
                check_same_autoencoder(cfg, out)
            write_run_config(cfg, out, resume)
            if cfg.latent:
                keep_autoencoder(cfg, out)

        here.run_on_main(prepare_folder)
        trainer = Trainer(cfg, data, out, device, log)
        trainer.skip_nonfinite = skip_nonfinite
        trainer.grad_accum = grad_accum
        return drive(trainer, resume=resume, progress=progress, max_seconds=max_seconds, on_step=on_step)


def check_folder(cfg: TrainConfig, out: Path, resume: bool) -> None:
    """Refuse, writing nothing, a run folder ``cfg`` cannot start or resume in."""
    if resume:
        check_same_autoencoder(cfg, out)
    check_run_config(cfg, out, resume)


def _silent(_: str) -> None:
    """The log of ranks other than 0."""


def drive(trainer: Trainer, *, resume: bool, progress: bool, max_seconds: float | None,
          on_step: OnStep | None, note: str | None = None) -> TrainResult:
    """Resume ``trainer`` if asked, log ``note`` and the run's description, train it to the end
    (or ``max_seconds``) and finish, holding the run folder's lock: the part every kind of
    training run shares. With many processes only rank 0 holds the lock, and a lost peer (dead,
    or hung past the timeout) stops every rank with a :class:`TrainingError` naming the last
    checkpoint."""
    with run_lock(trainer.out) if trainer.world.main else nullcontext():
        try:
            trainer.distribute()
            if resume:
                trainer.resume()
            if note is not None:
                trainer.log(note)
            trainer.describe()
            with trainer.outputs(progress):
                trainer.run(max_seconds, on_step)
            return trainer.finish()
        except CheckpointError as err:
            raise TrainingError(str(err)) from err
        except RuntimeError as err:
            lost = trainer.world.distributed and is_collective_failure(err)
            if isinstance(err, TrainingError) or not lost:
                raise
            last = list_checkpoints(trainer.ckpt_dir)
            where = f"the last checkpoint is {last[-1][1]}" if last else "no checkpoint was written yet"
            raise TrainingError(f"{lost_message(err.__cause__ or err)}; {where}: continue with --resume, on "
                                "any number of processes") from err
