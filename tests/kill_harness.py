"""Kill a tiny training run with SIGKILL at chosen or random points, and check what it leaves.

Shared by ``tests/test_faults.py`` (a handful of kills) and ``benchmarks/soak_kill.py`` (many).
Runs are real child processes, forked from a ``forkserver`` that imported torch and difflab
once, so each start costs a fraction of a second instead of the imports. A child can pause
inside :func:`difflab.io.atomic_write` (its ``before_rename`` seam), after the temporary file is
written and before the rename, optionally truncating that file first (a writer killed half way),
so the parent can kill it exactly there.

The checks after every kill (:func:`check_run_folder`): every file under a real name reads
(each ``step_N.pt`` holds step N, ``model.safetensors``, ``config.json``); once a checkpoint was
written the folder always holds one. After the last resume: the weights equal an uninterrupted
run's bit for bit and no temporary file is left.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

STEPS = 24
TRAIN = dict(net_kind="unet", T=20, batch_size=8, checkpoint_every=4, keep_checkpoints=2, sample_every=1000,
             sample_n=2, sample_steps=2, log_every=2, seed=3)
SHAPE = dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=())
PAUSED = "paused"


def make_data(folder: Path, n: int = 32) -> Path:
    """``n`` seeded 8x8 grey images (a folder loads without any optional package)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def config(data: Path, steps: int = STEPS) -> Any:
    from difflab.data import DataConfig
    from difflab.nets import NetShape
    from difflab.run_config import TrainConfig

    return TrainConfig(data=DataConfig(source="folder", path=str(data)), net_shape=NetShape(**SHAPE),
                       steps=steps, **TRAIN)


def _child(data: str, out: str, resume: bool, pause: tuple[str, int, bool] | None, marks: str,
           steps: int) -> None:
    """One training session; with ``pause = (name, k, truncate)`` it stops for good inside the
    k-th atomic write of a file called ``name`` (truncating the temporary file to half first)."""
    import torch

    import difflab.io as dio
    from difflab.train import train

    torch.set_num_threads(1)
    seen: dict[str, int] = {}

    def before_rename(tmp: Path, path: Path) -> None:
        seen[path.name] = seen.get(path.name, 0) + 1
        Path(marks, f"wrote.{path.name}.{seen[path.name]}").touch()
        if pause is not None and (path.name, seen[path.name]) == pause[:2]:
            if pause[2]:
                with open(tmp, "r+b") as fh:
                    fh.truncate(max(1, tmp.stat().st_size // 2))
            Path(marks, PAUSED).touch()
            time.sleep(3600)

    dio.before_rename = before_rename
    train(config(Path(data), steps), out, resume=resume, progress=False, log=lambda s: None)


_CTX: Any = None


def context() -> Any:
    """A forkserver that imported torch and the training code once."""
    global _CTX
    if _CTX is None:
        _CTX = mp.get_context("forkserver")
        _CTX.set_forkserver_preload(["torch", "torch._dynamo", "difflab.train", "difflab.viz",
                                     "matplotlib.figure", "tests.kill_harness"])
    return _CTX


@dataclass
class Session:
    process: Any
    marks: Path

    def wait_for(self, name: str, timeout: float = 120) -> bool:
        """Wait until the child leaves the mark ``name`` (True) or exits (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (self.marks / name).exists():
                return True
            if not self.process.is_alive():
                return (self.marks / name).exists()
            time.sleep(0.01)
        raise TimeoutError(f"no {name} mark within {timeout} s")

    def kill(self) -> bool:
        """SIGKILL the child; True when it was still running."""
        alive = self.process.is_alive()
        if alive:
            self.process.kill()
        self.process.join()
        return alive and self.process.exitcode == -signal.SIGKILL


def start(data: Path, out: Path, resume: bool, pause: tuple[str, int, bool] | None = None,
          steps: int = STEPS) -> Session:
    marks = out.parent / f".marks-{out.name}-{time.monotonic_ns()}"
    marks.mkdir(parents=True)
    p = context().Process(target=_child, args=(str(data), str(out), resume, pause, str(marks), steps))
    p.start()
    return Session(p, marks)


def run_to_end(data: Path, out: Path, resume: bool, steps: int = STEPS) -> None:
    s = start(data, out, resume, steps=steps)
    s.process.join(300)
    if s.process.exitcode != 0:
        raise RuntimeError(f"training into {out} exited with {s.process.exitcode}")


def check_run_folder(out: Path, had_checkpoint: bool) -> list[str]:
    """What is wrong with a run folder after a kill (empty: nothing)."""
    import json

    from difflab.io import CheckpointError, load_weights
    from difflab.run_config import TrainConfig
    from difflab.train.checkpoint import list_checkpoints, load_checkpoint

    problems = []
    found = list_checkpoints(out / "checkpoints")
    for step, path in found:
        try:
            state = load_checkpoint(path)
            if int(state["step"]) != step:
                problems.append(f"{path.name} holds step {state['step']}")
        except CheckpointError as err:
            problems.append(f"half-written {path.name}: {err}")
    if had_checkpoint and not found:
        problems.append("no checkpoint left after one was written")
    if (out / "model.safetensors").exists():
        try:
            load_weights(out / "model.safetensors")
        except CheckpointError as err:
            problems.append(f"half-written model.safetensors: {err}")
    if (out / "config.json").exists():
        try:
            TrainConfig.from_dict(json.loads((out / "config.json").read_text()))
        except ValueError as err:
            problems.append(f"half-written config.json: {err}")
    return problems


def temp_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*.tmp")]


def same_weights(a: Path, b: Path) -> list[str]:
    """Names of the tensors that differ between two runs' final weights and final checkpoints."""
    import torch

    from difflab.io import load_weights
    from difflab.train.checkpoint import list_checkpoints, load_checkpoint

    wa, wb = load_weights(a / "model.safetensors"), load_weights(b / "model.safetensors")
    diff = [k for k in wa if k not in wb or not torch.equal(wa[k], wb[k])]
    ca = load_checkpoint(list_checkpoints(a / "checkpoints")[-1][1])
    cb = load_checkpoint(list_checkpoints(b / "checkpoints")[-1][1])
    for part in ("model", "ema"):
        sa, sb = ca[part], cb[part]
        if isinstance(sa, dict) and "model" in sa:  # the EMA's state holds its model's
            sa, sb = sa["model"], sb["model"]
        diff += [f"{part}.{k}" for k in sa
                 if isinstance(sa[k], torch.Tensor) and not torch.equal(sa[k], sb[k])]
    if int(ca["step"]) != int(cb["step"]):
        diff.append(f"step {ca['step']} != {cb['step']}")
    return diff
