"""Fine-tuning a trained run on new data with a LoRA adapter: ``finetune(base_run, out, lora=...)``.

The base run is only read: its config and weights are loaded (the weights identified by the
sha256 of their file), the chosen layers are wrapped with peft's LoRA layers
(:mod:`difflab.nets.lora`), and everything but the adapter's A and B matrices is frozen. The
steps are the training loop's own (:class:`LoRATrainer` is a :class:`~difflab.train.loop.Trainer`:
the same loss, EMA, LR schedule, time budget, sample grids, ``log.jsonl`` and checkpoints that
resume bit for bit), with two differences: checkpoints hold only the adapter (its weights, EMA and
optimizer state), and the run's weights file is ``adapter.safetensors`` (the EMA of A and B), next
to ``adapter.json`` (rank, alpha, adapted layers, base run and its sha256). ``config.json`` is the
base run's config with the fine-tune's data, length and optimizer settings.

:func:`merge_into` writes a new run folder whose weights are a base run's with adapters merged in
at given scales; it samples like any run and needs no adapter.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from difflab.data import DataConfig, load_dataset, parse_data_spec
from difflab.device import resolve_device
from difflab.io import atomic_write, save_weights
from difflab.nets.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    DEFAULT_LR,
    DEFAULT_STEPS,
    LoRAConfig,
    adapter_info,
    adapter_state,
    as_adapters,
    inject,
    load_adapter_state,
    merge_adapters,
    short,
    target_modules,
)
from difflab.run_config import TrainConfig
from difflab.train.checkpoint import prune_checkpoints, save_checkpoint
from difflab.train.ema import EMA
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


class LoRATrainer(Trainer):
    """The training loop on a frozen base network with a LoRA adapter: only the adapter trains,
    and checkpoints and the run's weights file hold only the adapter."""

    def __init__(self, cfg: TrainConfig, data: Any, out: Path, device: torch.device, log: Log,
                 base_state: dict[str, torch.Tensor], lora: LoRAConfig, modules: Sequence[str]) -> None:
        from difflab.nets import build_net

        super().__init__(cfg, data, out, device, log)
        # Replace the loop's freshly initialised network by the base weights with the adapter, and
        # rebuild what holds its parameters (EMA, optimizer, LR schedule); A's random init draws
        # from the run's seed.
        torch.manual_seed(cfg.seed)
        net = build_net(cfg.net)
        net.load_state_dict(base_state)
        net = inject(net, lora, modules).to(device)
        if use_channels_last(net, device):
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        self.ema = EMA(net, cfg.ema_decay, cfg.ema_warmup)
        self.optimizer = make_optimizer(cfg, net, device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           lr_lambda(cfg, lambda: self.total_steps))
        self.model = torch.compile(net) if cfg.compile else net

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["model"] = adapter_state(self.net)
        state["ema"] = {"model": adapter_state(self.ema.model), "updates": self.ema.updates}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_adapter_state(self.net, state["model"])
        load_adapter_state(self.ema.model, state["ema"]["model"])
        full = {**state, "model": self.net.state_dict(),
                "ema": {"model": self.ema.model.state_dict(), "updates": state["ema"]["updates"]}}
        super().load_state_dict(full)

    def checkpoint(self) -> None:
        """Save the adapter's training state and its EMA weights; prune old checkpoints."""
        save_checkpoint(self.state_dict(), self.ckpt_dir / f"step_{self.step:07d}.pt")
        save_weights(adapter_state(self.ema.model), self.out / ADAPTER_WEIGHTS, {"step": str(self.step)})
        prune_checkpoints(self.ckpt_dir, self.cfg.keep_checkpoints)

    def describe(self) -> None:
        super().describe()
        total = sum(p.numel() for n, p in self.net.named_parameters() if ".lora_" not in n)
        trained = sum(p.numel() for p in self.net.parameters() if p.requires_grad)
        self.log(f"LoRA: training {trained:,} adapter parameters ({trained / total:.2%} of the base "
                 f"network's {total:,}, which stay frozen)")


