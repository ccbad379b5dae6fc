"""The JSON bodies of the API, every field bounded (a request outside a bound gets a 422 naming
the field and the bound)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from difflab.samplers import SAMPLERS
from difflab.serve import limits

SAMPLER_CHOICES = (*SAMPLERS, "mix")


class Conditioning(BaseModel):
    """What a sample is conditioned on, where the run has it."""

    model_config = ConfigDict(extra="forbid")

    label: str | None = Field(None, max_length=100,
                              description="class-conditional runs: a class number or name")
    prompt: str | None = Field(None, max_length=limits.MAX_PROMPT, description="text-conditional runs")
    negative_prompt: str | None = Field(None, max_length=limits.MAX_PROMPT,
                                        description="text-conditional runs: guide away from this prompt")
    guidance: float | None = Field(None, ge=0, le=limits.MAX_GUIDANCE,
                                   description="classifier-free guidance scale (default: the run's)")


class Sampling(Conditioning):
    model: str = Field(max_length=200, description="a served model's name or index (GET /api/models)")
    sampler: str | None = Field(None, description="default: the run's")
    steps: int | None = Field(None, ge=1, le=limits.MAX_STEPS, description="default: the run's")
    seed: int = Field(0, ge=0, le=limits.MAX_SEED, description="image i uses seed + i")

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, v: str | None) -> str | None:
        if v is not None and v not in SAMPLER_CHOICES:
            raise ValueError(f"unknown sampler {v[:40]!r}; choose one of {', '.join(SAMPLER_CHOICES)}")
        return v


class GenerateRequest(Sampling):
    """POST /api/generate."""

    n: int = Field(1, ge=1, le=limits.MAX_IMAGES, description="number of images")


class InterpolateRequest(Sampling):
    """POST /api/edit/interpolate: images along the slerp between two seeds' starting noises."""

    seed_b: int = Field(1, ge=0, le=limits.MAX_SEED, description="the second seed (``seed`` is the first)")
    frames: int = Field(8, ge=2, le=limits.MAX_FRAMES)


class JobCreated(BaseModel):
    id: str
    state: str
    events: str
    status: str
