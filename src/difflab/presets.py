"""The study notes' programs as presets of :class:`~difflab.run_config.TrainConfig`.

A preset is the program of one note, as written: its data, network, schedule, loss, optimiser,
batch, length (in epochs, as the notes count) and sampler. ``difflab sample`` on a preset run uses
the note's sampler unless told otherwise. What difflab cannot or does not copy is listed in each
program's ``deviations`` (printed when the preset starts, and tabled in docs/notes.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from difflab.config import check_choice
from difflab.data import DataConfig, DataError
from difflab.run_config import TrainConfig

# What none of the notes use: EMA, LR warm-up and decay, gradient clipping, loss weighting.
_PLAIN: dict[str, Any] = {
    "ema_decay": 0.0, "warmup_steps": 1, "lr_schedule": "constant", "grad_clip": 0.0,
    "prediction": "eps", "weighting": "none", "loss": "mse",
}
_GREY_SOURCES = ("mnist", "fashion-mnist", "digits", "mnist-idx")
_FINAL_GRID_NOTE = ("no sample grid during training unless --sample-every is given (full-length DDPM "
                    "is slow on a CPU); one is drawn at the end")
_BATCHER_NOTE = ("the last batch of an epoch is completed from the next epoch's order instead of "
                 "being short (or dropped): every image is seen once per epoch either way")


@dataclass(frozen=True)
class NoteProgram:
    """One note's program: ``recipe`` holds the TrainConfig fields, ``default_data`` the data the
    note trains on (None: the user must name it), ``deviations`` what difflab does differently."""

    name: str
    note: str
    summary: str
    recipe: dict[str, Any]
    default_data: DataConfig | None
    deviations: tuple[str, ...] = field(default_factory=tuple)
    small: dict[str, Any] = field(default_factory=dict)  # the --small variant's changes
    small_deviations: tuple[str, ...] = field(default_factory=tuple)


def _seed003_net(blocks: tuple[int, ...], attention_levels: int, channels: int) -> Any:
    from difflab.nets import DiffusersUNetConfig

    n = len(blocks)
    down = tuple("AttnDownBlock2D" if i >= n - attention_levels else "DownBlock2D" for i in range(n))
    up = tuple("AttnUpBlock2D" if i < attention_levels else "UpBlock2D" for i in range(n))
    return DiffusersUNetConfig(sample_size=32, in_channels=channels, block_out_channels=blocks,
                               down_block_types=down, up_block_types=up)


_SEED003_DATA_NOTE = ("the note trains on CIFAR-10 (downloaded by torchvision) or an ImageFolder; "
                      "give --data cifar10:PATH (the python batches) or folder:PATH")

# Sec. 2.1's DDPM recipe, shared by the section's two networks (seed003, seed003-full).
_SEED003_RECIPE: dict[str, Any] = {
    "net_kind": "diffusers-unet", "schedule": "cosine", "T": 1000, "optimizer": "adamw", "lr": 4e-4,
    "weight_decay": 0.01, "batch_size": 32, "epochs": 10, "sample_sampler": "ddpm", "sample_steps": 1000,
    "sample_variance": "beta_tilde", "sample_clip": True,
}

PROGRAMS: dict[str, NoteProgram] = {
    "seed000": NoteProgram(
        name="seed000",
        note="000",
        summary="MyUNet + MyDDPM: 200 linear steps (1e-4..0.02), MSE on eps, Adam 1e-3, batch 128, "
        "20 epochs, best-loss model kept, DDPM-200 sampling (beta variance, no clipping)",
        recipe={"net_kind": "myunet", "schedule": "linear", "T": 200, "optimizer": "adam", "lr": 1e-3,
                "batch_size": 128, "epochs": 20, "keep_best": True, "sample_sampler": "ddpm",
                "sample_steps": 200, "sample_variance": "beta", "sample_clip": False},
        default_data=DataConfig(source="fashion-mnist"),
        deviations=(
            "Fashion-MNIST as in the note's fashion=True (--data mnist is its fashion=False; the "
            "embedded MNIST has 5,000 of the 60,000 training digits)",
            _BATCHER_NOTE,
            "the best model is chosen on the epoch's mean loss as in the note and written to "
            "best.safetensors, which sampling uses; model.safetensors keeps the last weights",
        ),
    ),
    "seed003-first": NoteProgram(
        name="seed003-first",
        note="003 sec. 1.3",
        summary="BasicUNet predicting x_0 from corrupt(x, amount) on [0, 1] images, amount ~ U[0, 1), "
        "MSE, Adam 1e-3, batch 128, 3 epochs; the mixing sampler with 40 steps (--steps 5 for the "
        "note's first try)",
        recipe={"net_kind": "basic-unet", "objective": "corrupt", "prediction": "x0", "optimizer": "adam",
                "lr": 1e-3, "batch_size": 128, "epochs": 3, "sample_sampler": "mix", "sample_steps": 40},
        default_data=DataConfig(source="mnist"),
        deviations=(
            "the embedded 5,000 MNIST digits instead of torchvision's 60,000",
            "the note's DataLoader drops the last short batch (drop_last=True); " + _BATCHER_NOTE,
            "amount and the uniform noise are drawn from the run's seeded generator "
            "(the uniform noise as the normal CDF of a Gaussian draw: the same U[0, 1) law)",
        ),
    ),
    "seed003-first-unet": NoteProgram(
        name="seed003-first-unet",
        note="003 sec. 1.5",
        summary="the same corrupt objective with diffusers' UNet2DModel (32, 64, 64; attention in the "
        "last two down blocks), Adam 1e-3, batch 128, 5 epochs; the mixing sampler with 50 steps and "
        "the note's factor 1/(n - i + 1)",
        recipe={"net_kind": "diffusers-unet", "objective": "corrupt", "prediction": "x0",
                "optimizer": "adam", "lr": 1e-3, "batch_size": 128, "epochs": 5,
                "sample_sampler": "mix", "sample_steps": 50, "sample_mix_offset": 1},
        default_data=DataConfig(source="mnist"),
        deviations=("the embedded 5,000 MNIST digits instead of torchvision's 60,000", _BATCHER_NOTE),
    ),
    "seed003": NoteProgram(
        name="seed003",
        note="003 sec. 2.1",
        summary="DDPM with diffusers' UNet2DModel (64, 64, 128; attention in the last down block), "
        "32x32 images, squaredcos_cap_v2 (cosine) with 1000 steps, MSE on eps, AdamW 4e-4, batch 32, "
        "10 epochs; DDPMScheduler's sampling: 1000 steps, beta-tilde variance, x_0 clipped",
        recipe=_SEED003_RECIPE,
        default_data=None,
        deviations=(
            _SEED003_DATA_NOTE + "; --data mnist trains on MNIST resized to 32x32 (grey)",
            "no random flips, as in sec. 2.1.2 where the flip is commented out (add --flip; the "
            "one-click script of sec. 2.1.8 is the preset seed003-full)",
            _FINAL_GRID_NOTE,
        ),
    ),
    "seed003-full": NoteProgram(
        name="seed003-full",
        note="003 sec. 2.1.8",
        summary="the one-click script: UNet2DModel (64, 128, 128, 256; attention in the last two down "
        "blocks), random flips, otherwise as seed003",
        recipe=_SEED003_RECIPE,
        default_data=None,
        deviations=(
            _SEED003_DATA_NOTE,
            "the script saves a checkpoint every epoch; difflab keeps the last 3 of its periodic "
            "checkpoints (--checkpoint-every)",
            _FINAL_GRID_NOTE,
        ),
    ),
    "seed004": NoteProgram(
        name="seed004",
        note="004",
        summary="SimpleUnet at full width (64..1024 channels, 62.4M parameters), 64x64 images, 300 "
        "linear steps, L1 loss on eps, Adam 1e-3, batch 128, 100 epochs; DDPM-300 sampling "
        "(beta-tilde variance, no clipping)",
        recipe={"net_kind": "simple-unet", "schedule": "linear", "T": 300, "loss": "l1",
                "optimizer": "adam", "lr": 1e-3, "batch_size": 128, "epochs": 100,
                "sample_sampler": "ddpm", "sample_steps": 300, "sample_variance": "beta_tilde",
                "sample_clip": False},
        default_data=DataConfig(source="mnist"),
        deviations=(
            "the note shows no data set, optimiser or length; they are those of the tutorial it "
            "follows (Adam 1e-3, batch 128, 100 epochs), on the embedded MNIST resized to 64x64 "
            "(grey) unless --data names other images (the tutorial: Stanford Cars, RGB)",
            "SimpleUnet's Block is not shown in the note and follows that tutorial",
            _FINAL_GRID_NOTE,
        ),
        small={"width": 0.25, "image_size": 32},
        small_deviations=("--small: a quarter of the width (3.9M parameters) on 32x32 images",),
    ),
}
PRESETS: tuple[str, ...] = tuple(PROGRAMS)


def _preset_data(program: NoteProgram, data: DataConfig | None, small: bool) -> DataConfig:
    if data is None:
        if program.default_data is None:
            raise DataError(f"preset {program.name}: {_SEED003_DATA_NOTE} (or --data mnist for MNIST "
                            "resized to 32x32)")
        data = program.default_data
    if program.name.startswith("seed003") and not program.name.startswith("seed003-first"):
        channels = data.channels or (1 if data.source in _GREY_SOURCES else 3)
        data = data.replace(image_size=data.image_size or 32, channels=channels)
        if program.name == "seed003-full" and not data.flip:
            data = data.replace(flip=True)
    if program.name == "seed004":
        size = program.small["image_size"] if small else 64
        data = data.replace(image_size=data.image_size or size)
    return data


def _preset_net(program: NoteProgram, data: DataConfig, small: bool) -> Any:
    """The network config where the note fixes one that difflab's defaults would not give."""
    channels = data.channels or (1 if data.source in _GREY_SOURCES else 3)
    if program.name == "seed003":
        return _seed003_net((64, 64, 128), 1, channels).replace(sample_size=data.image_size or 32)
    if program.name == "seed003-full":
        return _seed003_net((64, 128, 128, 256), 2, channels).replace(sample_size=data.image_size or 32)
    if program.name == "seed004":
        from difflab.nets import SimpleUnetConfig

        width = program.small["width"] if small else 1.0
        return SimpleUnetConfig(in_channels=channels, width=width, image_size=data.image_size)
    return None


