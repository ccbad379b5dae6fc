"""ControlNet on difflab's UNet: structural control (edges, skeletons, masks) for a frozen base run.

Zhang, Rao & Agrawala 2023, "Adding Conditional Control to Text-to-Image Diffusion Models":
a *trainable copy* of the base network's encoder (``conv_in``, the down path, the middle block,
and the time and class embeddings they use) starts from the base weights and sees the control
image c through a small hint encoder E (sec. 3.3: a few convolutions, the last one zero-initialised);
its outputs reach the *frozen* base network through one zero-initialised 1x1 convolution Z per
skip connection and one for the middle block (eq. 2 and 4):

    y_c = F(x; Theta) + Z(F(x + Z(c; Theta_z1); Theta_c); Theta_z2)

so a fresh ControlNet adds exact zeros and the base model's outputs are unchanged, bit for bit
(the tests check it), while gradients still reach every weight (sec. 3.1: the zero convolutions'
gradient is not zero). The layout follows diffusers' ``ControlNetModel``: the hint encoder's
output is added to the output of the copied ``conv_in``, the copy's features are taken after
``conv_in`` and after every module of the down path (the UNet's skip connections) and after the
middle block, each through its zero convolution, and all of them are multiplied by
``control_scale`` (diffusers' ``conditioning_scale``; 0 is the base model, exactly).

:class:`ControlledUNet` is the base network with a ControlNet and one batch's control images
bound to it: a network in difflab's contract ``model(x_t, t, **cond)``, so every sampler and
classifier-free guidance wrap it unchanged (a guided batch of 2B gets the control of its B images
twice, as diffusers does).

Only difflab's :class:`~difflab.nets.unet.UNet` (``--net unet``) is supported: the seed networks
and diffusers' UNets do not take skip residuals.

A ControlNet folder (written by ``difflab train-controlnet``) holds ``controlnet.safetensors``
(the EMA weights) and ``controlnet.json``: the control kind and its settings, the hint encoder,
the base run's network config and the sha256 of the base weights it was trained on; a ControlNet
refuses any other base weights (:meth:`ControlNetFiles.check_base`).
"""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from difflab.config import Config
from difflab.io import CheckpointError, load_weights
from difflab.nets.blocks import zero_init
from difflab.nets.unet import UNet, UNetConfig, _run, encoder_inputs, pad_to_multiple

FORMAT = "difflab-controlnet/1"
CONTROLNET_WEIGHTS = "controlnet.safetensors"
CONTROLNET_CONFIG = "controlnet.json"
DEFAULT_STEPS = 1000  # `difflab train-controlnet`'s length and learning rate unless told otherwise
DEFAULT_LR = 1e-3


@dataclass(frozen=True)
class HintConfig(Config):
    """The hint encoder E: ``control_channels`` in, 3x3 convolutions of ``channels`` with SiLU
    between them, and a zero-initialised 3x3 convolution to the width of the UNet's ``conv_in``
    (diffusers' ``ControlNetConditioningEmbedding`` without its stride-2 steps: difflab's
    ControlNets work on pixel runs, where the control image has the size of x_t)."""

    control_channels: int = 1
    channels: tuple[int, ...] = (16, 16, 32)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.control_channels < 1 or not self.channels or min(self.channels) < 1:
            raise ValueError(f"HintConfig needs control_channels >= 1 and positive channels, got "
                             f"{self.control_channels}, {self.channels}")


def check_base_net(net: nn.Module) -> UNet:
    """The base network, if a ControlNet can be built on it (difflab's UNet), else a one-line error."""
    if not isinstance(net, UNet):
        raise ValueError(f"ControlNet works with difflab's UNet (--net unet) only; this run's network is "
                         f"{type(net).__name__} (seed nets and diffusers' UNets take no skip residuals)")
    return net


class HintEncoder(nn.Module):
    """E(c): the control image as features of the width of ``conv_in``'s output (sec. 3.3)."""

    def __init__(self, hint: HintConfig, out_channels: int) -> None:
        super().__init__()
        widths = (hint.control_channels, *hint.channels)
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in itertools.pairwise(widths))
        self.out = zero_init(nn.Conv2d(widths[-1], out_channels, 3, padding=1))

    def forward(self, c: Tensor) -> Tensor:
        for conv in self.convs:
            c = F.silu(conv(c))
        return self.out(c)


