"""The main job (``make demo``): train the default model class-conditionally on the embedded MNIST
for a time budget of ten minutes in all (labels dropped 10% of the time, so the one model also
samples unconditionally), then write a
guided grid with one row per digit, an unconditional grid, a denoising GIF, a progression strip,
the forward process and the loss curve."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from difflab.data import DataConfig

# Training's share of the demo's ten minutes; loading and the pictures take the rest (~20 s here).
TIME_BUDGET_S = 9.5 * 60


def run_demo(out: str | Path, *, steps: int | None = None, time_budget: float | None = TIME_BUDGET_S,
             progress: bool = True, log: Callable[[str], None] = print) -> list[Path]:
    """Train (or finish training) ``out/run`` with the default recipe, conditioned on the digit,
    for ``time_budget`` seconds (or ``steps`` steps), and write the pictures into ``out``.
    Returns the files written."""
    from difflab.pipeline import class_rows, load, write_samples
    from difflab.run_config import TrainConfig
    from difflab.train import train
    from difflab.viz import plot_loss, save_data_forward_strip

    out = Path(out)
    run = out / "run"
    cfg = TrainConfig(cond="class", **({"steps": steps} if steps else {"time_budget": time_budget}))
    train(cfg, run, resume=(run / "config.json").exists(), progress=progress, log=log)
    pipe = load(run, "auto")
    rows = class_rows(pipe, range(pipe.num_classes), 8)
    written = write_samples(pipe, rows.pop("n"), out=out / "classes.png", **rows)
    written += write_samples(pipe, 64, out=out / "samples.png", gif=out / "denoise.gif",
                             progression=out / "progression.png", seed=0)
    written.append(save_data_forward_strip(DataConfig(source="mnist"), out / "forward.png",
                                           schedule=cfg.schedule, T=cfg.T))
    written.append(plot_loss(run / "log.jsonl", out / "loss.png"))
    return [Path(p) for p in written]
