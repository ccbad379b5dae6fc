"""Statistics files, the real-data cache, ``difflab fd``, ``difflab eval`` and ``--eval-every``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from difflab.cli import main
from difflab.data import DataConfig, save_images
from difflab.eval.evaluate import evaluate, fd_paths, parse_metrics
from difflab.eval.scores import frechet_distance
from difflab.eval.stats import FeatureSet, StatsError, cached_features
from difflab.train import TrainConfig, train


class CountingExtractor:
    """A stand-in extractor: mean and std of each channel, counting the images it sees."""

    name, label, dim = "toy", "FD-toy", 2

    def __init__(self, key: str = "v1") -> None:
        self.key, self.seen = key, 0

    def cache_key(self) -> str:
        return self.key

    def features(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        self.seen += len(images)
        flat = images.flatten(1)
        return torch.stack([flat.mean(1), flat.std(1)], 1)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFLAB_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def digit_folders(tmp_path_factory):
    from difflab.data import load_dataset

    data = load_dataset(DataConfig(source="mnist"))
    root = tmp_path_factory.mktemp("folders")
    x, _ = data.batch(torch.arange(0, 5000, 25))  # 200 digits, every class
    y, _ = data.batch(torch.arange(7, 5000, 25))
    save_images(x, root / "a")
    save_images(y, root / "b")
    save_images(torch.rand(200, 1, 28, 28) * 2 - 1, root / "noise")
    return root


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = TrainConfig(data=DataConfig(source="mnist", limit=32), T=50, batch_size=8, steps=4,
                      checkpoint_every=4, sample_every=100, sample_n=4, eval_every=2, eval_n=6, eval_steps=3)
    train(cfg, out, progress=False, log=lambda s: None)
    return out


def test_feature_set_round_trip_and_pytorch_fid_files(tmp_path):
    fs = FeatureSet.from_features(torch.randn(50, 3), "FD-toy")
    loaded = FeatureSet.load(fs.save(tmp_path / "s.npz"), "FD-toy")
    np.testing.assert_array_equal(loaded.features, fs.features)
    np.testing.assert_allclose(loaded.mu, fs.mu)
    assert (loaded.n, loaded.label) == (50, "FD-toy")
    np.savez(tmp_path / "fid.npz", mu=fs.mu, sigma=fs.sigma)  # what pytorch-fid writes
    only_stats = FeatureSet.load(tmp_path / "fid.npz")
    np.testing.assert_allclose(only_stats.sigma, fs.sigma)
    with pytest.raises(StatsError, match="per-image features"):
        only_stats.need_features("KID")
    with pytest.raises(StatsError, match="not FD-other"):
        FeatureSet.load(tmp_path / "s.npz", "FD-other")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(StatsError, match="--save-stats"):
        FeatureSet.load(tmp_path / "bad.npz")


def test_cache_reuses_and_recomputes_when_anything_changes():
    images = torch.rand(40, 1, 8, 8) * 2 - 1
    ex = CountingExtractor()
    first = cached_features(images, ex, name="toy")
    again = cached_features(images, ex, name="toy")
    assert ex.seen == 40
    np.testing.assert_array_equal(first.features, again.features)
    cached_features(images[:39], ex, name="toy")  # other images
    assert ex.seen == 79
    changed = images.clone()
    changed[0, 0, 0, 0] = 0.5
    cached_features(changed, ex, name="toy")  # one pixel differs
    assert ex.seen == 119
    cached_features(images, CountingExtractor("v2"), name="toy")  # other weights/preprocessing
    other = CountingExtractor("v2")
    cached_features(images, other, name="toy")
    assert other.seen == 0


def test_fd_folders_with_the_digit_classifier(digit_folders, tmp_path):
    same = fd_paths(digit_folders / "a", digit_folders / "a", features="digit", device="cpu")
    real = fd_paths(digit_folders / "a", digit_folders / "b", features="digit", device="cpu")
    noise = fd_paths(digit_folders / "a", digit_folders / "noise", features="digit", device="cpu")
    assert same["label"] == "FD-digit" and abs(same["value"]) < 1e-6
    assert 0 < real["value"] < noise["value"] / 10
    stats = fd_paths(digit_folders / "b", features="digit", device="cpu", save_stats=tmp_path / "b.npz")
    assert stats["n_a"] == 200
    via_file = fd_paths(digit_folders / "a", tmp_path / "b.npz", features="digit", device="cpu")
    assert via_file["value"] == pytest.approx(real["value"], rel=1e-9)


def test_fd_command_prints_and_writes_json(digit_folders, tmp_path, capsys):
    code = main(["fd", str(digit_folders / "a"), str(digit_folders / "b"), "--features", "digit",
                 "--device", "cpu", "--json", str(tmp_path / "fd.json")])
    assert code == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "fd.json").read_text())
    assert printed.startswith("FD-digit: ") and f"{result['value']:.4f}" in printed
    assert result["n_a"] == result["n_b"] == 200


@pytest.mark.parametrize("case", ["missing", "one-image", "unreadable", "one-path"])
def test_fd_command_errors_are_one_line(case, digit_folders, tmp_path, capsys):
    folder = tmp_path / "x"
    folder.mkdir()
    if case == "one-image":
        save_images(torch.zeros(1, 1, 28, 28), folder)
    if case == "unreadable":
        (folder / "a.png").write_bytes(b"garbage")
        (folder / "b.png").write_bytes(b"garbage")
    args = {"missing": [str(tmp_path / "nope"), str(digit_folders / "a")],
            "one-image": [str(folder), str(digit_folders / "a")],
            "unreadable": [str(folder), str(digit_folders / "a")],
            "one-path": [str(digit_folders / "a")]}[case]
    assert main(["fd", *args, "--features", "digit", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("difflab: error:") and "\n" not in err
    expected = {"missing": "does not exist", "one-image": "at least 2", "unreadable": "could be read",
                "one-path": "--save-stats"}[case]
    assert expected in err


def test_frechet_distance_of_gaussian_features_matches_the_closed_form():
    g = torch.Generator().manual_seed(0)
    a = FeatureSet.from_features(torch.randn(200_000, 2, generator=g, dtype=torch.float64), "FD-toy")
    b = FeatureSet.from_features(torch.randn(200_000, 2, generator=g, dtype=torch.float64)
                                 * torch.tensor([2.0, 0.5], dtype=torch.float64) + 1, "FD-toy")
    closed = 2 * 1.0 + (2 - 1) ** 2 + (0.5 - 1) ** 2  # |dmu|^2 + sum (s_a - s_b)^2 for diagonal
    assert frechet_distance(a.mu, a.sigma, b.mu, b.sigma) == pytest.approx(closed, rel=0.01)


def test_eval_is_reproducible_and_labels_its_numbers(tiny_run):
    kwargs = {"n": 8, "metrics": "fd-digit,digit,bpd", "steps": 3, "device": "cpu", "progress": False,
              "bpd_n": 4, "bpd_timesteps": 5, "log": lambda s: None}
    first = evaluate(tiny_run, **kwargs)
    second = evaluate(tiny_run, **kwargs)
    values = {s.metric: s.value for s in first.scores}
    assert set(values) == {"FD-digit", "confident-digit", "class-entropy-digit", "IS-digit", "bpd"}
    assert values == {s.metric: s.value for s in second.scores}
    assert values["bpd"] > 0 and values["FD-digit"] > 0
    third = evaluate(tiny_run, **{**kwargs, "seed": 1})
    assert {s.metric: s.value for s in third.scores}["FD-digit"] != values["FD-digit"]
    assert "| FD-digit |" in first.table()


def test_eval_command_writes_json_and_rejects_bad_metrics(tiny_run, tmp_path, capsys):
    code = main(["eval", str(tiny_run), "--n", "6", "--metrics", "digit", "--steps", "2", "--device", "cpu",
                 "--no-progress", "--json", str(tmp_path / "e.json")])
    assert code == 0
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["n"] == 6 and report["scores"][0]["metric"] == "confident-digit"
    assert main(["eval", str(tiny_run), "--metrics", "fid"]) == 2
    assert "fd-effnet" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no metrics"):
        parse_metrics(" , ")


def test_eval_every_logs_and_plots(tiny_run):
    records = [json.loads(line) for line in (tiny_run / "log.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert set(evals[0]["eval"]) == {"FD-digit", "confident-digit"}
    assert (tiny_run / "eval.png").stat().st_size > 1000


def test_class_conditional_runs_report_accuracy_against_the_requested_class(tmp_path, monkeypatch):
    from difflab.eval.features import DigitFeatures

    out = tmp_path / "cond"
    cfg = TrainConfig(data=DataConfig(source="mnist", limit=40), T=20, batch_size=8, steps=2,
                      cond="class", checkpoint_every=2, sample_every=100, sample_n=2, sample_steps=5)
    train(cfg, out, progress=False, log=lambda s: None)

    def fake_probs(self, images, batch_size=512):  # classes 0..9 requested in turn; say 0 for all
        return torch.nn.functional.one_hot(torch.zeros(len(images), dtype=torch.long), 10).float()

    monkeypatch.setattr(DigitFeatures, "probs", fake_probs)
    report = evaluate(out, n=20, metrics="digit", steps=2, device="cpu", progress=False, log=lambda s: None)
    scores = {s.metric: s.value for s in report.scores}
    assert scores["class-accuracy-digit"] == pytest.approx(0.1)  # only the class-0 requests agree
    assert scores["confident-digit"] == 1.0 and scores["class-entropy-digit"] == 0.0
