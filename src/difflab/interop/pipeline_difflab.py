"""A class-conditional image pipeline for diffusers, written next to a difflab export.

diffusers has no standard pipeline for a class-conditional ``UNet2DModel``, so ``difflab export``
copies this file into the export folder as ``pipeline_difflab.py`` and names it in
``model_index.json`` (``"_class_name": ["pipeline_difflab", "DifflabClassPipeline"]``). Loading it
runs this file, so diffusers asks for consent:

    pipe = DiffusionPipeline.from_pretrained(OUT, trust_remote_code=True)
    images = pipe(class_labels=[7, 7, 3], guidance_scale=3.0, num_inference_steps=50).images

It samples as difflab does (``difflab sample RUN --class ... --sampler ddim``): classifier-free
guidance on the network output, ``out_u + w (out_c - out_u)`` (Ho & Salimans 2022, eq. 6), the
null class being the last of the UNet's ``num_class_embeds`` embeddings; with DDIMScheduler the
clipped x_0 re-derives eps (``use_clipped_model_output=True``), as difflab's DDIM does. It imports
only torch and diffusers (never difflab).
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor


class DifflabClassPipeline(DiffusionPipeline):
    """Class-conditional sampling of a ``UNet2DModel`` whose last class embedding is the null class."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler):  # diffusers passes its own component types
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

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
        null = int(self.unet.config.num_class_embeds) - 1
        device = self._execution_device
        if class_labels is None:
            labels = torch.full((batch_size,), null, dtype=torch.long)
            guidance_scale = 1.0
        else:
            labels = torch.as_tensor(class_labels, dtype=torch.long).flatten()
            batch_size = len(labels)
            if bool(((labels < 0) | (labels >= null)).any()):
                raise ValueError(f"class labels must lie in [0, {null}); got {labels.tolist()}")
        labels = labels.to(device)
        size = self.unet.config.sample_size
        hw = (size, size) if isinstance(size, int) else tuple(size)
        shape = (batch_size, self.unet.config.in_channels, *hw)
        image = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        image = image * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps)
        extra = {}
        if type(self.scheduler).__name__ == "DDIMScheduler":
            extra = {"eta": eta, "use_clipped_model_output": True}
        uncond = torch.full_like(labels, null)
        for t in self.progress_bar(self.scheduler.timesteps):
            x_in = self.scheduler.scale_model_input(image, t)
            if guidance_scale == 1.0:
                out = self.unet(x_in, t, class_labels=labels).sample
            elif guidance_scale == 0.0:
                out = self.unet(x_in, t, class_labels=uncond).sample
            else:
                both = self.unet(torch.cat([x_in, x_in]), t, class_labels=torch.cat([labels, uncond])).sample
                out_c, out_u = both.chunk(2)
                out = out_u + guidance_scale * (out_c - out_u)
            image = self.scheduler.step(out, t, image, generator=generator, **extra).prev_sample
        image = (image / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            image = image.cpu().permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                image = self.numpy_to_pil(image)
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)