class ControlNet(nn.Module):
    """The trainable copy of a UNet's encoder with the hint encoder and the zero convolutions.

    ``ControlNet.from_unet(base, hint)`` copies the base weights; ``ControlNet(config, hint)``
    builds the same shape for loading saved weights. ``forward(x, t, control, **cond)`` returns
    (one residual per skip connection of the UNet, the middle block's residual)."""

    def __init__(self, config: UNetConfig, hint: HintConfig | None = None) -> None:
        super().__init__()
        encoder = UNet(config)  # the encoder half of a UNet of the same config
        self.config, self.hint_config = config, hint or HintConfig()
        self.time_embed, self.class_embed = encoder.time_embed, encoder.class_embed
        self.conv_in, self.down, self.mid = encoder.conv_in, encoder.down, encoder.mid
        widths = [self.conv_in.out_channels, *(_out_channels(layer) for layer in self.down)]
        self.hint = HintEncoder(self.hint_config, widths[0])
        self.zero_convs = nn.ModuleList(zero_init(nn.Conv2d(w, w, 1)) for w in widths)
        self.mid_zero_conv = zero_init(nn.Conv2d(widths[-1], widths[-1], 1))

    @classmethod
    def from_unet(cls, base: nn.Module, hint: HintConfig | None = None) -> ControlNet:
        """A ControlNet whose encoder copy starts from ``base``'s weights (base is not changed)."""
        base = check_base_net(base)
        net = cls(base.config, hint)
        for name in ("time_embed", "class_embed", "conv_in", "down", "mid"):
            part = getattr(base, name)
            setattr(net, name, None if part is None else copy.deepcopy(part))
        return net.to(next(base.parameters()).device).requires_grad_(True)  # even from a frozen base

    @property
    def num_skips(self) -> int:
        return len(self.zero_convs)

    def forward(self, x: Tensor, t: Tensor, control: Tensor, *, class_labels: Tensor | None = None,
                context: Tensor | None = None, concat: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        check_control(control, x, self.hint_config.control_channels)
        x, emb, ctx = encoder_inputs(self, x, t, class_labels, context, concat)
        hint = self.hint(pad_to_multiple(control.to(x.dtype), self.config.multiple))
        hs = [self.conv_in(x) + hint]
        for layer in self.down:
            hs.append(_run(layer, hs[-1], emb, ctx))
        mid = _run(self.mid, hs[-1], emb, ctx)
        return [z(h) for z, h in zip(self.zero_convs, hs, strict=True)], self.mid_zero_conv(mid)


def _out_channels(layer: nn.ModuleList) -> int:
    """The channels a module of the UNet's down path hands on (its last conv's output)."""
    convs = [m for m in layer.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


def check_control(control: Tensor, x: Tensor, channels: int) -> None:
    """A control image batch must be [B, channels, H, W] with x's B, H and W (one-line error)."""
    if control.ndim != 4 or control.shape[1] != channels or control.shape[-2:] != x.shape[-2:] \
            or control.shape[0] != x.shape[0]:
        want = (x.shape[0], channels, *x.shape[-2:])
        raise ValueError(f"the control images are {tuple(control.shape)}; this ControlNet needs {want} "
                         "(one control image of the run's size per sample)")


class ControlledUNet(nn.Module):
    """``base(x, t, **cond)`` with ``scale`` times the ControlNet's residuals of ``control`` added
    to its skips and middle (eq. 4): one network in difflab's contract. ``control`` [B, C, H, W]
    in [0, 1] is bound per batch (:meth:`bind`); a batch of k B inputs (classifier-free guidance
    running both branches at once) gets it k times. ``scale == 0`` runs the base alone."""

    def __init__(self, base: nn.Module, controlnet: ControlNet, control: Tensor | None = None,
                 scale: float = 1.0) -> None:
        super().__init__()
        self.base, self.controlnet = check_base_net(base), controlnet
        self.control, self.scale = control, float(scale)
        self.in_channels, self.image_size = base.in_channels, base.image_size
        self.num_classes, self.context_dim = base.num_classes, base.context_dim
        self.config = base.config

    def bind(self, control: Tensor | None) -> ControlledUNet:
        self.control = control
        return self

    def forward(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        if self.scale == 0:
            return self.base(x, t, **cond)
        control = self.control
        if control is None:
            raise ValueError("this network has a ControlNet: give control images (control=...)")
        if x.shape[0] != control.shape[0] and control.shape[0] and x.shape[0] % control.shape[0] == 0:
            control = control.repeat(x.shape[0] // control.shape[0], 1, 1, 1)
        skips, mid = self.controlnet(x, t, control.to(x.device), **cond)
        if self.scale != 1:
            skips, mid = [s * self.scale for s in skips], mid * self.scale
        return self.base(x, t, **cond, skip_residuals=skips, mid_residual=mid)


# --- ControlNet folders ---------------------------------------------------------------------------

@dataclass
class ControlNetFiles:
    """A trained ControlNet: its folder, ``controlnet.json`` and its weights."""

    path: Path
    info: dict[str, Any]
    state: dict[str, Tensor] = field(repr=False)

    @property
    def base_sha256(self) -> str:
        return str(self.info["base"]["sha256"])

    @property
    def control(self) -> dict[str, Any]:
        """The control kind and its settings (a
        :class:`~difflab.conditioning.control.ControlConfig` as a dict)."""
        return dict(self.info["control"])

    def check_base(self, sha256: str | None, run: str | Path | None) -> None:
        """Refuse base weights other than the ones the ControlNet was trained on (both named)."""
        if sha256 is None:
            raise CheckpointError(f"the ControlNet {self.path} needs base weights loaded from a run folder "
                                  "(it checks their sha256); load the run with difflab.load")
        if sha256 != self.base_sha256:
            raise CheckpointError(
                f"the ControlNet {self.path} was trained on base weights sha256:{self.base_sha256[:16]} "
                f"({self.info['base'].get('run', '?')}), but {run or 'this run'} has sha256:{sha256[:16]}; "
                "use it with the run it was trained on")

    def build(self, base: nn.Module) -> ControlNet:
        """The ControlNet with its trained weights, for ``base`` (whose config it must share)."""
        base = check_base_net(base)
        net_cfg = UNetConfig.from_dict(self.info["net"])
        if net_cfg != base.config:
            raise CheckpointError(f"the ControlNet {self.path} was built for another network than this run's")
        net = ControlNet(net_cfg, HintConfig.from_dict(self.info["hint"]))
        try:
            net.load_state_dict(self.state)
        except RuntimeError as err:
            raise CheckpointError(f"{self.path / CONTROLNET_WEIGHTS} does not fit {CONTROLNET_CONFIG}; "
                                  "were the files copied from different ControlNets?") from err
        return net.to(next(base.parameters()).device).eval()


def load_controlnet(folder: str | Path) -> ControlNetFiles:
    """Read a ControlNet folder written by ``difflab train-controlnet``."""
    folder = Path(folder)
    cfg_path = folder / CONTROLNET_CONFIG
    if not cfg_path.is_file():
        raise CheckpointError(f"{folder} has no {CONTROLNET_CONFIG}: not a ControlNet folder written by "
                              "`difflab train-controlnet`")
    try:
        info = json.loads(cfg_path.read_text())
    except ValueError as err:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {err}") from err
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_path} is not a {FORMAT} config")
    if not all(isinstance(info.get(k), dict) for k in ("base", "control", "net", "hint")):
        raise CheckpointError(f"{cfg_path} lacks its base run, control, net or hint; write it again with "
                              "difflab train-controlnet")
    return ControlNetFiles(folder, info, load_weights(folder / CONTROLNET_WEIGHTS))


def controlnet_info(net: ControlNet, control: dict[str, Any], base_run: str | Path, base_weights: str,
                    base_sha256: str, data: dict[str, Any], control_drop: float) -> dict[str, Any]:
    """The contents of ``controlnet.json``."""
    return {
        "format": FORMAT, "control": control, "control_drop": control_drop,
        "hint": net.hint_config.to_dict(), "net": net.config.to_dict(),
        "parameters": sum(p.numel() for p in net.parameters()),
        "base": {"run": str(Path(base_run).resolve()), "weights": base_weights, "sha256": base_sha256},
        "data": data,
    }