def finetune_config(base: TrainConfig, data: str | DataConfig, *, steps: int | None = None,
                    time_budget: float | None = None, lr: float = DEFAULT_LR, batch_size: int | None = None,
                    seed: int = 0, sample_every: int | None = None, checkpoint_every: int | None = None,
                    device: str | None = None) -> TrainConfig:
    """The fine-tune's run config: the base run's network, schedule, objective and sampling
    defaults, with the new data (at the base run's image size and channels) and the fine-tune's
    length and optimizer settings. No keep-best, no in-training evaluation."""
    if isinstance(data, str):
        data = parse_data_spec(data)
    data = data.replace(image_size=base.data.image_size, channels=base.data.channels)
    if steps is not None and time_budget is not None:
        raise ValueError("give --steps or --time-budget, not both")
    length: dict[str, Any] = ({"steps": steps or DEFAULT_STEPS, "time_budget": None} if time_budget is None
                              else {"time_budget": time_budget})
    changes: dict[str, Any] = {
        "data": data, "lr": lr, "seed": seed, "epochs": None, "keep_best": False, "eval_every": 0,
        "warmup_steps": min(base.warmup_steps, 50), "lr_schedule": "cosine", **length,
    }
    if batch_size is not None:
        changes["batch_size"] = batch_size
    if sample_every is not None:
        changes["sample_every"] = sample_every
    if checkpoint_every is not None:
        changes["checkpoint_every"] = checkpoint_every
    if device is not None:
        changes["device"] = device
    return base.replace(**changes)


