"""A light quality metric during training (``--eval-every N``), logged to ``log.jsonl``.

Every N steps the EMA model draws ``eval_n`` samples (seeds 0..eval_n-1, ``eval_steps`` steps of
the run's sampler) and is scored against a fixed real subset: FD-digit plus the confident-digit
share on digit data (``eval_metric="auto"`` with 1-channel mnist/digits), FD-EffNetLite0
otherwise. The real features are computed once per run (and cached on disk).

Training sits one layer above :mod:`difflab.eval` and uses its metrics as a library (the digit
sources and Frechet distance of ``eval.evaluate``, extractors, cached statistics); eval never
imports training, which ``tests/test_layers.py`` checks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from difflab.data import ImageDataset
from difflab.run_config import TrainConfig


def resolve_metric(cfg: TrainConfig, data: ImageDataset) -> str:
    from difflab.eval.evaluate import DIGIT_SOURCES

    if cfg.eval_metric != "auto":
        return cfg.eval_metric
    digit = cfg.data.source in DIGIT_SOURCES and data.shape[0] == 1
    return "fd-digit" if digit else "fd-effnet"


class TrainingEval:
    def __init__(self, cfg: TrainConfig, data: ImageDataset, device: torch.device,
                 log: Callable[[str], None], latent: Any = None) -> None:
        """``latent``: a latent run's :class:`~difflab.latent.LatentSpace`, to decode samples."""
        self.cfg, self.data, self.device, self.log, self.latent = cfg, data, device, log, latent
        self.metric = resolve_metric(cfg, data)
        self._real = None
        self._extractor = None

    def _prepare(self) -> None:
        from difflab.data.images import uint8_to_float
        from difflab.eval.features import get_extractor
        from difflab.eval.stats import cached_features

        digit = self.metric == "fd-digit"
        self._extractor = get_extractor("digit" if digit else "effnet-lite0", self.device)
        n_real = min(len(self.data), 5000 if digit else 4 * self.cfg.eval_n)
        keep = torch.randperm(len(self.data), generator=torch.Generator().manual_seed(0))[:n_real]
        real = uint8_to_float(self.data.images[keep.sort().values])
        name = f"{self.cfg.data.source}-train"
        self._real = cached_features(real, self._extractor, name=name, log=self.log)

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> dict[str, float]:
        from difflab.eval.evaluate import frechet
        from difflab.eval.scores import confident_share
        from difflab.eval.stats import extract
        from difflab.pipeline import Pipeline

        if self._real is None:
            self._prepare()
        pipe = Pipeline(model, self.cfg, self.device, latent=self.latent)
        images = pipe.sample(self.cfg.eval_n, steps=self.cfg.eval_steps, seed=0)
        model.eval()
        fake = extract(images, self._extractor)
        result = {self._real.label: round(frechet(self._real, fake), 4)}
        if self.metric == "fd-digit":
            result["confident-digit"] = round(confident_share(self._extractor.probs(images)), 4)
        return result
