"""What the benchmark scripts share: the machine and its load, the diffusers-course recipe as a
difflab config, and the goal check that makes a script exit non-zero.

The load is recorded because this machine is shared: a second busy process slows PyTorch several
fold. Every script prints :func:`machine_report` at its start and :func:`load_report` at its end
(load averages, and the processes that used CPU in the second before, by their own share of a
core), so the numbers can be copied to benchmarks/README.md with the conditions they ran under.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent

# ---- the diffusers-course recipe ---------------------------------------------------------------
#: The course's MNIST UNet2DModel (seed 003's MNIST network): 1,707,009 parameters.
RECIPE_BLOCKS = (32, 64, 64)
RECIPE_DOWN = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
RECIPE_UP = ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")
#: The course's training recipe, as TrainConfig fields: eps target with an unweighted MSE, the
#: cosine (squaredcos_cap_v2) schedule with 1000 steps, AdamW lr 4e-4 (torch's default weight
#: decay 0.01), batch 128, and none of EMA, warm-up, LR decay or gradient clipping.
RECIPE_FIELDS: dict[str, Any] = {
    "net_kind": "diffusers-unet", "schedule": "cosine", "T": 1000, "prediction": "eps",
    "weighting": "none", "loss": "mse", "optimizer": "adamw", "lr": 4e-4, "weight_decay": 0.01,
    "batch_size": 128, "ema_decay": 0.0, "warmup_steps": 1, "lr_schedule": "constant",
    "grad_clip": 0.0,
}
RECIPE_DESC = ("diffusers-course recipe: UNet2DModel (32, 64, 64) 1.71M, eps target, unweighted MSE, "
               "cosine schedule, AdamW 4e-4, batch 128, no EMA")


def recipe_net_config(image_size: int) -> Any:
    """The course's UNet2DModel as a difflab ``diffusers-unet`` config."""
    from difflab.nets import DiffusersUNetConfig

    return DiffusersUNetConfig(sample_size=image_size, in_channels=1, block_out_channels=RECIPE_BLOCKS,
                               layers_per_block=2, down_block_types=RECIPE_DOWN, up_block_types=RECIPE_UP)


def recipe_config(image_size: int = 28, **overrides: Any) -> Any:
    """The diffusers-course recipe run by difflab's loop on the embedded MNIST at ``image_size``.

    Written out here rather than taken from ``preset_config("seed003")``: the presets follow the
    study notes and change with them (seed003 is now the notes' CIFAR program: UNet2DModel
    (64, 64, 128), batch 32); the benchmarks' reference stays the course's MNIST recipe."""
    from difflab.data import parse_data_spec
    from difflab.train import TrainConfig

    fields = {**RECIPE_FIELDS, "data": parse_data_spec("mnist", image_size=image_size),
              "net": recipe_net_config(image_size), **overrides}
    return TrainConfig(**fields)


# ---- the machine ---------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def git_state() -> str:
    """Which difflab ran: the commit, and whether src/ differs from it (others edit the same
    working tree), or the snapshot on PYTHONPATH (``git archive HEAD src`` with the commit in a
    COMMIT file beside src/; see benchmarks/README.md)."""
    import difflab

    src = Path(difflab.__file__).resolve().parent.parent
    if src != ROOT / "src":
        commit = src.parent / "COMMIT"
        what = commit.read_text().strip() if commit.is_file() else "unknown commit"
        return f"difflab from {src} (snapshot of commit {what})"
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "commit unknown"
    return f"commit {head}" + (" + uncommitted changes in src/" if dirty else "")


def machine_line(device: torch.device) -> str:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return (f"{where} ({device.type}, {os.cpu_count()} cores), {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}, {git_state()}")


def load_averages() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load averages unknown"
    return f"load averages {one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"


def _cpu_ticks() -> dict[int, tuple[int, str]]:
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1: text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        out[int(stat.parent.name)] = (int(fields[11]) + int(fields[12]), name)
    return out


def busy_processes(window: float = 1.0, min_share: float = 0.1) -> str:
    """Other processes that used at least ``min_share`` of a core over the last ``window`` s (Linux
    /proc; '' elsewhere), busiest first, with the start of their command line."""
    if not Path("/proc/self/stat").exists():
        return ""
    before = _cpu_ticks()
    time.sleep(window)
    after = _cpu_ticks()
    hz = os.sysconf("SC_CLK_TCK")
    own = {os.getpid()}
    busy = []
    for pid, (ticks, name) in after.items():
        share = (ticks - before.get(pid, (ticks, ""))[0]) / hz / window
        if pid in own or share < min_share:
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmd = name
        busy.append((share, f"{cmd.strip()[:70] or name} ({share:.0%} of a core)"))
    return "; ".join(text for _, text in sorted(busy, reverse=True)) or "none"


def load_report(when: str) -> str:
    return f"# load {when}: {load_averages()}; other busy processes: {busy_processes()}"


def machine_report(device: torch.device) -> str:
    """The header every script prints: machine, threads, versions, commit, load now."""
    text = f"# machine: {machine_line(device)}\n{load_report('at the start')}"
    print(text, flush=True)
    return text


# ---- goals ---------------------------------------------------------------------------------------
def exit_on_missed(missed: list[str], what: str, enforce: bool = True) -> None:
    """Print the missed goals loudly and exit 1 (``enforce``), or say they were not enforced."""
    if not missed:
        return
    print("\n" + "!" * 100, file=sys.stderr)
    print(f"{what}:" if enforce else f"{what} (not enforced with --quick):", file=sys.stderr)
    for line in missed:
        print(f"  - {line}", file=sys.stderr)
    print("!" * 100, file=sys.stderr)
    if enforce:
        sys.exit(1)
