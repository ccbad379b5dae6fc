"""Evaluation of generated images: Frechet distances, KID, precision/recall, classifier scores
and bits per dimension, each labelled with the network whose features it uses.

Importing this package loads no network and no scipy; weights are read on first use.

- :func:`evaluate` / :func:`fd_paths`: what ``difflab eval`` and ``difflab fd`` run (``evaluate``).
- :func:`get_extractor`: ``effnet-lite0`` (FD-EffNetLite0), ``digit`` (FD-digit), ``inception``
  (FID) feature extractors (``features``, ``effnet``, ``inception``, ``digit_classifier``).
- :class:`FeatureSet`: features and their Gaussian statistics, ``.npz`` files and the real-data
  cache (``stats``).
- :func:`frechet_distance`, :func:`kernel_distance` (KID), :func:`precision_recall`,
  :func:`density_coverage`, :func:`confident_share`, :func:`class_entropy`,
  :func:`inception_score`: pure functions of features or probabilities (``scores``, ``kid``,
  ``precision_recall``).
"""

from difflab.eval.digit_classifier import (
    DigitCNN,
    digit_features,
    digit_logits,
    digit_probs,
    digit_scores,
    fd_digit,
    load_digit_classifier,
)
from difflab.eval.evaluate import METRICS, EvalReport, Score, evaluate, fd_paths
from difflab.eval.features import FEATURES, DigitFeatures, FeatureExtractor, get_extractor
from difflab.eval.kid import kernel_distance, mmd2_unbiased
from difflab.eval.precision_recall import density_coverage, precision_recall
from difflab.eval.scores import (
    DigitScores,
    class_entropy,
    class_histogram,
    confident_share,
    feature_statistics,
    frechet_distance,
    inception_score,
    inception_score_splits,
    mean_confidence,
    summarize_probs,
)
from difflab.eval.stats import FeatureSet, StatsError

__all__ = [
    "FEATURES",
    "METRICS",
    "DigitCNN",
    "DigitFeatures",
    "DigitScores",
    "EvalReport",
    "FeatureExtractor",
    "FeatureSet",
    "Score",
    "StatsError",
    "class_entropy",
    "class_histogram",
    "confident_share",
    "density_coverage",
    "digit_features",
    "digit_logits",
    "digit_probs",
    "digit_scores",
    "evaluate",
    "fd_digit",
    "fd_paths",
    "feature_statistics",
    "frechet_distance",
    "get_extractor",
    "inception_score",
    "inception_score_splits",
    "kernel_distance",
    "load_digit_classifier",
    "mean_confidence",
    "mmd2_unbiased",
    "precision_recall",
    "summarize_probs",
]
