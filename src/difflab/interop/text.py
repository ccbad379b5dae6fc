"""A diffusers pipeline's own text encoder and tokenizer as difflab's text condition.

A text-conditional diffusers pipeline (``UNet2DConditionModel``; Stable Diffusion's shape) was
trained on the token states of its own frozen text encoder, encoded as
``StableDiffusionPipeline.encode_prompt`` does: the tokenizer pads (and truncates) every prompt to
``tokenizer.model_max_length``, the encoder's first output (the last hidden states) is the
context, with the attention mask passed only when the encoder's config says
``use_attention_mask``. The unconditional input of classifier-free guidance is the encoded empty
prompt (Ho & Salimans 2022). :class:`FolderTextCondition` does exactly that, with the interface of
:class:`difflab.conditioning.text.TextCondition` (``cond``, ``null``, ``negative``), so every
difflab sampler and guidance option runs on it.

The encoder and tokenizer are read from the folder only (``local_files_only``); one that is not on
disk is a one-line error, never a download.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from difflab.io import CheckpointError, first_line


class FolderTextCondition:
    """``text_encoder/`` and ``tokenizer/`` of a pipeline folder (transformers classes named in
    ``model_index.json``) as network inputs ``{"context": [B, L, D]}``."""

    def __init__(self, folder: str | Path, encoder_class: str, tokenizer_class: str) -> None:
        import transformers

        folder = Path(folder)
        enc_dir, tok_dir = folder / "text_encoder", folder / "tokenizer"
        if not (enc_dir / "config.json").is_file() or not any(enc_dir.glob("*.safetensors")):
            raise CheckpointError(f"{folder}: the text encoder {encoder_class} is not on disk (no "
                                  "text_encoder/config.json and safetensors weights); difflab downloads "
                                  "nothing: save the pipeline with its text encoder")
        if not tok_dir.is_dir():
            raise CheckpointError(f"{folder}: the tokenizer {tokenizer_class} is not on disk (no "
                                  "tokenizer/); difflab downloads nothing: save the pipeline with it")
        enc_cls = getattr(transformers, encoder_class, None)
        tok_cls = getattr(transformers, tokenizer_class, None)
        if enc_cls is None or tok_cls is None:
            missing = encoder_class if enc_cls is None else tokenizer_class
            raise ValueError(f"{folder}: {missing} is not a transformers class; difflab reads the text "
                             "encoder and tokenizer with transformers")
        try:
            self.tokenizer: Any = tok_cls.from_pretrained(str(tok_dir), local_files_only=True)
            self.encoder: Any = enc_cls.from_pretrained(str(enc_dir), local_files_only=True,
                                                        use_safetensors=True)
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            raise CheckpointError(f"{folder}: the text encoder or tokenizer could not be loaded: "
                                  f"{first_line(err)}") from err
        self.encoder = self.encoder.float().eval().requires_grad_(False)
        self._cache: dict[str, Tensor] = {}

    def encode(self, prompts: Sequence[str]) -> Tensor:
        """[B, model_max_length, D] float32 states (CPU), cached per prompt."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        new = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if new:
            ids = self.tokenizer(new, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt")
            mask = ids.attention_mask if getattr(self.encoder.config, "use_attention_mask", False) else None
            with torch.no_grad():
                states = self.encoder(ids.input_ids, attention_mask=mask)[0].float()
            self._cache.update(zip(new, states, strict=True))
        return torch.stack([self._cache[p] for p in prompts])

    def cond(self, prompts: Sequence[str], device: torch.device | str = "cpu") -> dict[str, Any]:
        return {"context": self.encode(prompts).to(device)}

    def null(self, batch: int, device: torch.device | str = "cpu") -> dict[str, Any]:
        return {"context": self.encode([""]).to(device).expand(batch, -1, -1)}

    def negative(self, prompts: Sequence[str], device: torch.device | str = "cpu") -> dict[str, Any]:
        return self.cond(prompts, device)


__all__ = ["FolderTextCondition"]
