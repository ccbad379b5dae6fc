"""A trained model ready to sample: ``pipe = difflab.load(run); pipe.sample(n=16, seed=0)``."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from difflab.conditioning import ClassCondition
from difflab.conditioning.lowres import LowResCondition
from difflab.conditioning.text import TextCondition, TextConfig, as_prompts
from difflab.config import check_choice
from difflab.device import resolve_device
from difflab.guidance import CFGModel, Guidance
from difflab.io import CheckpointError, load_weights
from difflab.latent.space import RUN_COPY, LatentSpace
from difflab.noise import generators_from_seeds
from difflab.run_config import TrainConfig
from difflab.samplers.base import StepCallback
from difflab.sampling import DEFAULT_STEPS, sample

WEIGHTS = {"last": "model.safetensors", "best": "best.safetensors"}


def _weights_file(run: Path, config: TrainConfig, weights: str | None) -> str:
    """The weights file of ``run`` to sample: ``best`` for keep_best runs unless told otherwise."""
    if weights is None:
        weights = "best" if config.keep_best and (run / WEIGHTS["best"]).is_file() else "last"
    check_choice("weights", weights, tuple(WEIGHTS))
    if weights == "best" and not (run / WEIGHTS["best"]).is_file():
        raise CheckpointError(f"{run} has no {WEIGHTS['best']}: it was not trained with --keep-best "
                              "(or no epoch has ended yet); use the last weights")
    return WEIGHTS[weights]


class Pipeline:
    """A network, its training config and its schedule; samples images in [-1, 1]."""

    weights_path: Path | None = None  # the weights file it was loaded from (LoRA adapters check its sha256)
    adapters: tuple[tuple[Any, float], ...] = ()  # LoRA adapters merged in, with their scales
    controlnet: Any = None  # a ControlNet on this network (difflab.nets.controlnet), or None
    control_config: Any = None  # its control kind and settings (a ControlConfig), when known

    def __init__(self, net: nn.Module, config: TrainConfig, device: str | torch.device = "cpu",
                 latent: LatentSpace | None = None) -> None:
        """``latent``: a latent run's autoencoder (default: loaded from ``config.latent``)."""
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.config = config
        self.schedule = config.make_schedule()
        if config.latent and latent is None:
            latent = load_run_latent_space(config, None)
        self.latent = None if latent is None else latent.to(self.device)

    @classmethod
    def load(cls, run: str | Path, device: str = "auto", weights: str | None = None, lora: Any = None,
             lora_scale: Any = None, *, autoencoder: str | Path | None = None,
             controlnet: Any = None) -> Pipeline:
        """Load ``run/config.json`` and its EMA weights: ``weights="best"`` (``best.safetensors``,
        the epoch with the lowest mean loss; the default for runs trained with ``keep_best``) or
        ``"last"`` (``model.safetensors``, the default otherwise). ``"diffusers:DIR"`` (or a folder
        holding ``model_index.json``) loads a local diffusers pipeline instead
        (:mod:`difflab.interop.load`). ``lora``: LoRA adapter folders merged in (see
        :meth:`with_lora`). ``autoencoder``: a latent run's autoencoder, when it is no longer where
        training found it (checked against the digest the run recorded). ``controlnet``: a
        ControlNet folder trained on this run (see :meth:`with_controlnet`)."""
        from difflab.interop import diffusers_folder
        from difflab.nets import build_net

        folder = diffusers_folder(run)
        if folder is not None:
            from difflab.interop.load import load_diffusers

            if weights is not None:
                raise ValueError("weights= chooses among a difflab run's files; a diffusers pipeline has one")
            imported = load_diffusers(folder)
            pipe = cls(imported.net, imported.config, resolve_device(device))
            pipe.schedule = imported.schedule  # exact betas (trained_betas, other beta ranges)
            if imported.text is not None:  # a text pipeline's own encoder, not difflab's
                pipe.text_condition = imported.text
            return pipe
        run = Path(run)
        cfg_path = run / "config.json"
        if (run / "adapter.json").is_file() and not (run / WEIGHTS["last"]).is_file():
            raise CheckpointError(f"{run} is a LoRA adapter, not a run: load its base run with "
                                  f"lora={str(run)!r} (difflab sample BASE --lora {run})")
        if (run / "controlnet.json").is_file() and not (run / WEIGHTS["last"]).is_file():
            raise CheckpointError(f"{run} is a ControlNet, not a run: load its base run with "
                                  f"controlnet={str(run)!r} (difflab sample BASE --controlnet {run})")
        if not cfg_path.is_file():
            raise CheckpointError(f"{run} has no config.json; point at a folder written by `difflab train`")
        try:
            config = TrainConfig.from_dict(json.loads(cfg_path.read_text()))
        except (ValueError, TypeError) as err:
            raise CheckpointError(f"{cfg_path} is not a valid difflab config: {err}") from err
        net = build_net(config.net)
        path = run / _weights_file(run, config, weights)
        state = load_weights(path)
        try:
            net.load_state_dict(state)
        except RuntimeError as err:
            raise CheckpointError(
                f"{path} does not fit the network in config.json; were the files copied from different runs?"
            ) from err
        if autoencoder is not None and not config.latent:
            raise ValueError(f"{run} is not a latent run; it takes no autoencoder")
        latent = load_run_latent_space(config, run, autoencoder) if config.latent else None
        pipe = cls(net, config, resolve_device(device), latent)
        pipe.weights_path = path
        pipe = pipe if lora is None else pipe.with_lora(lora, lora_scale)
        return pipe if controlnet is None else pipe.with_controlnet(controlnet)

    @functools.cached_property
    def weights_sha256(self) -> str | None:
        """The sha256 of the weights file this pipeline was loaded from (None if built in memory)."""
        from difflab.nets.lora import sha256_file

        return None if self.weights_path is None else sha256_file(self.weights_path)

    @property
    def weights_file(self) -> str | None:
        return None if self.weights_path is None else self.weights_path.name

    def with_lora(self, lora: Any, scales: Any = None) -> Pipeline:
        """A new pipeline whose network has LoRA adapters merged in (:mod:`difflab.nets.lora`):
        ``lora`` an adapter folder or a list of them (or of (folder, scale) pairs), ``scales`` one
        strength for all or one per adapter (default 1; 0 is this pipeline's network, exactly).
        Every adapter must have been trained on this pipeline's weights file (its sha256); this
        pipeline is left as it was."""
        from difflab.nets.lora import as_adapters, merge_adapters

        adapters = as_adapters(lora, scales)
        run = None if self.weights_path is None else self.weights_path.parent
        net = merge_adapters(self.net, adapters, self.weights_sha256, run)
        pipe = type(self)(net, self.config, self.device, self.latent)
        pipe.weights_path, pipe.adapters = self.weights_path, (*self.adapters, *adapters)
        if self.weights_path is not None:
            pipe.__dict__["weights_sha256"] = self.weights_sha256  # the base's: more adapters check it
        return pipe

    def with_controlnet(self, controlnet: Any) -> Pipeline:
        """A new pipeline with a ControlNet (a folder written by ``difflab train-controlnet``, or
        its :class:`~difflab.nets.controlnet.ControlNetFiles`) on this pipeline's network; it must
        have been trained on this pipeline's weights file (its sha256; merged LoRA adapters change
        the network, so a ControlNet goes on the base run alone). Sample with ``control=``."""
        from difflab.conditioning.control import ControlConfig
        from difflab.nets.controlnet import ControlNetFiles, load_controlnet

        files = controlnet if isinstance(controlnet, ControlNetFiles) else load_controlnet(controlnet)
        if self.adapters:
            raise ValueError("a ControlNet goes on the run it was trained on; merged LoRA adapters change "
                             "that network (drop lora= or --lora)")
        files.check_base(self.weights_sha256, None if self.weights_path is None else self.weights_path.parent)
        return self.attach_controlnet(files.build(self.net), ControlConfig.from_dict(files.control))

    def attach_controlnet(self, net: nn.Module, control: Any = None) -> Pipeline:
        """A new pipeline with the ControlNet ``net`` (a module built on this network) and its
        control settings; :meth:`with_controlnet` loads and checks a trained one."""
        from difflab.nets.controlnet import check_base_net

        check_base_net(self.net)
        pipe = type(self)(self.net, self.config, self.device, self.latent)
        pipe.weights_path, pipe.adapters = self.weights_path, self.adapters
        if self.weights_path is not None:
            pipe.__dict__["weights_sha256"] = self.weights_sha256
        pipe.controlnet, pipe.control_config = net.to(self.device).eval(), control
        return pipe

    def check_control(self, control: Any, n: int) -> Tensor:
        """``control`` as float [n, C, H, W] control images in [0, 1] of this run's size (one per
        image; a single one is repeated), or a one-line error."""
        if self.controlnet is None:
            raise ValueError("control images need a ControlNet: load one with controlnet= "
                             "(difflab sample RUN --controlnet DIR)")
        c = int(self.controlnet.hint_config.control_channels)
        x = torch.as_tensor(control).float()
        if x.ndim == 3:
            x = x[None]
        if x.ndim == 4 and x.shape[0] == 1 and n > 1:
            x = x.expand(n, *x.shape[1:])
        _, h, w = self.image_shape
        if tuple(x.shape) != (n, c, h, w):
            raise ValueError(f"the control images have shape {tuple(x.shape)}; this ControlNet needs "
                             f"{(n, c, h, w)} (one {w}x{h} control image per sample, or one for all)")
        if not bool(torch.isfinite(x).all()) or x.min() < 0 or x.max() > 1:
            raise ValueError("control images must lie in [0, 1] (white = on)")
        return x

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of what the sampler denoises: the image, or a latent run's latent."""
        if self.latent is not None:
            return (int(self.net.in_channels), int(self.net.image_size), int(self.net.image_size))
        return self.image_shape

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images this run draws."""
        data = self.config.data
        if self.latent is not None:
            size = int(data.image_size)  # type: ignore[arg-type]
            return (int(data.channels or 1), size, size)
        net = self.net
        size = data.image_size or getattr(net, "image_size", None) or 28
        return (int(getattr(net, "in_channels", 1)), int(size), int(size))

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Images as what the sampler denoises: a latent run's scaled latents (the posterior
        mean), pixels as they are."""
        if self.latent is None:
            return images
        return self.latent.to_latent(images.to(self.device), sample=False)

    @torch.no_grad()
    def decode(self, x: Tensor) -> Tensor:
        """What the sampler made, as images: a latent run's latents decoded, pixels as they are."""
        return x if self.latent is None else self.latent.from_latent(x)

    @torch.no_grad()
    def sample(
        self,
        n: int = 16,
        *,
        sampler: str | None = None,
        steps: int | None = None,
        eta: float | None = None,
        seed: int = 0,
        batch_size: int = 256,
        clip_x0: bool | None = None,
        variance: str | None = None,
        spacing: str | None = None,
        sigmas: str | None = None,
        discrete: bool | None = None,
        class_labels: Sequence[int] | Tensor | None = None,
        prompts: str | Sequence[str] | None = None,
        negative_prompts: str | Sequence[str] | None = None,
        guidance: float | Guidance | None = None,
        seeds: Sequence[int] | None = None,
        callback: StepCallback | None = None,
        classifier: Any = None,
        classifier_scale: float = 1.0,
        noise: Tensor | None = None,
        first_step: int = 0,
        lowres: Tensor | None = None,
        control: Tensor | None = None,
        control_scale: float = 1.0,
        **options: Any,
    ) -> Tensor:
        """``n`` images in [-1, 1] on the CPU. Image i comes from seed ``seed + i`` (or
        ``seeds[i]``) whatever ``batch_size`` is, so the same seed gives the same bytes.

        ``class_labels`` (one per image) condition a class-conditional model, guided by
        ``guidance``: a scale w, or a :class:`~difflab.guidance.Guidance` with rescale and
        interval (default: the run's ``sample_guidance``; 0 = unconditional, 1 = conditional
        without guidance). Without labels a class-conditional model samples unconditionally.

        ``prompts`` (a string for every image, or one per image) condition a text-conditional run
        (``--cond text``), guided the same way away from the encoded empty prompt, or from
        ``negative_prompts``; the empty prompt (and no prompts) samples unconditionally.

        ``classifier`` (a :class:`~difflab.classifier_run.Classifier` or its run folder, trained on
        this run's schedule and image size) guides towards ``class_labels`` with scale
        ``classifier_scale`` (Dhariwal & Nichol 2021; :mod:`difflab.classifier_guidance`):
        Algorithm 1's mean shift for ddpm, Algorithm 2's eps correction for the other samplers.
        It works on unconditional runs, and on class-conditional ones on top of ``guidance``.

        ``sampler``, ``sigmas`` and ``options`` (s_churn, rho, simple_var, order, ...) are those of
        :func:`difflab.sample`. The run's config gives the defaults (a preset run samples as its
        note does): ``sampler``, ``steps`` (its ``sample_steps``, or T for ddpm when another
        sampler is the run's), ``variance``, ``clip_x0`` and ``spacing`` (the timestep grid; an
        imported diffusers pipeline's ``timestep_spacing``). ``discrete`` defaults to True for
        MyUNet, whose time embedding is a table of integer timesteps.

        ``noise`` ([n, C, H, W]) is the starting noise x_T itself instead of the seeds' draws (e.g.
        the output of DDIM inversion, :func:`difflab.edit.invert`; the seeds still drive the noise
        of stochastic samplers). ``first_step`` starts at that step of the grid, with ``noise`` the
        x_t of its level (image-to-image, :func:`difflab.edit.img2img`).

        ``lowres`` ([n, C, H/f, W/f] in [-1, 1]) are the images a super-resolution run
        (``--cond lowres``) upscales by its factor f, one per sample (:func:`difflab.edit.upscale`);
        ``guidance`` above 1 pushes away from the null (all-zero) condition if the run was trained
        with ``cond_drop``.

        ``control`` ([n, 1, H, W] in [0, 1], or one [1, H, W] for all) are the control images of a
        pipeline with a ControlNet (:meth:`with_controlnet`), applied at ``control_scale`` (0 is
        the base model, exactly); they combine with every sampler, condition and guidance."""
        if n < 1:
            raise ValueError(f"n must be a positive number of images, got {n}")
        if self.config.objective == "corrupt":
            return self._sample_mixing(n, sampler, steps, seed, batch_size, callback)
        cfg = self.config
        sampler = sampler or cfg.sample_sampler
        if sampler == "mix":
            raise ValueError(
                "--sampler mix is for runs trained with --objective corrupt; pick a diffusion sampler"
            )
        if steps is None:
            own = sampler == cfg.sample_sampler
            steps = cfg.sample_steps if own else (self.schedule.T if sampler == "ddpm" else DEFAULT_STEPS)
        clip_x0 = cfg.sample_clip if clip_x0 is None else clip_x0
        variance = variance or cfg.sample_variance
        spacing = spacing or cfg.sample_spacing
        if discrete is None:
            from difflab.nets import MyUNet

            discrete = isinstance(self.net, MyUNet)
        if classifier is not None:
            classifier = self._classifier(classifier)
        texts = self._texts(n, prompts, negative_prompts, class_labels, classifier)
        labels = self._labels(n, class_labels, classifier)
        small = self._lowres(n, lowres)
        guide = self._guidance(guidance)
        if control is not None or self.controlnet is not None:
            if control is None:
                raise ValueError("this pipeline has a ControlNet: give control images (control=..., "
                                 "--control-image or --control-from)")
            control = self.check_control(control, n)
        if seeds is not None and len(seeds) != n:
            raise ValueError(f"give one seed per image: {n} images, {len(seeds)} seeds")
        all_seeds = list(seeds) if seeds is not None else [seed + i for i in range(n)]
        if noise is not None:
            noise = self.check_images(noise, n, "noise", self.sample_shape)
        if callback is not None and self.latent is not None:
            callback = self._decoding(callback)
        out = []
        for start in range(0, n, batch_size):
            idx = range(start, min(n, start + batch_size))
            gens = generators_from_seeds([all_seeds[i] for i in idx])
            x_T = torch.stack([torch.randn(self.sample_shape, generator=g) for g in gens]).to(self.device)
            if noise is not None:  # the seeds' own x_T is drawn all the same: their later noise stays
                x_T = noise[idx.start : idx.stop].to(self.device)
            batch_labels = None if labels is None else labels[idx.start : idx.stop]
            model, cond = self._conditioned(batch_labels if self.num_classes else None, guide,
                                            None if texts is None else texts[idx.start : idx.stop],
                                            None if small is None else small[idx.start : idx.stop],
                                            None if control is None else self._controlled(
                                                control[idx.start : idx.stop], control_scale))
            if classifier is not None:
                model = classifier.guide(model, batch_labels, classifier_scale, schedule=self.schedule,
                                         prediction=self.config.prediction, sampler=sampler, steps=steps,
                                         spacing=spacing, variance=variance)
            x = sample(
                model,
                x_T,
                schedule=self.schedule,
                sampler=sampler,
                steps=steps,
                prediction=self.config.prediction,
                spacing=spacing,
                sigmas=sigmas,
                discrete=discrete,
                eta=eta,
                variance=variance,
                clip_x0=clip_x0,
                generator=gens,
                cond=cond,
                callback=callback,
                first_step=first_step,
                **options,
            )
            out.append(self.decode(x).float().clamp(-1, 1).cpu())
        return torch.cat(out)

    def _decoding(self, callback: StepCallback) -> StepCallback:
        """A latent run's step callback sees decoded images: x_t and the predicted x_0."""

        def decoded(i: int, t: Any, x: Tensor, x0: Tensor) -> None:
            callback(i, t, self.decode(x), self.decode(x0))

        return decoded

    def check_images(self, x: Tensor, n: int | None = None, what: str = "images",
                     shape: tuple[int, int, int] | None = None) -> Tensor:
        """``x`` as a float tensor [n, C, H, W] of ``shape`` (this run's image shape), or a one-line
        error."""
        x = torch.as_tensor(x)
        want = (n if n is not None else (x.shape[0] if x.ndim == 4 else 1), *(shape or self.image_shape))
        if x.ndim == 3:
            x = x[None]
        if tuple(x.shape) != want:
            raise ValueError(f"{what} has shape {tuple(x.shape)}; this run needs {want} "
                             f"(images x channels x height x width)")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{what} holds NaN or infinite values")
        return x.float()

    def conditioned(self, n: int, *, class_labels: Sequence[int] | Tensor | None = None,
                    prompts: str | Sequence[str] | None = None,
                    negative_prompts: str | Sequence[str] | None = None,
                    guidance: float | Guidance | None = None,
                    lowres: Tensor | None = None) -> tuple[Any, dict[str, Any] | None]:
        """The model and conditioning :meth:`sample` would use for ``n`` images, for the loops
        that call the samplers or the denoiser themselves (:mod:`difflab.edit`): the network, or
        the network under classifier-free guidance towards ``class_labels``, ``prompts`` or the
        ``lowres`` images of a super-resolution run."""
        texts = self._texts(n, prompts, negative_prompts, class_labels, None)
        labels = self._labels(n, class_labels)
        return self._conditioned(labels if self.num_classes else None, self._guidance(guidance), texts,
                                 self._lowres(n, lowres))

    @property
    def num_classes(self) -> int:
        return int(getattr(self.net, "num_classes", 0))

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.config.class_names) or tuple(str(i) for i in range(self.num_classes))

    def _labels(self, n: int, class_labels: Sequence[int] | Tensor | None, classifier: Any = None
                ) -> Tensor | None:
        if class_labels is None:
            if classifier is not None:
                raise ValueError("classifier guidance needs class_labels: the class to guide each image to")
            return None
        if not self.num_classes and classifier is None:
            raise ValueError("this run was not trained with class labels (train it with --cond class); "
                             "sample it without --class")
        labels = torch.as_tensor(class_labels, dtype=torch.long)
        if labels.shape != (n,):
            raise ValueError(f"give one class label per image: {n} images, {tuple(labels.shape)} labels")
        if classifier is not None:
            classifier.check_labels(labels)
        if self.num_classes:
            ClassCondition(self.num_classes).cond(labels)  # range check
        return labels

    def _classifier(self, classifier: Any) -> Any:
        """A classifier (or its run folder) checked against this run, on this run's device."""
        from difflab.classifier_run import Classifier

        if self.latent is not None:
            raise ValueError("classifier guidance needs a classifier of the noisy latents, and difflab's "
                             "classifiers are trained on pixels; guide a latent run with --guidance")
        if not isinstance(classifier, Classifier):
            classifier = Classifier.load(classifier, str(self.device))
        classifier.check_pairing(self.config, self.image_shape)
        if self.num_classes and classifier.num_classes != self.num_classes:
            raise ValueError(f"classifier {classifier.run} has {classifier.num_classes} classes, this run "
                             f"{self.num_classes}; guide with a classifier of the run's classes")
        return classifier.to(self.device)

    def _guidance(self, guidance: float | Guidance | None) -> Guidance:
        if isinstance(guidance, Guidance):
            return guidance
        return Guidance(self.config.sample_guidance if guidance is None else float(guidance))

    @property
    def is_lowres(self) -> bool:
        return self.config.cond == "lowres"

    @property
    def lowres_condition(self) -> LowResCondition:
        return LowResCondition(self.config.lowres_factor, self.image_shape)

    def _lowres(self, n: int, lowres: Tensor | None) -> Tensor | None:
        if not self.is_lowres:
            if lowres is not None:
                raise ValueError(f"this run does not upscale images (its cond is {self.config.cond!r}; train "
                                 "one with --cond lowres)")
            return None
        if lowres is None:
            f = self.config.lowres_factor
            raise ValueError(f"this run upscales images by {f} (--cond lowres): give the low-resolution "
                             f"images (difflab edit upscale RUN --image small.png)")
        return self.lowres_condition.check(lowres, n)

    @property
    def is_text(self) -> bool:
        return self.config.cond == "text"

    @functools.cached_property
    def text_condition(self) -> TextCondition:
        """The run's frozen text encoder (loaded on first use) as network inputs."""
        return TextCondition.from_config(self.config.text or TextConfig())

    def _texts(self, n: int, prompts: str | Sequence[str] | None, negatives: str | Sequence[str] | None,
               class_labels: Any, classifier: Any) -> list[tuple[str, str]] | None:
        """(prompt, negative prompt) per image of a text run ("" = the null condition)."""
        if not self.is_text:
            if prompts is not None or negatives is not None:
                raise ValueError(f"this run was not trained with text (its cond is {self.config.cond!r}; "
                                 "train with --cond text); sample it without prompts")
            return None
        if class_labels is not None and classifier is None:
            raise ValueError("this run is conditioned on text (--cond text): give prompts (--prompt), "
                             "not class labels")
        pos = as_prompts("" if prompts is None else prompts, n)
        neg = as_prompts("" if negatives is None else negatives, n, "negative prompts")
        return list(zip(pos, neg, strict=True))

    def _controlled(self, control: Tensor, scale: float) -> nn.Module:
        """The network with the ControlNet and one batch's control images bound to it."""
        from difflab.nets.controlnet import ControlledUNet

        return ControlledUNet(self.net, self.controlnet, control.to(self.device), scale)

    def _conditioned(self, labels: Tensor | None, guide: Guidance, texts: list[tuple[str, str]] | None = None,
                     small: Tensor | None = None, net: nn.Module | None = None
                     ) -> tuple[Any, dict[str, Any] | None]:
        """The model to sample (the network, or ``net`` (the network with a ControlNet), or either
        under classifier-free guidance) and the conditioning of one batch."""
        net = self.net if net is None else net
        if small is not None:
            lowres = self.lowres_condition
            cond = lowres.cond(small, self.device)
            if guide.scale == 1:
                return net, cond
            return CFGModel(net, guide, lowres.null(len(small), self.device), self.schedule), cond
        if texts is not None:
            text = self.text_condition
            prompts, negatives = zip(*texts, strict=True)
            cond = text.cond(prompts, self.device)
            if not any(prompts) and not any(negatives):  # unconditional: nothing to guide
                return net, cond
            return CFGModel(net, guide, text.negative(negatives, self.device), self.schedule), cond
        if labels is None:
            return net, None
        classes = ClassCondition(self.num_classes)
        cond = classes.cond(labels, self.device)
        uncond = classes.null(len(labels), self.device)
        return CFGModel(net, guide, uncond, self.schedule), cond

    def _sample_mixing(self, n: int, sampler: str | None, steps: int | None, seed: int, batch_size: int,
                       callback: StepCallback | None) -> Tensor:
        """Seed 003's first model: start from uniform noise on the notes' [0, 1] range and mix in
        the predicted x_0; the result is mapped to [-1, 1] like every other sample."""
        from difflab.nets import mixing_sample

        if sampler not in (None, "mix"):
            raise ValueError("this run was trained with --objective corrupt (seed 003's first model); "
                             "sample it with --sampler mix")
        steps = steps or self.config.sample_steps
        out = []
        for start in range(0, n, batch_size):
            gens = generators_from_seeds(range(seed + start, seed + min(n, start + batch_size)))
            x = torch.stack([torch.rand(self.image_shape, generator=g) for g in gens]).to(self.device)
            step_fn = None if callback is None else (
                lambda i, x_, p: callback(i, steps - 1 - i, x_ * 2 - 1, p * 2 - 1))
            x = mixing_sample(self.net, x, steps, step_fn, offset=self.config.sample_mix_offset)
            out.append((x.float() * 2 - 1).clamp(-1, 1).cpu())
        return torch.cat(out)

    def sample_pil(self, n: int = 16, **kwargs: Any) -> list[Any]:
        """Like :meth:`sample`, as a list of PIL images."""
        from PIL import Image

        from difflab.viz import to_uint8

        arrays = to_uint8(self.sample(n, **kwargs))
        return [Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a) for a in arrays]


