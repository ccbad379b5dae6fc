"""A run's model card: its config, the loss and evaluation curves of ``log.jsonl`` and the latest
evaluation numbers (the file is read at the served run's own path, never a requested one)."""

from __future__ import annotations

from typing import Any

from difflab.serve.models import ServedModel
from difflab.viz import read_log

MAX_POINTS = 500  # loss points sent to the page (evenly thinned)


def model_card(m: ServedModel) -> dict[str, Any]:
    log = m.run / "log.jsonl"
    records = read_log(log) if log.is_file() else []
    loss = [[r["step"], r["loss"]] for r in records if isinstance(r.get("loss"), int | float) and "step" in r]
    if len(loss) > MAX_POINTS:
        stride = -(-len(loss) // MAX_POINTS)
        loss = [*loss[::stride][:-1], loss[-1]] if loss[::stride][-1] != loss[-1] else loss[::stride]
    evals = [{"step": r.get("step"), **r["eval"]} for r in records if isinstance(r.get("eval"), dict)]
    pipe = m.pipe
    return {
        "model": m.name, "kind": m.kind, "latent": pipe.latent is not None,
        "parameters": sum(p.numel() for p in pipe.net.parameters()),
        "weights": pipe.weights_file, "config": pipe.config.to_dict(),
        "loss": loss, "eval": evals, "latest_eval": evals[-1] if evals else None,
        "steps_trained": max((r["step"] for r in records if isinstance(r.get("step"), int)), default=None),
        "has_log": log.is_file(),
    }
