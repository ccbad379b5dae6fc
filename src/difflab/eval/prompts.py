"""``prompt-agreement-digit``: does a text-conditional digit model draw the digit a prompt names?

For a run whose captions were made from class labels (:mod:`difflab.conditioning.captions`), each
prompt names one class. Sample ``i`` is drawn for prompt ``i mod P`` with seed ``seed + i`` under
classifier-free guidance (Ho & Salimans 2022), and the pre-trained MNIST classifier
(:mod:`difflab.eval.digit_classifier`) judges it: the score is the share of samples it assigns to
the named digit, with the binomial standard error. It measures prompt following as seen by that
one classifier (hence the ``-digit`` label), on digit data only.

The default prompts are the template set's *held-out* templates for every class: wordings the
model never trained on, so a high score means it reads the digit out of the prompt rather than
recalling memorised captions. ``prompt_file`` scores any prompts, one per line, each naming one
digit (as a numeral or a word).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


@dataclass
class Agreement:
    """The share of samples classified as the digit their prompt names."""

    share: float
    stderr: float
    n: int
    guidance: float
    source: str
    per_class: dict[str, float] = field(default_factory=dict)

    @property
    def note(self) -> str:
        return f"{self.n} samples of {self.source}, guidance {self.guidance:g}"


def agreement_prompts(pipe: Any, prompt_file: str | Path | None = None) -> tuple[list[str], list[int], str]:
    """(prompts, the class each names, where they come from) for ``pipe``'s run."""
    from difflab.conditioning.captions import class_named, held_out_prompts
    from difflab.conditioning.text import read_prompt_file

    cfg = pipe.config
    if cfg.cond != "text":
        raise ValueError(f"prompt-agreement scores text-conditional runs; this run's cond is {cfg.cond!r}")
    text = cfg.text
    if text is None or text.captions != "templates" or not cfg.class_names:
        raise ValueError("prompt-agreement needs a run whose captions were made from class labels; this "
                         "one was trained on a captions file")
    if prompt_file is not None:
        prompts = read_prompt_file(prompt_file)
        classes = [class_named(p, text.templates, cfg.class_names) for p in prompts]
        return prompts, classes, f"{len(prompts)} prompts from {prompt_file}"
    prompts, classes = held_out_prompts(text.templates, cfg.class_names)
    templates = len(prompts) // len(cfg.class_names)
    return prompts, classes, (f"{len(prompts)} held-out prompts ({templates} unseen '{text.templates}' "
                              f"templates x {len(cfg.class_names)} classes)")


@torch.no_grad()
def prompt_agreement(
    pipe: Any,
    probs: Callable[[Tensor], Tensor],
    *,
    n: int,
    prompt_file: str | Path | None = None,
    guidance: float | None = None,
    seed: int = 0,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
    **sample_kwargs: Any,
) -> Agreement:
    """Sample ``n`` images for the prompts (cycled) and score them with ``probs`` (images ->
    class probabilities [N, C]). ``guidance``: the run's ``sample_guidance`` unless given."""
    prompts, classes, source = agreement_prompts(pipe, prompt_file)
    scale = pipe.config.sample_guidance if guidance is None else float(guidance)
    hits = []
    for start in range(0, n, batch_size):
        idx = range(start, min(n, start + batch_size))
        images = pipe.sample(len(idx), prompts=[prompts[i % len(prompts)] for i in idx], guidance=scale,
                             seeds=[seed + i for i in idx], batch_size=batch_size, **sample_kwargs)
        want = torch.tensor([classes[i % len(prompts)] for i in idx])
        hits.append(probs(images).argmax(1).cpu() == want)
        if progress is not None:
            progress(len(idx))
    hit = torch.cat(hits).double()
    named = torch.tensor([classes[i % len(prompts)] for i in range(n)])
    names = pipe.config.class_names
    per_class = {names[c]: hit[named == c].mean().item() for c in sorted(set(classes)) if (named == c).any()}
    share = hit.mean().item()
    return Agreement(share, math.sqrt(share * (1 - share) / n), n, scale, source, per_class)