def preset_config(name: str, *, small: bool = False, **overrides: Any) -> TrainConfig:
    """The program of one study note (see :data:`PROGRAMS`); ``overrides`` (any TrainConfig field,
    e.g. ``data=DataConfig(...)`` or ``steps=...``) change it. ``small=True`` is the scaled-down
    variant of a program too large for a CPU (seed004), whose deviations :func:`deviations` lists.
    Giving ``steps`` without ``epochs`` replaces the note's epoch count."""
    check_choice("preset", name, PRESETS)
    program = PROGRAMS[name]
    if small and not program.small:
        raise ValueError(f"preset {name} has no --small variant (only: "
                         f"{', '.join(n for n, p in PROGRAMS.items() if p.small)})")
    data = _preset_data(program, overrides.pop("data", None), small)
    fields: dict[str, Any] = {**_PLAIN, **program.recipe, "data": data, "preset": name}
    net = _preset_net(program, data, small)
    if net is not None:
        fields["net"] = net
    if "net_kind" in overrides:
        fields.pop("net", None)
    if name in ("seed003", "seed003-full", "seed004") and "sample_every" not in overrides:
        fields["sample_every"] = 10**9  # only the final grid: full-length DDPM is slow on a CPU
    if "steps" in overrides and "epochs" not in overrides:
        fields["epochs"] = None
    return TrainConfig(**{**fields, **overrides})


def deviations(name: str, small: bool = False) -> tuple[str, ...]:
    """What the preset does differently from its note, one sentence each."""
    program = PROGRAMS[name]
    return program.deviations + (program.small_deviations if small else ())
