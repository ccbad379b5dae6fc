"""diffusers pipelines for difflab exports that no standard diffusers pipeline samples exactly.

``difflab export`` copies this file into the export folder as ``pipeline_difflab.py`` and names one
of its classes in ``model_index.json`` (``"_class_name": ["pipeline_difflab", "Difflab...Pipeline"]``).
Loading it runs this file, so diffusers asks for consent:

    pipe = DiffusionPipeline.from_pretrained(OUT, trust_remote_code=True)

- :class:`DifflabClassPipeline`: class-conditional (or unconditional) ``UNet2DModel`` whose last
  class embedding is the null class, on pixels or, with a ``vae`` (``AutoencoderKL``), on latents:
  ``pipe(class_labels=[7, 7, 3], guidance_scale=3.0, num_inference_steps=50).images``;
- :class:`DifflabTextPipeline`: text-to-image with difflab's own UNet (``unet/difflab_unet.py``,
  a diffusers custom component) and the frozen MiniLM text encoder, on pixels or latents:
  ``pipe(prompt=["a red circle"], guidance_scale=3.0).images``;
- :class:`DifflabUpscalePipeline`: super-resolution (SR3, Saharia et al. 2021) with a
  ``UNet2DModel`` whose input is x_t joined on channels to the low-resolution image enlarged
  ``factor`` times (bicubic, clamped to [-1, 1]): ``pipe(image=small).images``;

Every pipeline samples as difflab does (``difflab sample RUN --sampler ddim``): classifier-free
guidance on the network output, ``out_u + w (out_c - out_u)`` (Ho & Salimans 2022, eq. 6); with
DDIMScheduler the clipped x_0 re-derives eps (``use_clipped_model_output=True``), as difflab's
DDIM does. Latents (Rombach et al. 2022) are denoised, then decoded as
``vae.decode(z / scaling_factor + shift_factor)``: the UNet saw z = (mean - shift) * scale. It
imports only torch and diffusers (never difflab).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor


def _denoise(pipe: DiffusionPipeline, model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
             shape: tuple[int, ...], generator, num_inference_steps: int, eta: float) -> torch.Tensor:
    """The scheduler's reverse process from x_T ~ N(0, I) (one generator per sample draws it)."""
    x = randn_tensor(shape, generator=generator, device=pipe._execution_device, dtype=pipe.unet.dtype)
    x = x * pipe.scheduler.init_noise_sigma
    pipe.scheduler.set_timesteps(num_inference_steps)
    extra = {}
    if type(pipe.scheduler).__name__ == "DDIMScheduler":
        extra = {"eta": eta, "use_clipped_model_output": True}
    for t in pipe.progress_bar(pipe.scheduler.timesteps):
        out = model(pipe.scheduler.scale_model_input(x, t), t)
        x = pipe.scheduler.step(out, t, x, generator=generator, **extra).prev_sample
    return x


def _images(pipe: DiffusionPipeline, x: torch.Tensor, output_type: str, return_dict: bool):
    """Decode latents (when the pipeline has a vae) and map [-1, 1] to pil / np / pt images."""
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        shift = vae.config.shift_factor or 0.0
        x = vae.decode(x / vae.config.scaling_factor + shift).sample
    image = (x / 2 + 0.5).clamp(0, 1)
    if output_type != "pt":
        image = image.cpu().permute(0, 2, 3, 1).float().numpy()
        if output_type == "pil":
            image = pipe.numpy_to_pil(image)
    if not return_dict:
        return (image,)
    return ImagePipelineOutput(images=image)


