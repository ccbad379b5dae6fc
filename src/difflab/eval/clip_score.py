"""CLIP-score: how well generated images match their prompts, as a CLIP model sees it.

CLIPScore (Hessel et al. 2021, "CLIPScore: A Reference-free Evaluation Metric for Image
Captioning", eq. 1) is w * max(cos(E_image, E_text), 0) for the image and text embeddings of
CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
Supervision"); with w = 100, as torchmetrics' ``CLIPScore`` and the text-to-image literature
report it, a score is the mean over (image, prompt) pairs of 100 * max(cos, 0). It depends on the
CLIP model, so every number is labelled ``CLIP-score (<model name>)``, the name being the weights
folder's.

The model is ``transformers``' ``CLIPModel`` with its tokenizer, loaded from a local folder
(``--clip-weights DIR``: what ``CLIPModel.save_pretrained`` and the tokenizer's
``save_pretrained`` write, e.g. a copy of openai/clip-vit-base-patch32); nothing is downloaded.
Images go through the preprocessing of ``CLIPImageProcessor``, done here with Pillow and numpy
(no torchvision): difflab's [-1, 1] images are quantised to the uint8 pixels a saved PNG would
hold, made RGB, resized so the shorter side is ``shortest_edge`` (bicubic), centre-cropped to
``crop_size``, scaled to [0, 1] and normalised with the CLIP mean and std. Those four settings come
from the folder's ``preprocessor_config.json`` when it has one, else from the vision config's
``image_size`` and OpenAI's CLIP mean and std.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PIP_HINT = "pip install transformers"
SCALE = 100.0


@dataclass(frozen=True)
class Preprocessing:
    """CLIPImageProcessor's settings: shorter side after the resize, crop size, mean and std."""

    shortest_edge: int
    crop: tuple[int, int]
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD

    @classmethod
    def from_folder(cls, folder: Path, image_size: int) -> Preprocessing:
        path = folder / "preprocessor_config.json"
        if not path.is_file():
            return cls(image_size, (image_size, image_size))
        cfg = json.loads(path.read_text())
        size, crop = cfg.get("size", image_size), cfg.get("crop_size", image_size)
        edge = size.get("shortest_edge", size.get("height", image_size)) if isinstance(size, dict) else size
        crop_hw = (crop["height"], crop["width"]) if isinstance(crop, dict) else (crop, crop)
        mean = tuple(cfg.get("image_mean", OPENAI_CLIP_MEAN))
        std = tuple(cfg.get("image_std", OPENAI_CLIP_STD))
        return cls(int(edge), (int(crop_hw[0]), int(crop_hw[1])), mean, std)

    def __call__(self, images: Tensor) -> Tensor:
        """[N, 1 or 3, H, W] in [-1, 1] -> CLIP's pixel values [N, 3, crop_h, crop_w] (float32)."""
        from PIL import Image

        from difflab.viz import to_uint8

        out = []
        for pixels in to_uint8(images):  # [H, W, C] uint8
            img = Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).convert("RGB")
            w, h = img.size
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(self.shortest_edge * long / short)
            size = (self.shortest_edge, new_long) if w <= h else (new_long, self.shortest_edge)
            img = img.resize(size, resample=Image.Resampling.BICUBIC)
            ch, cw = self.crop
            top, left = (img.size[1] - ch) // 2, (img.size[0] - cw) // 2
            arr = np.asarray(img, dtype=np.float32)[top : top + ch, left : left + cw] / 255.0
            arr = (arr - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
            out.append(torch.from_numpy(arr.transpose(2, 0, 1).copy()))
        return torch.stack(out)


@dataclass
class ClipScoreResult:
    """The mean of 100 * max(cos, 0) over the pairs, its standard error and the per-pair scores."""

    label: str
    value: float
    stderr: float
    scores: Tensor


def _features(out: object) -> Tensor:
    """``get_*_features`` returns the projected embedding, or (transformers 5) an output whose
    ``pooler_output`` is."""
    return out if isinstance(out, Tensor) else out.pooler_output  # type: ignore[attr-defined]


class ClipScorer:
    """A CLIP model, its tokenizer and its image preprocessing, loaded from a local folder."""

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu") -> None:
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise ValueError(f"--clip-weights {folder}: no CLIP model there; give a folder written by "
                             "CLIPModel.save_pretrained with its tokenizer (e.g. openai/clip-vit-base-patch32"
                             ")")
        try:
            from transformers import AutoTokenizer, CLIPModel
        except ImportError as err:
            raise ImportError(f"CLIP-score needs transformers: {PIP_HINT}") from err
        self.device = torch.device(device)
        self.model = CLIPModel.from_pretrained(folder, local_files_only=True).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.preprocess = Preprocessing.from_folder(folder, int(self.model.config.vision_config.image_size))
        self.max_length = int(self.model.config.text_config.max_position_embeddings)
        self.name = folder.resolve().name
        self.label = f"CLIP-score ({self.name})"

    @torch.no_grad()
    def image_embeddings(self, images: Tensor, batch_size: int = 64) -> Tensor:
        """Unit-norm image embeddings [N, D] of images in [-1, 1]."""
        parts = []
        for chunk in images.split(batch_size):
            pixels = self.preprocess(chunk).to(self.device)
            feats = _features(self.model.get_image_features(pixel_values=pixels))
            parts.append(F.normalize(feats.float(), dim=-1))
        return torch.cat(parts).cpu()

    @torch.no_grad()
    def text_embeddings(self, prompts: Sequence[str], batch_size: int = 256) -> Tensor:
        """Unit-norm text embeddings [N, D], prompts truncated to the model's context length."""
        parts = []
        for start in range(0, len(prompts), batch_size):
            enc = self.tokenizer(list(prompts[start : start + batch_size]), padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            feats = _features(self.model.get_text_features(input_ids=enc["input_ids"],
                                                           attention_mask=enc["attention_mask"]))
            parts.append(F.normalize(feats.float(), dim=-1))
        return torch.cat(parts).cpu()

    def score(self, images: Tensor, prompts: Sequence[str], batch_size: int = 64) -> ClipScoreResult:
        """CLIP-score of image i against prompt i."""
        if len(images) != len(prompts) or not len(prompts):
            raise ValueError(f"CLIP-score pairs each image with its prompt: got {len(images)} images and "
                             f"{len(prompts)} prompts")
        cos = (self.image_embeddings(images, batch_size) * self.text_embeddings(prompts)).sum(-1)
        scores = SCALE * cos.clamp(min=0).double()
        stderr = float(scores.std() / math.sqrt(len(scores))) if len(scores) > 1 else float("nan")
        return ClipScoreResult(self.label, float(scores.mean()), stderr, scores)


def clip_score(images: Tensor, prompts: Sequence[str], weights: str | Path, device: str = "cpu") -> float:
    """The mean CLIP-score of ``images`` (in [-1, 1]) against ``prompts``, one per image, with the
    CLIP model in the folder ``weights``."""
    return ClipScorer(weights, device).score(images, prompts).value


def score_prompts(pipe: Any, prompt_file: str | Path | None = None) -> tuple[list[str], str]:
    """(prompts, where they come from) for CLIP-scoring a text-conditional run: the lines of
    ``prompt_file``, else the run's held-out caption prompts (wordings it never trained on)."""
    from difflab.conditioning.captions import held_out_prompts
    from difflab.conditioning.text import read_prompt_file

    cfg = pipe.config
    if cfg.cond != "text":
        raise ValueError(f"clip-score scores runs sampled with prompts (--cond text); this run's cond is "
                         f"{cfg.cond!r}")
    if prompt_file is not None:
        prompts = read_prompt_file(prompt_file)
        return prompts, f"{len(prompts)} prompts from {prompt_file}"
    if cfg.text is None or cfg.text.captions != "templates" or not cfg.class_names:
        raise ValueError("clip-score on a run trained on a captions file needs the prompts to score: "
                         "--prompt-file FILE")
    prompts, _ = held_out_prompts(cfg.text.templates, cfg.class_names)
    return prompts, f"{len(prompts)} held-out prompts"


def prompted_samples(pipe: Any, prompts: Sequence[str], n: int, *, seed: int = 0, batch_size: int = 256,
                     progress: Callable[[int], Any] | None = None, **sample_kwargs: Any
                     ) -> tuple[Tensor, list[str]]:
    """``n`` samples of ``pipe``, sample i for prompt ``i mod len(prompts)`` with seed ``seed + i``
    (``sample_kwargs``: guidance, sampler, steps); returns the images and each one's prompt."""
    assigned = [prompts[i % len(prompts)] for i in range(n)]
    chunks = []
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        seeds = list(range(seed + start, seed + stop))
        chunks.append(pipe.sample(stop - start, prompts=assigned[start:stop], seeds=seeds,
                                  batch_size=batch_size, **sample_kwargs))
        if progress is not None:
            progress(stop - start)
    return torch.cat(chunks), assigned
