"""A perceptual distance on EfficientNet-Lite0 activations, in place of LPIPS.

LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric", eq. 1) compares unit-normalised activations of an ImageNet network layer by layer:
d(x, y) = sum_l 1/(H_l W_l) sum_hw || w_l * (f_l(x)_hw - f_l(y)_hw) ||^2 with f_l normalised over
channels. LPIPS' weights need torchvision, which difflab cannot depend on, so this uses the
EfficientNet-Lite0 that FD-EffNetLite0 already ships (:mod:`difflab.eval.effnet`), the outputs of
its stem and of the stages ending at blocks 0, 2, 4 and 7 (strides 2 to 16), with uniform
w_l = 1 (LPIPS' "baseline" variant, no learned linear heads). Images are resized to ``size``
(64 px by default: the 224 px of classification would cost 12x more per step) without the 8-bit
rounding of the metric, so the distance is differentiable; grey images are repeated to RGB.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from difflab.eval.effnet import INPUT_MEAN, INPUT_STD, load_effnet_lite0

TAPS = (0, 2, 4, 7)  # blocks after which activations are compared (ends of the first four stages)


class EffNetPerceptualLoss(nn.Module):
    """``forward(x, y)`` -> per-image distance [N] between images in [-1, 1]. Frozen, eval mode."""

    def __init__(self, size: int = 64, weights: str | None = None) -> None:
        super().__init__()
        self.size = size
        self.net = load_effnet_lite0(weights, fold_bn=True, channels_last=False)
        self.net.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> EffNetPerceptualLoss:  # always eval: frozen statistics
        super().train(False)
        return self

    def _features(self, x: Tensor) -> list[Tensor]:
        x = (x.clamp(-1, 1) + 1) * 127.5
        x = F.interpolate(x, (self.size, self.size), mode="bilinear", align_corners=False)
        x = ((x - INPUT_MEAN) / INPUT_STD).expand(-1, 3, -1, -1)
        net = self.net
        h = F.relu6(net._bn0(net._conv_stem(x)))
        feats = [h]
        for i, block in enumerate(net._blocks[: TAPS[-1] + 1]):
            h = block(h)
            if i in TAPS:
                feats.append(h)
        return feats

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Distance of reconstructions ``x`` (gradients flow) from targets ``y`` (no gradient)."""
        with torch.no_grad():
            target = self._features(y)
        total = x.new_zeros(x.shape[0])
        for fx, fy in zip(self._features(x), target, strict=True):
            fx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fy = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + (fx - fy).pow(2).sum(1).mean((1, 2))
        return total