def _guided(w: float, cond: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
            uncond: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
            both: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    """Classifier-free guidance with scale ``w`` (1: conditional only, 0: unconditional only);
    ``both`` runs the conditional and unconditional halves in one batch."""
    if w == 1.0:
        return cond
    if w == 0.0:
        return uncond

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out_c, out_u = both(torch.cat([x, x]), t).chunk(2)
        return out_u + w * (out_c - out_u)

    return model


class DifflabClassPipeline(DiffusionPipeline):
    """Unconditional or class-conditional sampling of a ``UNet2DModel`` whose last class embedding
    (of ``num_class_embeds``) is the null class; with a ``vae``, of its latents."""

    model_cpu_offload_seq = "unet->vae"
    _optional_components: ClassVar[list[str]] = ["vae"]  # a list: diffusers adds it to lists

    def __init__(self, unet, scheduler, vae=None):  # diffusers passes its own component types
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: list[int] | torch.Tensor | None = None,
        batch_size: int = 1,
        guidance_scale: float = 3.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 50,
        eta: float = 0.0,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """``class_labels`` (one per image; None = unconditional), guided with ``guidance_scale``
        (0 = unconditional, 1 = conditional without guidance)."""
        embeds = self.unet.config.num_class_embeds
        device = self._execution_device
        if class_labels is not None and not embeds:
            raise ValueError("this pipeline is unconditional: sample it without class_labels")
        if class_labels is None:
            labels = None if not embeds else torch.full((batch_size,), int(embeds) - 1, dtype=torch.long,
                                                        device=device)
            guidance_scale = 1.0
        else:
            null = int(embeds) - 1
            labels = torch.as_tensor(class_labels, dtype=torch.long).flatten().to(device)
            batch_size = len(labels)
            if bool(((labels < 0) | (labels >= null)).any()):
                raise ValueError(f"class labels must lie in [0, {null}); got {labels.tolist()}")
        size = self.unet.config.sample_size
        hw = (size, size) if isinstance(size, int) else tuple(size)
        shape = (batch_size, self.unet.config.in_channels, *hw)
        uncond = None if labels is None else torch.full_like(labels, int(embeds) - 1)
        model = _guided(
            guidance_scale,
            lambda x, t: self.unet(x, t, class_labels=labels).sample,
            lambda x, t: self.unet(x, t, class_labels=uncond).sample,
            lambda x, t: self.unet(x, t, class_labels=torch.cat([labels, uncond])).sample,
        )
        x = _denoise(self, model, shape, generator, num_inference_steps, eta)
        return _images(self, x, output_type, return_dict)


class DifflabTextPipeline(DiffusionPipeline):
    """Text-to-image sampling as difflab's ``--cond text`` runs do, on pixels or (with a ``vae``)
    latents. The ``unet`` is difflab's own (``unet/difflab_unet.py``): it cross-attends to the
    token states of the frozen ``text_encoder`` (all-MiniLM-L6-v2, a ``BertModel``).

    A prompt is tokenized on its own (``[CLS] ... [SEP]``, truncated to ``max_length`` word
    pieces, never padded inside the encoder), its last hidden states are the tokens, and a batch is
    zero-padded to its longest prompt: the UNet masks all-zero tokens, so a prompt's image does not
    depend on its batch. The empty prompt's encoding (never zeros) is the null condition
    classifier-free guidance steers away from, or the negative prompt's where one is given."""

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components: ClassVar[list[str]] = ["vae"]

    def __init__(self, unet, scheduler, text_encoder, tokenizer, vae=None, max_length: int = 256):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer,
                              vae=vae)
        self.register_to_config(max_length=max_length)

    def token_states(self, prompt: str) -> torch.Tensor:
        """The last hidden states [L, D] of one prompt."""
        ids = self.tokenizer(prompt, truncation=True, max_length=self.config.max_length, return_tensors="pt")
        ids = {k: v.to(self.text_encoder.device) for k, v in ids.items()}
        return self.text_encoder(**ids).last_hidden_state[0].float()

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """[B, L, D] token states, zero-padded to the longest prompt."""
        each = [self.token_states(p) for p in prompts]
        states = torch.zeros(len(each), max(len(s) for s in each), each[0].shape[-1], device=each[0].device)
        for i, s in enumerate(each):
            states[i, : len(s)] = s
        return states

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] = "",
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        guidance_scale: float = 3.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 50,
        eta: float = 0.0,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """One image per prompt (times ``num_images_per_prompt``), guided with ``guidance_scale``
        away from ``negative_prompt`` (default: the empty prompt); with only empty prompts it samples
        unconditionally."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        n = len(prompts)
        negatives = negative_prompt if negative_prompt is not None else ""
        negatives = [negatives] * n if isinstance(negatives, str) else \
            [p for p in negatives for _ in range(num_images_per_prompt)]
        if len(negatives) != n:
            raise ValueError(f"give one negative prompt per prompt: {n} prompts, {len(negatives)} negatives")
        dtype = self.unet.dtype
        cond = self.encode_prompts(prompts).to(self._execution_device, dtype)
        if not any(prompts) and not any(negatives):
            guidance_scale = 1.0  # unconditional: nothing to guide
        uncond = self.encode_prompts(negatives).to(self._execution_device, dtype)
        length = max(cond.shape[1], uncond.shape[1])
        both = torch.cat([F.pad(cond, (0, 0, 0, length - cond.shape[1])),
                          F.pad(uncond, (0, 0, 0, length - uncond.shape[1]))])
        model = _guided(
            guidance_scale,
            lambda x, t: self.unet(x, t, encoder_hidden_states=cond).sample,
            lambda x, t: self.unet(x, t, encoder_hidden_states=uncond).sample,
            lambda x, t: self.unet(x, t, encoder_hidden_states=both).sample,
        )
        size = self.unet.config.sample_size
        hw = (size, size) if isinstance(size, int) else tuple(size)
        shape = (n, self.unet.config.in_channels, *hw)
        x = _denoise(self, model, shape, generator, num_inference_steps, eta)
        return _images(self, x, output_type, return_dict)


class DifflabUpscalePipeline(DiffusionPipeline):
    """Super-resolution as difflab's ``--cond lowres`` runs do: the low-resolution image, enlarged
    ``factor`` times with bicubic interpolation and clamped to [-1, 1], is joined to x_t on the
    channels of the ``UNet2DModel`` (``in_channels`` = 2 C); guidance (a scale other than 1) steers
    away from the null condition, an all-zero image."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler, factor: int = 4):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(factor=factor)

    def enlarge(self, small: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] in [-1, 1] -> [B, C, h f, w f]: bicubic, clamped."""
        h, w = small.shape[-2:]
        f = int(self.config.factor)
        big = F.interpolate(small.float(), size=(h * f, w * f), mode="bicubic", align_corners=False)
        return big.clamp(-1, 1)

    def _as_tensor(self, image) -> torch.Tensor:
        """Low-resolution images as [B, C, h, w] in [-1, 1]: a tensor already so, or PIL images."""
        if isinstance(image, torch.Tensor):
            return image[None] if image.ndim == 3 else image
        import numpy as np

        images = image if isinstance(image, (list, tuple)) else [image]
        arrays = [np.asarray(im, dtype=np.float32) / 127.5 - 1 for im in images]
        return torch.stack([torch.from_numpy(a[..., None] if a.ndim == 2 else a).permute(2, 0, 1)
                            for a in arrays])

    @torch.no_grad()
    def __call__(
        self,
        image,
        guidance_scale: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 50,
        eta: float = 0.0,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """``image``: the low-resolution images ([B, C, H/f, W/f] in [-1, 1], or PIL images)."""
        small = self._as_tensor(image).to(self._execution_device)
        channels = self.unet.config.out_channels
        size = self.unet.config.sample_size
        hw = (size, size) if isinstance(size, int) else tuple(size)
        f = int(self.config.factor)
        want = (channels, hw[0] // f, hw[1] // f)
        if tuple(small.shape[1:]) != want:
            raise ValueError(f"this pipeline upscales {want} (channels x height x width) images by {f}, "
                             f"got {tuple(small.shape[1:])}")
        up = self.enlarge(small).to(self.unet.dtype)
        null = torch.zeros_like(up)
        model = _guided(
            guidance_scale,
            lambda x, t: self.unet(torch.cat([x, up], dim=1), t).sample,
            lambda x, t: self.unet(torch.cat([x, null], dim=1), t).sample,
            lambda x, t: self.unet(torch.cat([x, torch.cat([up, null])], dim=1), t).sample,
        )
        x = _denoise(self, model, (len(small), channels, *hw), generator, num_inference_steps, eta)
        return _images(self, x, output_type, return_dict)