def load_run_latent_space(config: TrainConfig, run: Path | None, autoencoder: str | Path | None = None
                          ) -> LatentSpace:
    """A latent run's autoencoder: ``autoencoder`` when given (a diffusers folder that moved since
    training), else ``run/autoencoder.safetensors`` (the copy training keeps with the run), else
    ``config.latent``; refused unless its weights are the ones the run was trained with (both
    digests named)."""
    from difflab.latent import load_latent_space

    assert config.latent is not None
    copy = None if run is None else run / RUN_COPY
    if autoencoder is not None:
        source: str | Path = autoencoder
    else:
        source = copy if copy is not None and copy.is_file() else config.latent
    try:
        space = load_latent_space(source)
    except (CheckpointError, OSError) as err:
        if autoencoder is not None:
            raise
        raise CheckpointError(f"{err}. If the run's autoencoder has moved, give its new place: "
                              "--autoencoder PATH (difflab.load(run, autoencoder=PATH))") from err
    if config.latent_digest and space.digest != config.latent_digest:
        raise CheckpointError(f"the autoencoder {source} is {space.digest}, but the run was trained with "
                              f"{config.latent_digest}; give it the autoencoder it was trained with")
    return space


def load(run: str | Path, device: str = "auto", weights: str | None = None, lora: Any = None,
         lora_scale: Any = None, autoencoder: str | Path | None = None, controlnet: Any = None) -> Pipeline:
    """Load a trained run folder as a :class:`Pipeline` (``weights``: ``"last"`` or ``"best"``),
    with LoRA adapter folders ``lora`` merged in at ``lora_scale`` (:meth:`Pipeline.with_lora`);
    ``autoencoder``: where a latent run's autoencoder is now, when it moved since training;
    ``controlnet``: a ControlNet folder trained on this run (:meth:`Pipeline.with_controlnet`)."""
    return Pipeline.load(run, device, weights, lora, lora_scale, autoencoder=autoencoder,
                         controlnet=controlnet)


