"""DreamBooth (Ruiz et al. 2023, "DreamBooth: Fine Tuning Text-to-Image Diffusion Models for
Subject-Driven Generation") as a LoRA adapter on a text-conditional run.

A handful of images of one subject are bound to a prompt with a rare identifier ("a sks digit");
the fine-tune minimises, per step (their eq. 2),

    E || x_hat(alpha_t x + sigma_t eps, c_instance) - x ||^2
      + lambda E || x_hat(alpha_t x_pr + sigma_t eps', c_class) - x_pr ||^2,

the run's own diffusion loss on a batch of instance images with the instance prompt, plus
``prior_weight`` (lambda) times the same loss on a batch of *prior-preservation* images with the
class prompt ("a handwritten digit"). The prior images are drawn by the base model itself from the
class prompt before training (sec. 4.1: the class-specific prior preservation loss) and cached in
``out/prior/`` (PNGs and ``prior.json``, the base weights' sha256 and the sampling settings; reused
when they match), so the adapter keeps what the class prompt meant while it learns the subject.

Everything else is :mod:`difflab.train.finetune`'s LoRA fine-tune: the adapter folder, exact
resume (the prior stream's batch order lives in the checkpoint too) and ``difflab sample BASE
--lora OUT --prompt "a sks digit"``. With ``prior_weight=0`` no prior image is drawn or used and
the run is exactly a LoRA fine-tune on the instance images captioned with the instance prompt.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from difflab.data import Batcher, ImageDataset, load_dataset, parse_data_spec
from difflab.io import atomic_write
from difflab.nets.lora import LoRAConfig
from difflab.train.finetune import LoRATrainer, finetune_config, load_base, train_adapter
from difflab.train.loop import Log, OnStep, TrainingError, TrainResult, forked_rng

PRIOR_DIR = "prior"
DEFAULT_CLASS_IMAGES = 100


def prior_prompts(class_prompt: str | Sequence[str], n: int) -> list[str]:
    """The prompt of each of ``n`` prior images: the class prompt, or several cycled."""
    prompts = [class_prompt] if isinstance(class_prompt, str) else list(class_prompt)
    return [prompts[i % len(prompts)] for i in range(n)]


def prior_images(base: Any, out: Path, class_prompt: str | Sequence[str], n: int, steps: int | None,
                 log: Log) -> Path:
    """``n`` images the base run draws from ``class_prompt`` (or several class prompts, cycled;
    the run's sampler and guidance, seeds 0..n-1), written to ``out/prior/`` once and reused while
    base weights and settings match."""
    from difflab.data import save_images

    folder = out / PRIOR_DIR
    key = {"base_sha256": base.weights_sha256,
           "class_prompt": class_prompt if isinstance(class_prompt, str) else list(class_prompt), "n": n,
           "sampler": base.config.sample_sampler, "steps": steps or base.config.sample_steps,
           "guidance": base.config.sample_guidance, "seed": 0}
    record = folder / "prior.json"
    if record.is_file() and json.loads(record.read_text()) == key:
        log(f"prior preservation: reusing the {n} images of {class_prompt!r} in {folder}")
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    log(f"prior preservation: drawing {n} images of {class_prompt!r} from the base run "
        f"({key['sampler']}, {key['steps']} steps, guidance {key['guidance']:g})")
    images = base.sample(n, prompts=prior_prompts(class_prompt, n), steps=key["steps"], seed=0)
    save_images(images, folder)
    atomic_write(record, lambda tmp: tmp.write_text(json.dumps(key, indent=2) + "\n"))
    return folder


class DreamBoothTrainer(LoRATrainer):
    """The LoRA trainer with the prior-preservation term: each step's loss is the instance batch's
    plus ``prior_weight`` times a prior batch's, drawn from its own batcher and captioned with the
    class prompt."""

    def __init__(self, *args: Any, prior: ImageDataset | None, prior_weight: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prior_weight = prior_weight
        self.prior = prior if prior is not None and prior_weight > 0 else None
        if self.prior is not None:
            from difflab.conditioning.captions import CaptionTable
            from difflab.conditioning.text import get_encoder

            text = self.cfg.text
            assert text is not None and self.prior.captions is not None
            if self.device.type != "cpu":
                self.prior.images = self.prior.images.to(self.device)
            self.prior_batcher = Batcher(len(self.prior), self.cfg.batch_size, self.cfg.seed + 2)
            with forked_rng(self.device):
                self.prior_captions = CaptionTable.from_captions(
                    self.prior.captions, get_encoder(text.encoder, text.max_length), self.device)
            distinct = len(self.prior_captions.captions)
            self.log(f"prior preservation: {len(self.prior)} images, {distinct} distinct captions, "
                     f"loss weight {prior_weight:g}")

    def loss(self, x0: Tensor, labels: Tensor | None, indices: Tensor | None = None) -> Tensor:
        loss = super().loss(x0, labels, indices)
        if self.prior is None:
            return loss
        flips = self.prior_batcher.generator()
        idx = self.prior_batcher.next_indices()
        px0, _ = self.prior.batch(idx, generator=flips, device=self.device)
        instance_captions, self.captions = self.captions, self.prior_captions
        try:
            prior_loss = super().loss(px0, None, idx)
        finally:
            self.captions = instance_captions
        return loss + self.prior_weight * prior_loss

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.prior is not None:
            state["prior_batcher"] = self.prior_batcher.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.prior is not None:
            self.prior_batcher.load_state_dict(state["prior_batcher"])


def captioned_folder(folder: str | Path, prompt: str, size: int | None, channels: int | None) -> ImageDataset:
    """The images of ``folder`` (any tree of images), every one captioned ``prompt``."""
    data = load_dataset(parse_data_spec(f"folder:{folder}", image_size=size, channels=channels))
    data.captions = [prompt] * len(data)
    return data


def dreambooth(
    base_run: str | Path,
    out: str | Path,
    *,
    instance_images: str | Path,
    instance_prompt: str,
    class_prompt: str | Sequence[str],
    prior_weight: float = 1.0,
    num_class_images: int = DEFAULT_CLASS_IMAGES,
    prior_steps: int | None = None,
    lora: LoRAConfig | None = None,
    steps: int | None = None,
    time_budget: float | None = None,
    lr: float = 1e-3,
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
    """Fine-tune a LoRA adapter (default rank 4 on attention) of the text-conditional run
    ``base_run`` on the images in ``instance_images`` with ``instance_prompt``, preserving the
    prior of ``class_prompt`` (or of several class prompts, each prior image captioned with the
    one it was drawn from) with weight ``prior_weight`` on ``num_class_images`` images the base
    draws (in ``prior_steps`` steps; cached in ``out/prior``). Writes the adapter folder ``out``."""
    lora = lora or LoRAConfig()
    out, base_run = Path(out), Path(base_run)
    if prior_weight < 0:
        raise ValueError(f"--prior-weight must be >= 0, got {prior_weight}")
    classes = [class_prompt] if isinstance(class_prompt, str) else list(class_prompt)
    if not instance_prompt.strip() or not classes or not all(c.strip() for c in classes):
        raise ValueError("DreamBooth needs an --instance-prompt and a --class-prompt")
    class_prompt = class_prompt if isinstance(class_prompt, str) else classes
    base, modules, base_state = load_base(base_run, out, weights, lora)
    if base.config.cond != "text":
        raise TrainingError(f"DreamBooth binds a subject to a prompt: {base_run} must be a text-conditional "
                            f"run (--cond text), and it was trained with --cond {base.config.cond}")
    if base.latent is not None:
        raise TrainingError("DreamBooth here fine-tunes pixel runs; this one is a latent run")
    data_cfg = base.config.data
    instance = captioned_folder(instance_images, instance_prompt, data_cfg.image_size, data_cfg.channels)
    if instance.shape != base.image_shape:
        raise TrainingError(f"the instance images are {instance.shape}, the run draws {base.image_shape}")
    cfg = finetune_config(base.config, parse_data_spec(f"folder:{Path(instance_images).resolve()}"),
                          steps=steps, time_budget=time_budget, lr=lr, batch_size=batch_size, seed=seed,
                          sample_every=sample_every, checkpoint_every=checkpoint_every, device=device)
    assert cfg.text is not None
    cfg = cfg.replace(text=cfg.text.replace(captions="file", templates=""), class_names=())
    prior = None
    if prior_weight > 0:
        out.mkdir(parents=True, exist_ok=True)
        with torch.random.fork_rng():
            folder = prior_images(base, out, class_prompt, num_class_images, prior_steps, log)
        prior = captioned_folder(folder, "", data_cfg.image_size, data_cfg.channels)
        prior.captions = prior_prompts(class_prompt, len(prior))
    log(f"DreamBooth: {len(instance)} instance images as {instance_prompt!r}"
        + (f", {num_class_images} prior images of {class_prompt!r} at weight {prior_weight:g}" if prior else
           " (no prior preservation)"))
    extra = {"dreambooth": {"instance_prompt": instance_prompt, "class_prompt": class_prompt,
                            "prior_weight": prior_weight,
                            "num_class_images": num_class_images if prior else 0,
                            "instance_images": len(instance)}}

    def make(run_device: torch.device) -> DreamBoothTrainer:
        return DreamBoothTrainer(cfg, instance, out, run_device, log, base_state, lora, modules,
                                 prior=prior, prior_weight=prior_weight)

    return train_adapter(base, base_run, out, cfg, lora, modules, make, extra, resume=resume,
                         progress=progress, log=log, max_seconds=max_seconds, on_step=on_step)
