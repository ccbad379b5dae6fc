"""Pictures: pixel mapping, grids, GIFs, forward strips, progressions and plots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from difflab import NoiseSchedule, q_sample, viz


def test_to_uint8_mapping() -> None:
    x = torch.tensor([-1.0, 1.0, 0.0, -3.0, 7.0, float("nan"), 0.5]).view(1, 1, 1, 7)
    assert viz.to_uint8(x).flatten().tolist() == [0, 255, 128, 0, 255, 0, 191]
    assert viz.to_uint8(torch.zeros(2, 3, 4, 5)).shape == (2, 4, 5, 3)
    assert viz.to_uint8(torch.zeros(3, 4, 5)).shape == (1, 4, 5, 3)
    assert viz.to_uint8(torch.full((1, 1, 2, 2), 9, dtype=torch.uint8)).max() == 9


def test_make_grid_places_tiles() -> None:
    values = torch.arange(7, dtype=torch.uint8) * 30 + 10
    tiles = values.view(7, 1, 1, 1).expand(7, 3, 4, 5)  # tile i is constant 10 + 30 i
    grid = viz.make_grid(tiles, nrow=3, padding=2, pad_value=1)
    assert grid.shape == (3 * 6 + 2, 3 * 7 + 2, 3) and grid.dtype == np.uint8
    for i in range(7):
        top, left = 2 + (i // 3) * 6, 2 + (i % 3) * 7
        assert (grid[top : top + 4, left : left + 5] == 10 + 30 * i).all()
    assert (grid[:2] == 1).all() and (grid[:, :2] == 1).all()
    assert (grid[14:18, 9:14] == 1).all()  # the empty cells after tile 6 are padding
    grey = viz.make_grid(torch.zeros(10, 1, 3, 3), padding=0)
    assert grey.shape == (9, 12, 1)  # default nrow = ceil(sqrt(10)) = 4


def test_save_grid(tmp_path: Path) -> None:
    path = viz.save_grid(torch.ones(4, 1, 6, 6), tmp_path / "sub" / "g.png", nrow=2, scale=3)
    img = Image.open(path)
    assert img.mode == "L" and img.size == (3 * 18, 3 * 18)
    assert np.asarray(img)[6:9, 6:9].min() == 255
    rgb = Image.open(viz.save_grid(torch.zeros(2, 3, 4, 4) - 1, tmp_path / "c.png", padding=0))
    assert rgb.mode == "RGB" and rgb.size == (8, 4) and np.asarray(rgb).max() == 0


def _durations(path: Path) -> list[int]:
    return [frame.info["duration"] for frame in ImageSequence.Iterator(Image.open(path))]


def test_save_gif_frames_and_hold(tmp_path: Path) -> None:
    frames = [torch.full((4, 1, 5, 5), -1 + 0.4 * k) for k in range(6)]  # distinct frames
    path = viz.save_gif(frames, tmp_path / "d.gif", duration_s=0.05, hold_last=1.5)
    gif = Image.open(path)
    assert gif.n_frames == 6 and gif.size == (2 * 7 + 2, 2 * 7 + 2)
    assert _durations(path) == [50] * 5 + [1500]
    gif.seek(5)
    last = np.asarray(gif.convert("L"))
    assert np.array_equal(last, viz.make_grid(frames[-1])[..., 0])
    ready = [np.full((8, 9), k * 40, np.uint8) for k in range(3)]  # uint8 pictures as given
    assert Image.open(viz.save_gif(ready, tmp_path / "u.gif")).size == (9, 8)
    dim = torch.linspace(-0.2, 0.2, 16).view(1, 1, 4, 4)
    gif = Image.open(viz.save_gif([dim], tmp_path / "m.gif", normalize="minmax", padding=0))
    assert np.asarray(gif.convert("L")).min() == 0 and np.asarray(gif.convert("L")).max() == 255
    colour = [torch.rand(2, 3, 4, 4) * 2 - 1 for _ in range(3)]
    assert Image.open(viz.save_gif(colour, tmp_path / "c.gif")).n_frames == 3


def test_forward_strip_columns() -> None:
    schedule = NoiseSchedule.from_name("linear", 200)
    images = torch.rand(3, 1, 8, 8) * 2 - 1
    strip = viz.forward_strip(schedule, images, generator=torch.Generator().manual_seed(0))
    assert strip.shape == (3 * 10 + 2, 5 * 10 + 2, 1)
    clean = viz.to_uint8(images)
    for i in range(3):
        top = 2 + i * 10
        assert np.array_equal(strip[top : top + 8, 2:10], clean[i])  # 0% = the clean image
        assert not np.array_equal(strip[top : top + 8, 42:50], clean[i])
    assert viz.forward_timesteps(200) == [-1, 49, 99, 149, 199]
    noisy = viz.forward_images(schedule, images, (0.5,), torch.Generator().manual_seed(5))
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(5))
    expected = q_sample(schedule, images, torch.full((3,), 99), noise)
    assert torch.allclose(noisy[:, 0], expected)


def test_progression_strip_order_and_labels(tmp_path: Path) -> None:
    snapshots = [(t, torch.full((5, 1, 4, 4), t / 50 - 1)) for t in range(49, -1, -1)]
    strip = viz.progression_strip(snapshots, num_columns=10, max_samples=3, padding=0)
    assert strip.shape == (3 * 4, 10 * 4, 1)
    firsts = strip[0, ::4, 0].astype(int)
    assert firsts[0] == viz.to_uint8(snapshots[0][1])[0, 0, 0, 0]
    assert firsts[-1] == viz.to_uint8(snapshots[-1][1])[0, 0, 0, 0]
    assert (np.diff(firsts) < 0).all()  # in the order given: t = 49 ... 0
    path = viz.save_progression(snapshots, tmp_path / "p.png", num_columns=10, max_samples=2)
    assert Image.open(path).size[0] > 300


def test_save_forward_strip_and_schedules(tmp_path: Path) -> None:
    schedule = NoiseSchedule.from_name("cosine", 100)
    path = viz.save_forward_strip(schedule, torch.zeros(2, 3, 8, 8), tmp_path / "f.png")
    assert Image.open(path).size[0] > 200
    path = viz.plot_schedules(tmp_path / "s.png", T=50, names=("linear", "cosine"))
    assert Image.open(path).size == (1000, 400)


def test_plot_loss(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    records = [{"step": i, "loss": 1.0 / (i + 1), "lr": 1e-4} for i in range(50)]
    records.insert(3, {"event": "checkpoint"})
    log.write_text("\n".join(json.dumps(r) for r in records) + '\n{"step": 51, "lo')
    assert len(viz.read_log(log)) == 51
    assert Image.open(viz.plot_loss(log, tmp_path / "l.png")).size == (1000, 400)
    no_lr = [{"step": i, "loss": 0.5} for i in range(5)]
    assert Image.open(viz.plot_loss(no_lr, tmp_path / "m.png")).size == (600, 400)
    with pytest.raises(ValueError, match="no records"):
        viz.plot_loss([{"step": 1}], tmp_path / "n.png")
    assert np.allclose(viz.ema(np.full(20, 3.0)), 3.0)


def test_imports_stay_light() -> None:
    code = ("import sys, difflab.viz, difflab.data; "
            "print(any(m.split('.')[0] in ('matplotlib', 'sklearn') for m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
