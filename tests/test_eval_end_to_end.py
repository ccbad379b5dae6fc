"""``difflab eval`` end to end with the default metric set on the offline extractor: FD-EffNetLite0,
KID and precision/recall (Kynkaanniemi et al. 2019), on a tiny run trained here."""

from __future__ import annotations

import json
import math

import pytest
import torch

from difflab.cli import main
from difflab.data import DataConfig, load_dataset, save_images
from difflab.pipeline import load
from difflab.train import TrainConfig, train

METRICS = "fd-effnet,kid,precision-recall"
LABELS = {"FD-EffNetLite0", "KID-EffNetLite0", "precision-EffNetLite0", "recall-EffNetLite0"}


@pytest.fixture(autouse=True)
def _one_thread_private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFLAB_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = TrainConfig(data=DataConfig(source="mnist", limit=32), T=50, batch_size=8, steps=2,
                      checkpoint_every=2, sample_every=100, sample_n=2)
    train(cfg, out, progress=False, log=lambda s: None)
    return out


def run_eval(run, path, capsys, *extra: str) -> tuple[dict, str]:
    code = main(["eval", str(run), "--n", "10", "--metrics", METRICS, "--steps", "2", "--real-n", "12",
                 "--device", "cpu", "--no-progress", "--json", str(path), *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    table = captured.out
    return {s["metric"]: s for s in json.loads(path.read_text())["scores"]}, table


def test_eval_scores_fd_kid_and_precision_recall_on_effnet(tiny_run, tmp_path, capsys):
    first, table = run_eval(tiny_run, tmp_path / "a.json", capsys)
    assert set(first) == LABELS
    for label in LABELS:
        assert f"| {label} |" in table
        assert math.isfinite(first[label]["value"]), first[label]
    fd, kid = first["FD-EffNetLite0"], first["KID-EffNetLite0"]
    assert fd["value"] > 0 and "vs 12 real" in fd["note"]
    assert kid["spread"] is not None and math.isfinite(kid["spread"]) and kid["spread"] > 0
    assert "subsets of 10" in kid["note"]
    # precision: the share of the 10 generated images inside the real manifold; recall: of the 12 real
    for label, n in (("precision-EffNetLite0", 10), ("recall-EffNetLite0", 12)):
        value = first[label]["value"]
        assert 0 <= value <= 1 and value * n == pytest.approx(round(value * n), abs=1e-9), (label, value)
    # the same seed again, the real features recomputed: the same numbers
    second, _ = run_eval(tiny_run, tmp_path / "b.json", capsys, "--no-cache")
    assert {k: (v["value"], v["spread"]) for k, v in second.items()} == \
        {k: (v["value"], v["spread"]) for k, v in first.items()}
    other, _ = run_eval(tiny_run, tmp_path / "c.json", capsys, "--seed", "5")
    assert other["FD-EffNetLite0"]["value"] != fd["value"]


def test_eval_against_its_own_samples(tiny_run, tmp_path, capsys):
    """The 10 samples eval draws (seeds 0..9) saved as PNGs and passed as the real data: the two
    sides are the same images, so FD ~ 0, KID ~ 0 and precision = recall = 1. With 10 real digits
    added to that folder every sample is still inside the real manifold (precision 1) while the
    digits lie outside the samples' manifold (recall 10/20): the two numbers cannot be swapped."""
    pipe = load(tiny_run, "cpu")
    own = pipe.sample(10, sampler=pipe.config.sample_sampler, steps=2, seed=0)
    digits, _ = load_dataset(DataConfig(source="mnist")).batch(torch.arange(0, 5000, 500))
    save_images(own, tmp_path / "own")
    save_images(torch.cat([own, digits]), tmp_path / "mixed")
    same, _ = run_eval(tiny_run, tmp_path / "own.json", capsys, "--data", f"folder:{tmp_path / 'own'}")
    vs_data, _ = run_eval(tiny_run, tmp_path / "data.json", capsys)
    assert abs(same["FD-EffNetLite0"]["value"]) < 1e-3 * vs_data["FD-EffNetLite0"]["value"]
    assert abs(same["KID-EffNetLite0"]["value"]) < 0.05 * vs_data["KID-EffNetLite0"]["value"]
    assert same["precision-EffNetLite0"]["value"] == same["recall-EffNetLite0"]["value"] == 1.0
    mixed, _ = run_eval(tiny_run, tmp_path / "mixed.json", capsys, "--data", f"folder:{tmp_path / 'mixed'}",
                        "--real-n", "20")
    assert mixed["precision-EffNetLite0"]["value"] == 1.0
    assert mixed["recall-EffNetLite0"]["value"] == 0.5
