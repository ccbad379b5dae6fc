"""difflab's autoencoder (:mod:`difflab.nets.autoencoder`) -> an equivalent diffusers ``AutoencoderKL``.

Both are Stable Diffusion's KL autoencoder (Rombach et al. 2022, app. G; ldm's ``AutoencoderKL``),
so the weights map one to one:

=============================================  ====================================================
difflab                                        diffusers ``AutoencoderKL``
=============================================  ====================================================
``encoder.down`` res blocks of level i         ``encoder.down_blocks.i.resnets`` (DownEncoderBlock2D)
``Downsample`` (pad right/bottom, stride 2)    ``encoder.down_blocks.i.downsamplers.0`` (padding 0)
``decoder.up`` res blocks of level i           ``decoder.up_blocks.i.resnets`` (UpDecoderBlock2D)
``Upsample`` (nearest x2, conv)                ``decoder.up_blocks.i.upsamplers.0``
``AEResBlock`` norm1/conv1/norm2/conv2/skip    ``ResnetBlock2D`` norm1/conv1/norm2/conv2/conv_shortcut
``mid`` res, ``AEAttention``, res              ``mid_block`` resnets.0, attentions.0, resnets.1
``AEAttention`` norm, qkv (1x1 conv), proj     ``Attention`` group_norm, to_q/k/v, to_out.0 (linear)
``norm_out`` / ``conv_out``                    ``conv_norm_out`` / ``conv_out``
``quant_conv`` / ``post_quant_conv``           the same names
=============================================  ====================================================

The latent scaling travels in the config: ``scaling_factor`` and ``shift_factor`` are difflab's
scale and shift, so ``(z - shift_factor) * scaling_factor`` is the latent the UNet saw, as
diffusers' pipelines scale (z_scaled = (z - shift) * scale).

What ``AutoencoderKL`` cannot express, and :func:`check_vae_convertible` names: a group count that
does not divide every width (difflab clamps it per layer; ``AutoencoderKL`` has one
``norm_num_groups``). :func:`convert_vae` compares encode (mean and log-variance) and decode
outputs of both networks before returning, and raises rather than return one that differs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from difflab.nets.autoencoder import (
    AEAttention,
    AEResBlock,
    AutoencoderConfig,
    AutoencoderKL,
    Downsample,
    Upsample,
)
from difflab.nets.blocks import norm_groups

#: the largest encode/decode difference (relative to the output's scale) the check accepts
TOLERANCE = 1e-4


def check_vae_convertible(c: AutoencoderConfig) -> None:
    """A ``ValueError`` naming what ``AutoencoderKL`` cannot express about ``c``, else nothing."""
    bad = sorted(w for w in set(c.channels) if norm_groups(w, c.groups) != c.groups)
    if bad:
        raise ValueError(f"autoencoder groups={c.groups} does not divide the widths {bad}; diffusers' "
                         "AutoencoderKL uses one norm_num_groups everywhere (retrain with groups dividing "
                         "every width)")


def autoencoder_kl_kwargs(c: AutoencoderConfig, sample_size: int | None, scale: float, shift: float
                          ) -> dict[str, Any]:
    """The ``AutoencoderKL`` constructor arguments of the network equivalent to ``c``."""
    levels = len(c.channels)
    return {
        "in_channels": c.in_channels,
        "out_channels": c.in_channels,
        "down_block_types": ("DownEncoderBlock2D",) * levels,
        "up_block_types": ("UpDecoderBlock2D",) * levels,
        "block_out_channels": tuple(c.channels),
        "layers_per_block": c.res_blocks,
        "act_fn": "silu",
        "latent_channels": c.latent_channels,
        "norm_num_groups": c.groups,
        "sample_size": sample_size or 32,
        "scaling_factor": float(scale),
        "shift_factor": float(shift),
        "force_upcast": False,
        "use_quant_conv": True,
        "use_post_quant_conv": True,
        "mid_block_add_attention": c.mid_attention,
    }


def _conv_as_linear(t: Tensor) -> Tensor:
    return t[:, :, 0, 0] if t.ndim == 4 else t


def _res(out: dict[str, Tensor], dst: str, src: AEResBlock) -> None:
    for ours, theirs in (("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"), ("conv2", "conv2"),
                         ("skip", "conv_shortcut")):
        module = getattr(src, ours)
        for name, value in module.state_dict().items():
            out[f"{dst}.{theirs}.{name}"] = value


def _attn(out: dict[str, Tensor], dst: str, src: AEAttention) -> None:
    for name, value in src.norm.state_dict().items():
        out[f"{dst}.group_norm.{name}"] = value
    c = src.proj.out_channels
    w, b = _conv_as_linear(src.qkv.weight.detach()), src.qkv.bias.detach()
    for i, part in enumerate(("to_q", "to_k", "to_v")):
        out[f"{dst}.{part}.weight"] = w[i * c:(i + 1) * c].clone()
        out[f"{dst}.{part}.bias"] = b[i * c:(i + 1) * c].clone()
    out[f"{dst}.to_out.0.weight"] = _conv_as_linear(src.proj.weight.detach()).clone()
    out[f"{dst}.to_out.0.bias"] = src.proj.bias.detach().clone()


def _mid(out: dict[str, Tensor], dst: str, mid: nn.Sequential) -> None:
    _res(out, f"{dst}.resnets.0", mid[0])
    if isinstance(mid[1], AEAttention):
        _attn(out, f"{dst}.attentions.0", mid[1])
    _res(out, f"{dst}.resnets.1", mid[2])


def _levels(out: dict[str, Tensor], dst: str, layers: nn.Sequential, resample: str) -> None:
    """Flat [res, ..., resample, res, ...] layers -> ``dst.{level}.resnets.{j}`` / ``.{resample}.0``."""
    level = j = 0
    for m in layers:
        if isinstance(m, AEResBlock):
            _res(out, f"{dst}.{level}.resnets.{j}", m)
            j += 1
        elif isinstance(m, (Downsample, Upsample)):
            for name, value in m.conv.state_dict().items():
                out[f"{dst}.{level}.{resample}.0.conv.{name}"] = value
            level, j = level + 1, 0
        else:  # pragma: no cover - the autoencoder has no other layer kinds
            raise ValueError(f"no AutoencoderKL counterpart for {type(m).__name__}")


def vae_state_dict(net: AutoencoderKL) -> dict[str, Tensor]:
    """difflab autoencoder weights under diffusers ``AutoencoderKL`` names."""
    out: dict[str, Tensor] = {}
    enc, dec = net.encoder, net.decoder
    for prefix, part in (("encoder", enc), ("decoder", dec)):
        for name, value in part.conv_in.state_dict().items():
            out[f"{prefix}.conv_in.{name}"] = value
        _mid(out, f"{prefix}.mid_block", part.mid)
        for name, value in part.norm_out.state_dict().items():
            out[f"{prefix}.conv_norm_out.{name}"] = value
        for name, value in part.conv_out.state_dict().items():
            out[f"{prefix}.conv_out.{name}"] = value
    _levels(out, "encoder.down_blocks", enc.down, "downsamplers")
    _levels(out, "decoder.up_blocks", dec.up, "upsamplers")
    for conv in ("quant_conv", "post_quant_conv"):
        for name, value in getattr(net, conv).state_dict().items():
            out[f"{conv}.{name}"] = value
    return out


def convert_vae(net: AutoencoderKL, sample_size: int | None, scale: float, shift: float = 0.0, *,
                check: bool = True) -> nn.Module:
    """A ``diffusers.AutoencoderKL`` computing what ``net`` computes, with ``scaling_factor`` /
    ``shift_factor`` = ``scale`` / ``shift``; with ``check`` its encode and decode outputs are
    compared with ``net``'s (:func:`check_vae_equal`) and a mismatch raises."""
    import diffusers

    c = net.config
    check_vae_convertible(c)
    out = diffusers.AutoencoderKL(**autoencoder_kl_kwargs(c, sample_size, scale, shift))
    state = vae_state_dict(net)
    missing, unexpected = out.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"the autoencoder's weights do not line up with AutoencoderKL's (missing "
                         f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    out = out.eval().to(next(net.parameters()).device)
    if check:
        check_vae_equal(net, out, sample_size or 8 * c.factor)
    return out


