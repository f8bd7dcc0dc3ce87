"""On-policy scoring: π̃ (mean per-token log-probability of an answer under the bare query) and W.

Owns the formulas only; the engine computes the per-token log-probabilities by prefill.
    π̃(y|x) = log π(y|x) / |y|
    W = sigmoid(-(α·π̃(y+|x) + (1-α)·π̃(y-|x)))
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def mean_logprob(token_logprobs: Sequence[float]) -> float:
    """π̃: the mean of the per-token log-probabilities (NaN for an empty answer, which is never kept)."""
    if not token_logprobs:
        return math.nan
    return math.fsum(token_logprobs) / len(token_logprobs)


def sigmoid(x: float) -> float:
    # Two branches keep exp() from overflowing for large |x|.
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def weight(pi_chosen: float, pi_rejected: float, alpha: float) -> float:
    """W: larger when the pair is less likely under the current policy (less on-policy)."""
    return sigmoid(-(alpha * pi_chosen + (1.0 - alpha) * pi_rejected))
