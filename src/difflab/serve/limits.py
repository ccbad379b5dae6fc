"""The bounds of every request parameter, in one place (the page reads them from ``/api/models``)."""

from __future__ import annotations

MAX_IMAGES = 16  # images per generation or edit
MAX_STEPS = 1000  # sampling steps
MAX_PROMPT = 300  # characters of a prompt or negative prompt
MAX_GUIDANCE = 30.0  # classifier-free guidance scale
MAX_SEED = 2**31 - 1
MAX_FRAMES = 16  # frames of a seed interpolation
MAX_TRAJECTORY = 50  # steps of a denoising trajectory (each step is two frames)
MAX_JUMPS = 20  # RePaint's jump length and resampling count
MAX_UPLOAD_BYTES = 4 * 1024 * 1024  # one uploaded image or mask
MAX_UPLOAD_PIXELS = 4096 * 4096  # width x height of an upload, checked before it is decoded
MAX_IMAGE_SIDE = 1024  # the served runs' images (a run drawing larger ones is refused at start)
QUEUE_SIZE = 8  # jobs waiting per model (one more runs)
KEEP_JOBS = 128  # finished jobs kept for their results, oldest dropped first
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")


def as_dict() -> dict[str, float | int]:
    """The numeric bounds, for the page and API users."""
    return {"max_images": MAX_IMAGES, "max_steps": MAX_STEPS, "max_prompt": MAX_PROMPT,
            "max_guidance": MAX_GUIDANCE, "max_seed": MAX_SEED, "max_frames": MAX_FRAMES,
            "max_upload_bytes": MAX_UPLOAD_BYTES, "max_upload_pixels": MAX_UPLOAD_PIXELS}
