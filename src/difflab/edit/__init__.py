"""Editing with a trained model, without retraining: inpainting (RePaint and replace-known-region),
image-to-image (SDEdit), DDIM inversion (plain and fixed-point), spherical interpolation; and,
with a run trained for it, super-resolution (SR3).

Every edit wraps the run's denoiser or calls the samplers; none of them knows what the network
predicts (eps, x0 or v). The functions that take a model work on any ``model(x_t, t, **cond)``
as :func:`difflab.sample` does; the ``*_run`` functions take a :class:`difflab.Pipeline` and its
conditioning (class labels, prompts, classifier-free guidance).
"""

from difflab.edit.images import feather_mask, read_image, read_mask
from difflab.edit.img2img import Img2ImgPlan, img2img, img2img_run, plan_img2img
from difflab.edit.inpaint import INPAINT_METHODS, inpaint, inpaint_run, repaint_levels
from difflab.edit.interpolate import interpolate_run, slerp, slerp_frames
from difflab.edit.invert import INVERSIONS, Inversion, ddim_invert, invert_run, reconstruct
from difflab.edit.upscale import bicubic, consistency, upscale_run

__all__ = [
    "INPAINT_METHODS",
    "INVERSIONS",
    "Img2ImgPlan",
    "Inversion",
    "bicubic",
    "consistency",
    "ddim_invert",
    "feather_mask",
    "img2img",
    "img2img_run",
    "inpaint",
    "inpaint_run",
    "interpolate_run",
    "invert_run",
    "plan_img2img",
    "read_image",
    "read_mask",
    "reconstruct",
    "repaint_levels",
    "slerp",
    "slerp_frames",
    "upscale_run",
]