def prompt_rows(prompts: Sequence[str], per_prompt: int, seed: int = 0) -> dict[str, Any]:
    """Arguments of :meth:`Pipeline.sample` for a grid with one row per prompt, the seeds
    ``seed..seed+per_prompt-1`` in every row (as :func:`class_rows`)."""
    return {"n": len(prompts) * per_prompt, "prompts": [p for p in prompts for _ in range(per_prompt)],
            "seeds": [seed + i for _ in prompts for i in range(per_prompt)], "nrow": per_prompt}


def class_rows(pipe: Pipeline, classes: Sequence[int], per_class: int, seed: int = 0) -> dict[str, Any]:
    """Arguments of :meth:`Pipeline.sample` for a grid with one row per class: every row uses the
    seeds ``seed..seed+per_class-1``, so a column shows one starting noise under every class."""
    labels = [c for c in classes for _ in range(per_class)]
    seeds = [seed + i for _ in classes for i in range(per_class)]
    return {"n": len(labels), "class_labels": labels, "seeds": seeds, "nrow": per_class}


def write_samples(
    pipe: Pipeline,
    n: int,
    *,
    out: str | Path | None = None,
    gif: str | Path | None = None,
    progression: str | Path | None = None,
    save_dir: str | Path | None = None,
    batch_size: int = 256,
    gif_normalize: str = "clip",
    nrow: int | None = None,
    **sample_kwargs: Any,
) -> list[Path]:
    """Sample ``n`` images and write what is asked: a grid (``out``), a denoising GIF, a
    progression strip (x_t at every step, note 004's ``sample_plot_image``) and one PNG per image
    (``save_dir``). ``gif_normalize="minmax"`` stretches every GIF frame to its own range as note
    000 does; ``"clip"`` maps [-1, 1] alike in every frame. ``nrow`` images per grid row.
    ``sample_kwargs`` go to
    :meth:`Pipeline.sample`. Returns the paths written."""
    from difflab.viz import save_gif, save_grid, save_progression

    frames: list[Tensor] = []
    snapshots: list[tuple[int, Tensor]] = []
    want_frames = gif is not None or progression is not None

    def record(i: int, t: int, x: Tensor, x0: Tensor) -> None:
        frames.append(x.float().clamp(-1, 1).cpu())
        snapshots.append((t, x.float().cpu()))

    images = pipe.sample(n, batch_size=n if want_frames else batch_size,
                         callback=record if want_frames else None, **sample_kwargs)
    written = []
    if out is not None:
        written.append(save_grid(images, out, nrow=nrow))
    if gif is not None:
        keep = [*frames[:: max(1, len(frames) // 60)], images]
        written.append(save_gif(keep, gif, normalize=gif_normalize))  # type: ignore[arg-type]
    if progression is not None:
        written.append(save_progression(snapshots, progression))
    if save_dir is not None:
        from difflab.data import save_images

        save_images(images, save_dir)
        written.append(save_dir)
    return [Path(p) for p in written]
