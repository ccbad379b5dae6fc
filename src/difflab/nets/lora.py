"""Low-rank adapters (LoRA) on difflab's UNet: which layers get them, the adapter files, merging.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", eq. 3 and sec. 4.1)
keeps a trained weight W frozen and learns a low-rank update,

    W' = W + s * (alpha / r) * B A,      B [out, r] = 0 at the start, A [r, in] random,

so a fresh adapter leaves the network exactly as it was, and only r * (in + out) numbers per layer
are trained. ``s`` is the adapter's strength at sampling time (``--lora-scale``; 0 is the base
model, exactly). For a k x k convolution A is a k x k convolution to r channels and B a 1x1
convolution back (so B A is the [out, in, k, k] kernel ``einsum("or,rikl->oikl")``); for an
embedding table the update is (B A)^T (peft's layouts).

Training wraps the chosen layers with the field's library for it, peft
(:func:`inject`: ``peft.inject_adapter_in_model``, peft's LoRA layers for ``nn.Linear``,
``nn.Conv2d`` and ``nn.Embedding``; every layer of the UNet is one of those). Sampling does not
need peft: an adapter is *merged* into a copy of the base weights with the formula above
(:func:`merge`), in plain torch, so ``difflab sample --lora`` costs no extra work per step and does
not import peft (which imports transformers: 5 s). The tests check the merged network against
peft's unmerged one.

An adapter folder (written by ``difflab finetune``) holds ``adapter.safetensors`` (the EMA of the
A and B matrices, keys ``<module>.lora_A.weight`` / ``<module>.lora_B.weight``, peft's saved
form) and ``adapter.json``: the LoRA settings, the adapted modules, the base run's network config
and the sha256 of the base weights file it was trained on. An adapter refuses any other base
weights (:meth:`Adapter.check_base`).

Targets (``LoRAConfig.targets``), by the UNet's blocks (:mod:`difflab.nets.blocks`):
``attention``: self-attention ``qkv`` and ``proj``, cross-attention ``to_q``, ``to_kv`` and
``cross_proj``; ``conv``: the ResBlocks' ``conv1``, ``conv2`` and 1x1 ``skip``, the down- and
upsampling convs, ``conv_in`` and the output conv; ``embed``: the time-embedding MLP, the class
embedding and each ResBlock's projection of the embedding (``emb``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from difflab.config import Config
from difflab.io import CheckpointError, load_weights

FORMAT = "difflab-lora/1"
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"
TARGETS: tuple[str, ...] = ("attention", "conv", "embed")
ATTENTION_LAYERS = ("qkv", "proj", "to_q", "to_kv", "cross_proj")
RESBLOCK_CONVS = ("conv1", "conv2", "skip")
ADAPTER_NAME = "default"  # peft's name for the one adapter a network is trained with
DEFAULT_STEPS = 500  # `difflab finetune`'s length and learning rate unless told otherwise
DEFAULT_LR = 1e-3

Target = Literal["attention", "conv", "embed"]


@dataclass(frozen=True)
class LoRAConfig(Config):
    """Rank r, scaling alpha (None: alpha = r, so the update is B A at scale 1), the groups of
    layers adapted (see the module docstring) and dropout on the adapter's input (peft's
    ``lora_dropout``)."""

    rank: int = 4
    alpha: float | None = None
    targets: tuple[Target, ...] = ("attention",)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be a positive number, got {self.rank}")
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be > 0, got {self.alpha}")
        if not self.targets:
            raise ValueError(f"LoRA needs at least one target of {', '.join(TARGETS)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout must lie in [0, 1), got {self.dropout}")

    @property
    def scaling(self) -> float:
        """alpha / r: the factor of B A at scale 1."""
        return (self.alpha if self.alpha is not None else self.rank) / self.rank


def parse_targets(text: str) -> tuple[str, ...]:
    """``"attention,conv"`` -> ``("attention", "conv")``, or a one-line error."""
    names = tuple(dict.fromkeys(t.strip().lower() for t in text.split(",") if t.strip()))
    unknown = [n for n in names if n not in TARGETS]
    if unknown or not names:
        raise ValueError(f"unknown LoRA target {', '.join(unknown) or repr(text)}; use any of "
                         f"{', '.join(TARGETS)} separated by commas")
    return names


def target_modules(net: nn.Module, targets: Sequence[str]) -> list[str]:
    """The names of ``net``'s layers that the ``targets`` groups adapt (difflab's UNet only)."""
    from difflab.nets.blocks import Attention, Downsample, ResBlock, Upsample
    from difflab.nets.unet import UNet

    if not isinstance(net, UNet):
        raise ValueError(f"LoRA adapts difflab's UNet (--net unet); this run's network is "
                         f"{type(net).__name__}")
    wanted = set(targets)
    names: list[str] = []
    for parent_name, parent in net.named_modules():
        for child_name, child in parent.named_children():
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if not isinstance(child, nn.Linear | nn.Conv2d | nn.Embedding):
                continue
            if isinstance(parent, Attention):
                group = "attention" if child_name in ATTENTION_LAYERS else None
            elif isinstance(parent, ResBlock):
                group = "conv" if child_name in RESBLOCK_CONVS else "embed" if child_name == "emb" else None
            elif isinstance(parent, Downsample | Upsample) or name in ("conv_in", "out.2"):
                group = "conv"
            elif name.startswith("time_embed.") or name == "class_embed":
                group = "embed"
            else:
                group = None
            if group in wanted:
                names.append(name)
    if not names:
        raise ValueError(f"this network has no layer in the LoRA targets {', '.join(targets)} (a UNet "
                         "without attention has none for 'attention': add conv)")
    return names


def sha256_file(path: str | Path) -> str:
    """The full sha256 (hex) of a file: how an adapter names its base weights."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def short(digest: str) -> str:
    return f"sha256:{digest[:16]}"