def finetune(
    base_run: str | Path,
    out: str | Path,
    *,
    data: str | DataConfig,
    lora: LoRAConfig | None = None,
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
    """Train a LoRA adapter (``lora``, default rank 4 on the attention layers) of the run
    ``base_run`` on ``data`` into the folder ``out`` (``adapter.safetensors``, ``adapter.json``,
    ``config.json``, ``log.jsonl``, checkpoints, sample grids). The base run is never written.
    ``resume`` continues ``out`` from its last checkpoint (the same base weights, adapter and
    settings; only the length and logging may change)."""
    lora = lora or LoRAConfig()
    out, base_run = Path(out), Path(base_run)
    base, modules, base_state = load_base(base_run, out, weights, lora)
    cfg = finetune_config(base.config, data, steps=steps, time_budget=time_budget, lr=lr,
                          batch_size=batch_size, seed=seed, sample_every=sample_every,
                          checkpoint_every=checkpoint_every, device=device)
    if cfg.class_cond and not load_dataset(cfg.data).num_classes:
        log("the new data has no labels: the adapter learns the class-conditional run's unconditional "
            "(null-class) branch")
        cfg = cfg.replace(cond="none")
    cfg, dataset = prepare_data(cfg, log)
    if cfg.net != base.config.net:
        raise TrainingError("the fine-tune data needs another network than the base run's; give data of the "
                            "base run's image size and channels")

    def make(run_device: torch.device) -> LoRATrainer:
        return LoRATrainer(cfg, dataset, out, run_device, log, base_state, lora, modules)

    return train_adapter(base, base_run, out, cfg, lora, modules, make, {}, resume=resume, progress=progress,
                         log=log, max_seconds=max_seconds, on_step=on_step)


def load_base(base_run: Path, out: Path, weights: str | None, lora: LoRAConfig) -> tuple[Any, list[str],
                                                                                         dict[str, Any]]:
    """The base run as a pipeline (on the CPU), the layers ``lora`` adapts and a copy of its weights."""
    from difflab.pipeline import Pipeline

    if out.resolve() == base_run.resolve():
        raise TrainingError(f"--out {out} is the base run itself; the base run is read-only, "
                            "choose a new folder")
    base = Pipeline.load(base_run, "cpu", weights)
    if base.weights_sha256 is None or base.weights_file is None:
        raise TrainingError(f"{base_run} is not a difflab run folder with a weights file to fine-tune")
    if base.config.objective != "diffusion":
        raise TrainingError("LoRA fine-tunes diffusion runs; this run was trained with --objective corrupt")
    modules = target_modules(base.net, lora.targets)
    return base, modules, {k: v.clone() for k, v in base.net.state_dict().items()}


def train_adapter(base: Any, base_run: Path, out: Path, cfg: TrainConfig, lora: LoRAConfig,
                  modules: Sequence[str], make_trainer: Any, extra_info: dict[str, Any], *, resume: bool,
                  progress: bool, log: Log, max_seconds: float | None, on_step: OnStep | None) -> TrainResult:
    """Write ``config.json`` and ``adapter.json`` (checked against a resumed run's, before the
    folder's lock is taken and again under it), build the trainer (``make_trainer(device)``),
    resume it, run it and finish."""
    info = {**adapter_info(lora, base.net, modules, base_run, base.weights_file, base.weights_sha256,
                           cfg.data.to_dict()), **extra_info}
    check_adapter_config(out, info, resume)
    check_run_config(cfg, out, resume)
    with run_lock(out):
        check_adapter_config(out, info, resume)
        write_run_config(cfg, out, resume)
        atomic_write(out / ADAPTER_CONFIG, lambda tmp: tmp.write_text(json.dumps(info, indent=2) + "\n"))
        note = (f"base {base_run} ({base.weights_file}, {short(base.weights_sha256)}) is read only; the "
                f"adapter (rank {lora.rank}, {', '.join(lora.targets)}: {len(modules)} layers) goes to "
                f"{out / ADAPTER_WEIGHTS}")
        return drive(make_trainer(resolve_device(cfg.device)), resume=resume, progress=progress,
                     max_seconds=max_seconds, on_step=on_step, note=note)


def check_adapter_config(out: Path, info: dict[str, Any], resume: bool) -> None:
    """A resumed fine-tune must have the same base weights and adapter settings."""
    path = out / ADAPTER_CONFIG
    if not resume or not path.is_file():
        return
    saved = json.loads(path.read_text())
    if saved.get("base", {}).get("sha256") != info["base"]["sha256"]:
        raise TrainingError(f"--resume: {out} fine-tunes base weights {short(saved['base']['sha256'])}, "
                            f"but the base run now holds {short(info['base']['sha256'])}; resume from the "
                            "same base")
    diff = [k for k in ("lora", "modules", "dreambooth") if saved.get(k) != info.get(k)]
    if diff:
        raise TrainingError(f"--resume: {out} was trained with a different LoRA ({', '.join(diff)}); use the "
                            "same --rank/--alpha/--targets or a new --out")


def merge_into(base_run: str | Path, lora: Any, out: str | Path, scales: Any = None,
               weights: str | None = None) -> Path:
    """Write a new run folder ``out``: the base run's config and its weights with the adapters
    (folders, or (folder, scale) pairs; ``scales`` one for all or one per adapter) merged in.
    ``merged.json`` records the base weights' sha256 and each adapter with its scale."""
    from difflab.pipeline import Pipeline

    out = Path(out)
    if (out / "config.json").exists() or (out / "model.safetensors").exists():
        raise TrainingError(f"{out} already holds a run; choose another --out")
    base = Pipeline.load(base_run, "cpu", weights)
    adapters = as_adapters(lora, scales)
    net = merge_adapters(base.net, adapters, base.weights_sha256, base_run)
    out.mkdir(parents=True, exist_ok=True)
    config = base.config.replace(keep_best=False)
    atomic_write(out / "config.json", lambda tmp: tmp.write_text(config.to_json() + "\n"))
    save_weights(net.state_dict(), out / "model.safetensors", {"merged_lora": "1"})
    record = {"base": {"run": str(Path(base_run).resolve()), "weights": base.weights_file,
                       "sha256": base.weights_sha256},
              "adapters": [{"path": str(a.path.resolve()), "scale": s, "rank": a.config.rank}
                           for a, s in adapters]}
    atomic_write(out / "merged.json", lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
    if config.latent:
        import shutil

        from difflab.latent.space import RUN_COPY

        source = Path(base_run) / RUN_COPY
        if source.is_file():
            shutil.copyfile(source, out / RUN_COPY)
    return out
