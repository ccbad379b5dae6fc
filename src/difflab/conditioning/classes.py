"""Class labels: parse what a user asks for, and the network inputs with their null class."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


def parse_classes(spec: str | int | Sequence[int | str], num_classes: int,
                  names: Sequence[str] = ()) -> list[int]:
    """``"7"``, ``"1,4,7"``, ``"all"``, a class name (``"sneaker"``, any case, ``_``/space alike)
    or a list of these -> label indices, checked against the run's ``num_classes``."""
    if num_classes < 1:
        raise ValueError("this run was not trained with class labels (train it with --cond class)")
    if isinstance(spec, str):
        if spec.strip().lower() == "all":
            return list(range(num_classes))
        items: list[int | str] = [s.strip() for s in spec.split(",") if s.strip()]
    elif isinstance(spec, int):
        items = [spec]
    else:
        items = list(spec)
    if not items:
        raise ValueError("give a class: a number, a name, a comma-separated list or 'all'")
    keyed = {_key(n): i for i, n in enumerate(names)}
    out = []
    for item in items:
        if isinstance(item, str) and not item.lstrip("-").isdigit():
            if _key(item) not in keyed:
                known = ", ".join(names) if names else "none (use numbers)"
                raise ValueError(f"unknown class {item!r}; this run's classes are: {known}")
            out.append(keyed[_key(item)])
            continue
        label = int(item)
        if not 0 <= label < num_classes:
            raise ValueError(f"class {label} is out of range: this run has {num_classes} classes, "
                             f"0..{num_classes - 1}")
        out.append(label)
    return out


def _key(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


@dataclass(frozen=True)
class ClassCondition:
    """A class-conditional network's inputs: label ``num_classes`` is the null class it was
    trained with (label dropout), used for unconditional samples and as the guidance branch."""

    num_classes: int

    def cond(self, labels: Tensor | Sequence[int], device: torch.device | str = "cpu") -> dict[str, Any]:
        labels = torch.as_tensor(labels, dtype=torch.long, device=device)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"class labels must lie in 0..{self.num_classes - 1}")
        return {"class_labels": labels}

    def null(self, batch: int, device: torch.device | str = "cpu") -> dict[str, Any]:
        return {"class_labels": torch.full((batch,), self.num_classes, dtype=torch.long, device=device)}