# --- peft: the trainable, unmerged form ----------------------------------------------------------

def inject(net: nn.Module, lora: LoRAConfig, modules: Sequence[str]) -> nn.Module:
    """Wrap ``modules`` of ``net`` (in place) with peft's LoRA layers and freeze everything else:
    only the A and B matrices train. B starts at zero, so the network's outputs do not change."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as err:
        raise ImportError("training a LoRA adapter needs peft: pip install 'difflab[lora]' "
                          "(or pip install peft)") from err

    cfg = LoraConfig(r=lora.rank, lora_alpha=lora.alpha if lora.alpha is not None else lora.rank,
                     target_modules=list(modules), lora_dropout=lora.dropout, bias="none",
                     init_lora_weights=True)
    net = inject_adapter_in_model(cfg, net, adapter_name=ADAPTER_NAME)
    for name, p in net.named_parameters():
        p.requires_grad_(".lora_" in name)
    return net


def set_scale(net: nn.Module, scale: float) -> None:
    """The strength s of an injected adapter (peft's ``set_scale``: scaling = s * alpha / r)."""
    from peft.tuners.lora import LoraLayer

    for m in net.modules():
        if isinstance(m, LoraLayer):
            m.set_scale(ADAPTER_NAME, scale)


def adapter_state(net: nn.Module) -> dict[str, Tensor]:
    """The A and B matrices of a peft-wrapped ``net`` under their saved names
    (``<module>.lora_A.weight``, ``<module>.lora_B.weight``; embeddings too)."""
    out = {}
    for key, value in net.state_dict().items():
        if ".lora_" not in key:
            continue
        key = key.replace(f".{ADAPTER_NAME}", "").replace("lora_embedding_A", "lora_A").replace(
            "lora_embedding_B", "lora_B")
        out[key if key.endswith(".weight") else key + ".weight"] = value
    return out


def load_adapter_state(net: nn.Module, state: dict[str, Tensor]) -> None:
    """Put saved A and B matrices (:func:`adapter_state`'s form) into a peft-wrapped ``net``."""
    own = {}
    for key in net.state_dict():
        if ".lora_" in key:
            saved = key.replace(f".{ADAPTER_NAME}", "").replace("lora_embedding_A", "lora_A").replace(
                "lora_embedding_B", "lora_B")
            own[saved if saved.endswith(".weight") else saved + ".weight"] = key
    if set(own) != set(state):
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        raise CheckpointError(f"the adapter weights do not fit this network (missing {missing[:3]}, "
                              f"unexpected {extra[:3]})")
    result = net.load_state_dict({own[k]: v for k, v in state.items()}, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys


# --- adapter folders and merging (plain torch) ----------------------------------------------------

@dataclass
class Adapter:
    """A trained adapter: its folder, ``adapter.json`` and the A/B matrices."""

    path: Path
    info: dict[str, Any]
    state: dict[str, Tensor] = field(repr=False)

    @property
    def config(self) -> LoRAConfig:
        return LoRAConfig.from_dict(self.info["lora"])

    @property
    def base_sha256(self) -> str:
        return str(self.info["base"]["sha256"])

    @property
    def modules(self) -> list[str]:
        return list(self.info["modules"])

    def check_base(self, sha256: str | None, run: str | Path | None) -> None:
        """Refuse base weights other than the ones the adapter was trained on (both digests named)."""
        if sha256 is None:
            raise CheckpointError(f"the adapter {self.path} needs base weights loaded from a run folder "
                                  f"(it checks their sha256); load the run with difflab.load")
        if sha256 != self.base_sha256:
            raise CheckpointError(
                f"the adapter {self.path} was trained on base weights {short(self.base_sha256)} "
                f"({self.info['base'].get('run', '?')}), but {run or 'this run'} has {short(sha256)}; "
                "use it with the run it was fine-tuned from")

    def delta(self, module: str, weight: Tensor) -> Tensor:
        """B A for ``module`` in the layout of its weight (times alpha / r, without the scale)."""
        a, b = self.state[f"{module}.lora_A.weight"].double(), self.state[f"{module}.lora_B.weight"].double()
        kind = self.info["modules"][module]
        if kind == "conv":  # A [r, in, k, k], B [out, r, 1, 1]
            d = torch.einsum("or,rikl->oikl", b[:, :, 0, 0], a)
        elif kind == "embedding":  # A [r, num], B [dim, r]; the table is [num, dim]
            d = (b @ a).T
        else:  # linear: A [r, in], B [out, r]
            d = b @ a
        if d.shape != weight.shape:
            raise CheckpointError(f"the adapter {self.path} does not fit {module}: update {tuple(d.shape)}, "
                                  f"weight {tuple(weight.shape)}")
        return d * self.config.scaling


def load_adapter(folder: str | Path) -> Adapter:
    """Read an adapter folder written by ``difflab finetune --method lora``."""
    folder = Path(folder)
    cfg_path = folder / ADAPTER_CONFIG
    if not cfg_path.is_file():
        hint = (" (it is a run folder: sample it directly, or merge adapters into it)"
                if (folder / "model.safetensors").is_file() else "")
        raise CheckpointError(f"{folder} has no {ADAPTER_CONFIG}: not a LoRA adapter folder written by "
                              f"`difflab finetune --method lora`{hint}")
    try:
        info = json.loads(cfg_path.read_text())
    except ValueError as err:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {err}") from err
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_path} is not a {FORMAT} adapter config")
    if not isinstance(info.get("modules"), dict) or not isinstance(info.get("base"), dict):
        raise CheckpointError(f"{cfg_path} lacks its modules or base run; write it again with "
                              "difflab finetune")
    return Adapter(folder, info, load_weights(folder / ADAPTER_WEIGHTS))


def as_adapters(lora: Any, scales: Any = None) -> list[tuple[Adapter, float]]:
    """``lora``: a folder, an :class:`Adapter`, or a list of them (or of (adapter, scale) pairs);
    ``scales``: one number for all, or one per adapter (default 1)."""
    items = list(lora) if isinstance(lora, list | tuple) else [lora]
    if scales is None or isinstance(scales, int | float):
        scales = [1.0 if scales is None else float(scales)] * len(items)
    scales = [float(s) for s in scales]
    if len(scales) != len(items):
        raise ValueError(f"give one LoRA scale for all adapters or one per adapter: {len(items)} adapters, "
                         f"{len(scales)} scales")
    out = []
    for item, scale in zip(items, scales, strict=True):
        if isinstance(item, tuple):
            item, scale = item[0], float(item[1])
        out.append((item if isinstance(item, Adapter) else load_adapter(item), scale))
    return out


@torch.no_grad()
def merge(net: nn.Module, adapters: Sequence[tuple[Adapter, float]]) -> nn.Module:
    """A copy of ``net`` with every adapter merged in at its scale: W + sum_i s_i (alpha_i / r_i)
    B_i A_i (summed in float64, added once). An adapter at scale 0 changes nothing, bit for bit.
    ``net`` is left as it was."""
    import copy

    merged = copy.deepcopy(net)
    params = dict(merged.named_parameters())
    updates: dict[str, Tensor] = {}
    for adapter, scale in adapters:
        if scale == 0:
            continue
        for module in adapter.modules:
            weight = params.get(f"{module}.weight")
            if weight is None:
                raise CheckpointError(f"the adapter {adapter.path} adapts {module}, which this network lacks")
            d = adapter.delta(module, weight) * scale
            updates[module] = updates[module] + d if module in updates else d
    for module, d in updates.items():
        weight = params[f"{module}.weight"]
        weight.copy_((weight.double() + d).to(weight.dtype))
    return merged


def merge_adapters(net: nn.Module, adapters: Sequence[tuple[Adapter, float]], base_sha256: str | None,
                   run: str | Path | None = None) -> nn.Module:
    """:func:`merge` after checking that every adapter was trained on these base weights."""
    for adapter, _ in adapters:
        adapter.check_base(base_sha256, run)
    return merge(net, adapters)


def module_kinds(net: nn.Module, modules: Sequence[str]) -> dict[str, str]:
    """``{name: "linear" | "conv" | "embedding"}``: how each adapted layer's update is laid out."""
    mods = dict(net.named_modules())
    kinds = {nn.Conv2d: "conv", nn.Linear: "linear", nn.Embedding: "embedding"}
    return {name: kinds[type(mods[name])] for name in modules}


def adapter_info(lora: LoRAConfig, net: nn.Module, modules: Sequence[str], base_run: str | Path,
                 base_weights: str, base_sha256: str, data: dict[str, Any]) -> dict[str, Any]:
    """The contents of ``adapter.json`` for an adapter of ``net`` (the base network, before
    :func:`inject`)."""
    try:
        from importlib.metadata import version

        peft_version: str | None = version("peft")
    except Exception:  # informational only
        peft_version = None
    return {
        "format": FORMAT, "method": "lora", "lora": lora.to_dict(), "modules": module_kinds(net, modules),
        "parameters": adapter_parameters(lora.rank, net, modules),
        "base": {"run": str(Path(base_run).resolve()), "weights": base_weights, "sha256": base_sha256},
        "net": net.config.to_dict(), "data": data, "peft": peft_version,
    }


def adapter_parameters(rank: int, net: nn.Module, modules: Sequence[str]) -> int:
    """How many numbers the adapter holds: r * (in + out) * kernel area (A) + out * r (B)."""
    mods = dict(net.named_modules())
    total = 0
    for name in modules:
        m = mods[name]
        if isinstance(m, nn.Conv2d):
            total += rank * m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels * rank
        elif isinstance(m, nn.Linear):
            total += rank * (m.in_features + m.out_features)
        elif isinstance(m, nn.Embedding):
            total += rank * (m.num_embeddings + m.embedding_dim)
    return total
