"""What a job runs: the request checked against the model (a ValueError is a 422 before anything
is queued), the work as a closure over its own tensors, the parameters and the equivalent
``difflab sample`` command line of each image."""

from __future__ import annotations

import itertools
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from difflab.sampling import DEFAULT_STEPS
from difflab.serve import limits
from difflab.serve.jobs import Step
from difflab.serve.models import ServedModel
from difflab.serve.schemas import Conditioning, Sampling


@dataclass
class Task:
    """A job's work, its step count and its parameters (stored with every image)."""

    work: Callable[[Step], Tensor]
    total: int
    params: dict[str, Any]
    commands: list[str]  # one per image ("" where no single command reproduces it)


def counting(step: Step, total: int) -> Callable[..., None]:
    """A sampler callback ``(i, t, x, x0)`` that reports the calls so far to ``step``."""
    calls = itertools.count()

    def callback(i: int, t: Any, x: Tensor, x0: Tensor) -> None:
        step(next(calls), total, x0)

    return callback


def conditioning(m: ServedModel, req: Conditioning, n: int) -> dict[str, Any]:
    """The :meth:`Pipeline.sample` arguments of the class, prompt and guidance asked for."""
    from difflab.conditioning import parse_classes

    pipe, out = m.pipe, {}
    if req.label is not None:
        if m.kind != "class":
            raise ValueError(f"model {m.name} is {m.kind}, not class-conditional: leave out the class")
        labels = parse_classes(req.label, pipe.num_classes, pipe.class_names)
        if len(labels) != 1:
            raise ValueError("give one class (a number or a name) per request")
        out["class_labels"] = labels * n
    if req.prompt is not None or req.negative_prompt is not None:
        if m.kind != "text":
            raise ValueError(f"model {m.name} is {m.kind}, not text-conditional: leave out the prompt")
        out["prompts"] = req.prompt or ""
        if req.negative_prompt:
            out["negative_prompts"] = req.negative_prompt
    if req.guidance is not None:
        if not out:
            raise ValueError("guidance needs a condition to guide towards: give a class or a prompt")
        out["guidance"] = req.guidance
    return out


def resolved(m: ServedModel, sampler: str | None, steps: int | None) -> tuple[str, int]:
    """The sampler and step count :meth:`Pipeline.sample` would use (the run's defaults)."""
    cfg = m.pipe.config
    if cfg.objective == "corrupt":
        if sampler not in (None, "mix"):
            raise ValueError(f"model {m.name} was trained with --objective corrupt: use the sampler mix")
        return "mix", steps or cfg.sample_steps
    if sampler == "mix":
        raise ValueError("the sampler mix is for runs trained with --objective corrupt; pick another")
    sampler = sampler or cfg.sample_sampler
    if steps is None:
        steps = cfg.sample_steps if sampler == cfg.sample_sampler else (
            m.pipe.schedule.T if sampler == "ddpm" else DEFAULT_STEPS)
    if steps > m.pipe.schedule.T:
        raise ValueError(f"steps must be at most the model's T = {m.pipe.schedule.T}, got {steps}")
    return sampler, steps


def sample_command(m: ServedModel, sampler: str, steps: int, seed: int, req: Conditioning) -> str:
    """The ``difflab sample`` command line that draws the image of ``seed``."""
    args = ["difflab", "sample", str(m.run), "--n", "1", "--seed", str(seed), "--steps", str(steps)]
    if sampler != "mix" or m.pipe.config.objective != "corrupt":
        args += ["--sampler", sampler]
    if req.label is not None:
        args += ["--class", req.label]
    if req.prompt is not None or req.negative_prompt is not None:
        args += ["--prompt", req.prompt or ""]
    if req.negative_prompt:
        args += ["--negative-prompt", req.negative_prompt]
    if req.guidance is not None:
        args += ["--guidance", f"{req.guidance:g}"]
    return shlex.join([*args, "--out", f"seed{seed}.png"])


