"""The runs a server serves: loaded once at start, looked up by name or index, never by a path
from a request."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from difflab.io import CheckpointError
from difflab.pipeline import Pipeline, load
from difflab.samplers import SAMPLERS
from difflab.serve import limits


@dataclass(eq=False)
class ServedModel:
    """One run: its name on the page, the folder given on the command line, the loaded pipeline."""

    name: str
    run: Path
    pipe: Pipeline
    cache: dict[str, Any] = field(default_factory=dict)  # what the explorer computed once (data images)

    @property
    def kind(self) -> str:
        """unconditional, class, text or lowres (what a generation is conditioned on)."""
        cond = self.pipe.config.cond
        if cond == "lowres":
            return "lowres"
        if cond == "text":
            return "text"
        if self.pipe.num_classes:
            return "class"
        return "unconditional"

    @property
    def samplers(self) -> list[str]:
        return ["mix"] if self.pipe.config.objective == "corrupt" else list(SAMPLERS)

    def info(self, index: int) -> dict[str, Any]:
        cfg = self.pipe.config
        c, h, w = self.pipe.image_shape
        kinds = [self.kind, *(["latent"] if self.pipe.latent is not None else [])]
        return {
            "index": index, "name": self.name, "kind": self.kind, "kinds": kinds,
            "latent": self.pipe.latent is not None, "image_shape": [c, h, w],
            "class_names": list(self.pipe.class_names) if self.kind == "class" else [],
            "samplers": self.samplers,
            "default_sampler": "mix" if cfg.objective == "corrupt" else cfg.sample_sampler,
            "default_steps": int(cfg.sample_steps), "default_guidance": float(cfg.sample_guidance),
            "T": int(self.pipe.schedule.T), "prediction": cfg.prediction,
            "lowres_factor": int(cfg.lowres_factor) if self.kind == "lowres" else None,
            "edits": self.edits, "config": cfg.to_dict(),
        }

    @property
    def edits(self) -> list[str]:
        """The editing functions this run supports."""
        if self.pipe.config.objective == "corrupt":
            return []
        if self.kind == "lowres":
            return ["upscale"]
        out = ["img2img", "interpolate"]
        return out if self.pipe.latent is not None else ["inpaint", *out]


def load_models(runs: list[str | Path], device: str = "auto") -> list[ServedModel]:
    """Load every run (an error of the same kind naming the run that does not load); names are the
    folders' names, numbered where two are the same."""
    models: list[ServedModel] = []
    seen: dict[str, int] = {}
    for run in runs:
        try:
            pipe = load(run, device)
        except CheckpointError as err:  # a missing or broken run: the files' fault (exit status 1)
            raise CheckpointError(f"cannot serve {run}: {err}") from None
        except (ValueError, OSError) as err:
            raise type(err)(f"cannot serve {run}: {err}") from None
        _, h, w = pipe.image_shape
        if max(h, w) > limits.MAX_IMAGE_SIDE:
            raise ValueError(f"cannot serve {run}: its images are {w}x{h}, above the page's "
                             f"{limits.MAX_IMAGE_SIDE} pixels a side")
        base = Path(str(run)).name or "run"
        seen[base] = seen.get(base, 0) + 1
        name = base if seen[base] == 1 else f"{base}-{seen[base]}"
        models.append(ServedModel(name, Path(str(run)), pipe))
    return models


def find(models: list[ServedModel], key: str) -> ServedModel:
    """The model named ``key``, or at index ``key``; a ValueError listing the names otherwise."""
    for m in models:
        if m.name == key:
            return m
    if key.isdigit() and int(key) < len(models):
        return models[int(key)]
    names = ", ".join(m.name for m in models)
    raise LookupError(f"no model {key[:60]!r} is served; the models are: {names} "
                      f"(or their index 0..{len(models) - 1})")
