"""The standard FID feature extractor: NVIDIA's TorchScript port of the TensorFlow Inception-V3
graph ``inception-2015-12-05`` (Szegedy et al. 2016), as used by StyleGAN2-ADA, StyleGAN3 and
clean-fid, giving the 2048-d pool3 features of Heusel et al. 2017. A Frechet distance on these
features is the FID of the literature; KID and precision/recall on them are the usual KID and
Inception precision/recall.

The weights are not shipped with difflab. :func:`inception_weights_path` looks, in order, at
``--inception-weights PATH``, ``$DIFFLAB_INCEPTION_WEIGHTS`` and the torch hub cache
(``torch.hub.get_dir()/checkpoints/inception-2015-12-05.pt``); it downloads :data:`INCEPTION_URL`
into that cache only when asked to (``allow_download=True``).

Calling convention of the TorchScript file (StyleGAN2-ADA ``metrics/metric_utils.py``):
``detector(images, return_features=True)`` with ``images`` uint8 [N, 3, H, W] in 0..255, any
H x W (the network resizes to 299 x 299 itself) -> float32 [N, 2048].
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import Tensor

from difflab.eval.images import check_images
from difflab.io import file_digest, first_line

INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
INCEPTION_FILENAME = "inception-2015-12-05.pt"
WEIGHTS_ENV = "DIFFLAB_INCEPTION_WEIGHTS"

__all__ = [
    "INCEPTION_FILENAME",
    "INCEPTION_URL",
    "WEIGHTS_ENV",
    "InceptionFeatures",
    "hub_cache_path",
    "inception_weights_path",
    "load_detector",
    "to_detector_input",
]


def _missing(reason: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"no Inception-V3 FID weights ({reason}); pass --inception-weights PATH (the TorchScript file "
        f"from {INCEPTION_URL}) or set {WEIGHTS_ENV}; or use --features effnet-lite0 offline"
    )


def hub_cache_path() -> Path:
    """Where the weights are looked for, and downloaded to, in the torch hub cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILENAME


def inception_weights_path(path: str | Path | None = None, allow_download: bool = False) -> Path:
    """The Inception-V3 TorchScript file: ``path`` if given, else ``$DIFFLAB_INCEPTION_WEIGHTS``
    if set, else the torch hub cache file, else (only with ``allow_download``) a fresh download
    of :data:`INCEPTION_URL` into the hub cache. A ``path`` or environment variable naming a
    missing file is an error, not a reason to look further. Raises ``FileNotFoundError`` with a
    one-line hint when nothing is found."""
    if path is not None:
        candidate = Path(path).expanduser()
        if not candidate.is_file():
            raise _missing(f"--inception-weights {candidate} is not a file")
        return candidate
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        candidate = Path(env).expanduser()
        if not candidate.is_file():
            raise _missing(f"{WEIGHTS_ENV}={candidate} is not a file")
        return candidate
    cached = hub_cache_path()
    if cached.is_file():
        return cached
    if not allow_download:
        raise _missing(f"none in {cached}; --download would fetch it there")
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(INCEPTION_URL, str(cached), progress=True)
    except Exception as err:  # network errors come in many types (URLError, OSError, HTTPError, ...)
        raise _missing(f"download of {INCEPTION_FILENAME} failed: {first_line(err)}") from err
    return cached


def load_detector(path: str | Path, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """Load the TorchScript detector in eval mode on ``device``; ``ValueError`` naming the file
    when it is not a TorchScript archive (a truncated download, a state dict, an HTML page)."""
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format of the file
            warnings.filterwarnings("ignore", ".*torch.jit.load.* is deprecated", DeprecationWarning)
            detector = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # torch raises RuntimeError, ValueError or pickle errors here
        raise ValueError(f"{path} is not a TorchScript file ({first_line(err)}); expected "
                         f"{INCEPTION_FILENAME} from {INCEPTION_URL}") from err
    return detector.eval().to(device)


def to_detector_input(images: Tensor) -> Tensor:
    """difflab images float [N, 1 or 3, H, W] in [-1, 1] -> uint8 [N, 3, H, W] in 0..255: clamp to
    [-1, 1], round((x + 1) * 127.5) (the mapping of :func:`difflab.viz.to_uint8`, so in-memory
    samples and their saved PNGs give the same features; it differs from StyleGAN's
    ``(x * 127.5 + 128).clamp(0, 255)`` truncation only at exact .5 ties), grey repeated to RGB."""
    x = check_images(images)
    x = x.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x


class InceptionFeatures:
    """2048-d pool3 features of the standard FID Inception-V3 (NVIDIA's TorchScript file).
    A Frechet distance on them is FID."""

    name = "inception"
    label = "FID"
    dim = 2048
    input_size = 299

    def __init__(
        self,
        device: str | torch.device = "cpu",
        weights: str | Path | None = None,
        allow_download: bool = False,
    ) -> None:
        self.weights = inception_weights_path(weights, allow_download=allow_download)
        self.device = torch.device(device)
        self.detector = load_detector(self.weights, self.device)

    def cache_key(self) -> str:
        return f"inception-{file_digest(str(self.weights))}-uint8-round-grey2rgb-nvlabs-resize299"

    @torch.no_grad()
    def features(self, images: Tensor, batch_size: int = 64) -> Tensor:
        """Images float [N, 1 or 3, H, W] in [-1, 1], any size -> float32 [N, 2048] on the CPU."""
        pixels = to_detector_input(images)
        out = []
        for start in range(0, pixels.shape[0], batch_size):
            batch = pixels[start:start + batch_size].to(self.device)
            f = self.detector(batch, return_features=True)
            if f.ndim != 2 or f.shape != (batch.shape[0], self.dim):
                raise ValueError(f"{self.weights} returned features of shape {tuple(f.shape)}, expected "
                                 f"[{batch.shape[0]}, {self.dim}]: is it {INCEPTION_FILENAME}?")
            out.append(f.float().cpu())
        return torch.cat(out)