def generate(m: ServedModel, req: Sampling, n: int) -> Task:
    if m.kind == "lowres":
        raise ValueError(f"model {m.name} upscales images: use POST /api/edit/upscale with a small image")
    sampler, steps = resolved(m, req.sampler, req.steps)
    kwargs = conditioning(m, req, n)

    def work(step: Step) -> Tensor:
        return m.pipe.sample(n, sampler=None if sampler == "mix" else sampler, steps=steps, seed=req.seed,
                             callback=counting(step, steps), **kwargs)

    params = {"model": m.name, "sampler": sampler, "steps": steps, "seed": req.seed, "n": n,
              **req.model_dump(include={"label", "prompt", "negative_prompt", "guidance"}, exclude_none=True)}
    return Task(work, steps, params, [sample_command(m, sampler, steps, req.seed + k, req) for k in range(n)])


def check_edit(m: ServedModel, edit: str) -> None:
    """Refuse, before anything is queued, an edit the model does not list (``ServedModel.edits``)."""
    if edit not in m.edits:
        can = f"its edits are {', '.join(m.edits)}" if m.edits else "it has no edits"
        raise ValueError(f"model {m.name} ({'latent ' if m.pipe.latent is not None else ''}{m.kind}) "
                         f"cannot {edit}: {can}")


def img2img(m: ServedModel, req: Sampling, image: Tensor, strength: float, n: int) -> Task:
    from difflab.edit import img2img_run, plan_img2img

    check_edit(m, "img2img")
    sampler, steps = resolved(m, req.sampler, req.steps)
    if sampler == "mix":
        raise ValueError(f"model {m.name} was trained with --objective corrupt and cannot edit images")
    plan = plan_img2img(m.pipe.schedule, strength, steps, sampler)
    kwargs = conditioning(m, req, n)

    def work(step: Step) -> Tensor:
        out, _ = img2img_run(m.pipe, image, strength, n=n, seed=req.seed, sampler=sampler, steps=steps,
                             callback=counting(step, max(1, plan.steps_run)), **kwargs)
        return out

    params = {"model": m.name, "edit": "img2img", "sampler": sampler, "steps": steps, "seed": req.seed,
              "n": n, "strength": strength, "steps_run": plan.steps_run, "plan": plan.describe(),
              **req.model_dump(include={"label", "prompt", "negative_prompt", "guidance"}, exclude_none=True)}
    return Task(work, max(1, plan.steps_run), params, [""] * n)


def inpaint(m: ServedModel, req: Sampling, image: Tensor, mask: Tensor, n: int, method: str,
            jump_length: int, jump_n_sample: int) -> Task:
    from difflab.edit import inpaint_run, repaint_levels

    check_edit(m, "inpaint")
    steps = req.steps or min(50, m.pipe.schedule.T)
    if steps > m.pipe.schedule.T:
        raise ValueError(f"steps must be at most the model's T = {m.pipe.schedule.T}, got {steps}")
    if m.pipe.config.objective == "corrupt":
        raise ValueError(f"model {m.name} was trained with --objective corrupt and cannot edit images")
    if not bool(mask.any()):
        raise ValueError("the mask is all black: paint the region to regenerate in white")
    sampler = req.sampler or "ddpm"
    if sampler not in ("ddpm", "ddim"):
        raise ValueError("inpainting steps with the sampler ddpm or ddim")
    jumps = 1 if method == "replace" else jump_n_sample
    path = repaint_levels(steps, jump_length, jumps)
    total = sum(b < a for a, b in itertools.pairwise(path))
    kwargs = conditioning(m, req, n)
    if "class_labels" not in kwargs and "prompts" not in kwargs:
        kwargs.pop("guidance", None)

    def work(step: Step) -> Tensor:
        return inpaint_run(m.pipe, image, mask, n=n, seed=req.seed, method=method, steps=steps,
                           sampler=sampler, jump_length=jump_length, jump_n_sample=jumps,
                           callback=counting(step, total), **kwargs)

    params = {"model": m.name, "edit": "inpaint", "method": method, "sampler": sampler, "steps": steps,
              "seed": req.seed, "n": n, "jump_length": jump_length, "jump_n_sample": jumps,
              **req.model_dump(include={"label", "prompt", "negative_prompt", "guidance"}, exclude_none=True)}
    return Task(work, total, params, [""] * n)


