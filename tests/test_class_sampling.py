"""Class-conditional runs from the command line and the pipeline: --class forms, guidance, the
trained null class, and one-line errors."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.data import DataConfig
from difflab.guidance import Guidance
from difflab.pipeline import class_rows, load
from difflab.train import TrainConfig, train


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "difflab", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def class_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "cls"
    cfg = TrainConfig(data=DataConfig(source="mnist", limit=64), cond="class", steps=4, batch_size=8,
                      checkpoint_every=4, sample_every=100, sample_n=2, sample_steps=4)
    train(cfg, out, progress=False, log=lambda s: None)
    return out


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "plain"
    cfg = TrainConfig(data=DataConfig(source="mnist", limit=32), net_kind="myunet", T=50, steps=2,
                      batch_size=8, checkpoint_every=2, sample_every=100, sample_n=2, sample_steps=4)
    train(cfg, out, progress=False, log=lambda s: None)
    return out


def test_run_keeps_its_class_names_and_the_null_class_samples_unconditionally(class_run):
    pipe = load(class_run, "cpu")
    assert pipe.class_names == tuple(str(i) for i in range(10))
    unconditional = pipe.sample(3, steps=4, seed=1)
    w0 = pipe.sample(3, steps=4, seed=1, class_labels=[7] * 3, guidance=0.0)
    torch.testing.assert_close(w0, unconditional, rtol=0, atol=0)  # w = 0 is exactly unconditional
    w1 = pipe.sample(3, steps=4, seed=1, class_labels=[7] * 3, guidance=1.0)
    w3 = pipe.sample(3, steps=4, seed=1, class_labels=[7] * 3, guidance=3.0)
    assert not torch.equal(w1, unconditional) and not torch.equal(w1, w3)
    seq = pipe.sample(3, steps=4, seed=1, class_labels=[7] * 3, guidance=Guidance(3.0, batched=False))
    torch.testing.assert_close(seq, w3, rtol=0, atol=1e-5)


def test_class_rows_share_seeds_across_rows(class_run):
    pipe = load(class_run, "cpu")
    rows = class_rows(pipe, [1, 4], 3, seed=5)
    assert rows["seeds"] == [5, 6, 7, 5, 6, 7] and rows["class_labels"] == [1, 1, 1, 4, 4, 4]
    n = rows.pop("n")
    rows.pop("nrow")
    images = pipe.sample(n, steps=4, guidance=0.0, **rows)
    torch.testing.assert_close(images[:3], images[3:], rtol=0, atol=0)  # unguided: the label does not matter


def test_sample_class_all_writes_one_row_per_class(class_run, tmp_path):
    r = run_cli("sample", class_run, "--class", "all", "--n", "3", "--steps", "4",
                "--out", tmp_path / "g.png")
    assert r.returncode == 0, r.stderr
    grid = np.asarray(Image.open(tmp_path / "g.png"))
    assert grid.shape == (10 * 28 + 11 * 2, 3 * 28 + 4 * 2)
    r = run_cli("sample", class_run, "--class", "1,4,7", "--n", "2", "--steps", "4", "--guidance", "2",
                "--guidance-rescale", "0.7", "--guidance-interval", "0.1", "20", "--out", tmp_path / "h.png")
    assert r.returncode == 0, r.stderr
    assert np.asarray(Image.open(tmp_path / "h.png")).shape == (3 * 28 + 4 * 2, 2 * 28 + 3 * 2)


@pytest.mark.parametrize(("args", "message"), [
    (["--class", "12"], "out of range: this run has 10 classes"),
    (["--class", "sneaker"], "unknown class 'sneaker'"),
    (["--guidance", "3"], "--guidance needs a condition"),
    (["--class", "3", "--guidance-rescale", "2"], "must lie in [0, 1]"),
])
def test_class_errors_are_one_line(class_run, tmp_path, args, message):
    r = run_cli("sample", class_run, *args, "--n", "1", "--steps", "2", "--out", tmp_path / "x.png")
    assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_class_on_an_unconditional_run_is_refused(plain_run, tmp_path):
    r = run_cli("sample", plain_run, "--class", "3", "--n", "1", "--out", tmp_path / "x.png")
    assert r.returncode == 2 and "not trained with class labels" in r.stderr


def test_cond_class_needs_labels(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8), i * 40, np.uint8)).save(folder / f"{i}.png")
    r = run_cli("train", "--data", f"folder:{folder}", "--cond", "class", "--steps", "1",
                "--out", tmp_path / "r", "--no-progress")
    assert r.returncode == 1 and "--cond class needs labelled data" in r.stderr


def test_the_label_dropout_rate_matches_cond_drop(tmp_path):
    """The trainer's own loss, with a spy in place of the network: the share of null labels is
    cond_drop (binomial: 0.3 +- 0.01 over 12,800 labels), and kept labels are the data's."""
    from difflab.train.loop import Trainer, prepare_data

    cfg, data = prepare_data(TrainConfig(data=DataConfig(source="mnist", limit=256), cond="class",
                                         cond_drop=0.3, steps=1), lambda s: None)
    trainer = Trainer(cfg, data, tmp_path / "t", torch.device("cpu"), lambda s: None)
    seen = []

    def spy(x, t, class_labels=None):
        seen.append(class_labels.clone())
        return torch.zeros_like(x)

    trainer.model = spy
    for _ in range(200):
        x0, labels = trainer.batcher.next_batch(trainer.data)
        trainer.loss(x0, labels)
        kept = seen[-1] != 10
        assert torch.equal(seen[-1][kept], labels[kept])
    null_share = float((torch.cat(seen) == 10).double().mean())
    assert abs(null_share - 0.3) < 0.015