@torch.no_grad()
def check_vae_equal(net: Any, vae: nn.Module, image_size: int, batch: int = 2, seed: int = 0) -> float:
    """The max difference between ``net``'s and ``vae``'s encoder mean, log-variance and decoded
    images on random inputs, relative to each output's scale; ``ValueError`` above ``TOLERANCE``."""
    was = net.training
    net.eval()
    gen = torch.Generator().manual_seed(seed)
    device = next(net.parameters()).device
    x = (torch.rand(batch, net.in_channels, image_size, image_size, generator=gen) * 2 - 1).to(device)
    f = int(net.factor)
    z = torch.randn(batch, net.latent_channels, image_size // f, image_size // f, generator=gen).to(device)
    ours, theirs = net.encode(x), vae.encode(x).latent_dist
    pairs = [(ours.mean, theirs.mean), (ours.logvar, theirs.logvar), (net.decode(z), vae.decode(z).sample)]
    net.train(was)
    diff = max(float((a.float() - b.float()).abs().max()) / max(1.0, float(a.abs().max())) for a, b in pairs)
    if not diff <= TOLERANCE:
        raise ValueError(f"the converted AutoencoderKL differs from the autoencoder by {diff:.2e} "
                         "(relative); refusing to export an autoencoder that computes something else")
    return diff


__all__ = ["TOLERANCE", "autoencoder_kl_kwargs", "check_vae_convertible", "check_vae_equal", "convert_vae",
           "vae_state_dict"]