def interpolate(m: ServedModel, req: Sampling, seed_b: int, frames: int) -> Task:
    import torch

    from difflab.edit import interpolate_run
    from difflab.noise import generators_from_seeds

    if m.kind == "lowres" or m.pipe.config.objective == "corrupt":
        raise ValueError(f"model {m.name} cannot interpolate between seeds (it needs a diffusion sampler "
                         "without an input image)")
    sampler, steps = resolved(m, req.sampler, req.steps)
    kwargs = conditioning(m, req, 1)
    if "class_labels" in kwargs:
        kwargs["class_labels"] = kwargs["class_labels"] * frames
    if "prompts" in kwargs and isinstance(kwargs["prompts"], str):
        kwargs["prompts"] = [kwargs["prompts"]] * frames

    def work(step: Step) -> Tensor:
        z0, z1 = (torch.randn(m.pipe.sample_shape, generator=g) for g in
                  generators_from_seeds([req.seed, seed_b]))
        return interpolate_run(m.pipe, z0, z1, frames, seeds=(req.seed, seed_b), sampler=sampler,
                               steps=steps, callback=counting(step, steps), **kwargs)

    params = {"model": m.name, "edit": "interpolate", "sampler": sampler, "steps": steps, "seed": req.seed,
              "seed_b": seed_b, "frames": frames,
              **req.model_dump(include={"label", "prompt", "negative_prompt", "guidance"}, exclude_none=True)}
    ends = {0: sample_command(m, sampler, steps, req.seed, req),
            frames - 1: sample_command(m, sampler, steps, seed_b, req)}
    return Task(work, steps, params, [ends.get(k, "") for k in range(frames)])


def check_upscaler(m: ServedModel) -> None:
    if m.kind != "lowres":
        raise ValueError(f"model {m.name} does not upscale images (it was not trained with --cond lowres)")


def upscale(m: ServedModel, req: Sampling, small: Tensor, n: int) -> Task:
    from difflab.edit import upscale_run

    check_upscaler(m)
    sampler, steps = resolved(m, req.sampler, req.steps)

    def work(step: Step) -> Tensor:
        return upscale_run(m.pipe, small, n=n, seed=req.seed, sampler=sampler, steps=steps,
                           callback=counting(step, steps))

    params = {"model": m.name, "edit": "upscale", "sampler": sampler, "steps": steps, "seed": req.seed,
              "n": n}
    return Task(work, steps, params, [""] * n)


def trajectory(m: ServedModel, req: Sampling) -> Task:
    """One sample's denoising trajectory: x_t after every step, then the predicted x_0 of every
    step (the result holds 2 x steps frames, x_t first; the last x_t is the sample)."""
    import torch

    if m.kind == "lowres":
        raise ValueError(f"model {m.name} upscales images: its trajectory needs a small image (use the edit)")
    sampler, steps = resolved(m, req.sampler, req.steps)
    if steps > limits.MAX_TRAJECTORY:
        raise ValueError(f"a trajectory shows at most {limits.MAX_TRAJECTORY} steps, got {steps}")
    kwargs = conditioning(m, req, 1)

    def work(step: Step) -> Tensor:
        xs: list[Tensor] = []
        x0s: list[Tensor] = []
        report = counting(step, steps)

        def record(i: int, t: Any, x: Tensor, x0: Tensor) -> None:
            xs.append(x.float().cpu().clamp(-1, 1))
            x0s.append(x0.float().cpu().clamp(-1, 1))
            report(i, t, x, x0)

        final = m.pipe.sample(1, sampler=None if sampler == "mix" else sampler, steps=steps, seed=req.seed,
                              callback=record, **kwargs)
        xs[-1] = final  # the sample itself (a latent run's decoded, clamped output)
        return torch.cat([*xs, *x0s])

    params = {"model": m.name, "edit": "trajectory", "sampler": sampler, "steps": steps, "seed": req.seed,
              **req.model_dump(include={"label", "prompt", "negative_prompt", "guidance"}, exclude_none=True)}
    commands = [""] * (2 * steps)
    commands[steps - 1] = sample_command(m, sampler, steps, req.seed, req)  # the last x_t: the sample
    return Task(work, steps, params, commands)
