"""The sparsity split of ``kvtp annotate``: which annotated samples go to the SparseKV-QA set.

The authors skip a sample when no frame's keep ratio reaches 0.2 at temperature 2: with
the labels y as frame scores, KVTP's paper-mode allocation (METHOD.md section 2) gives
frame t the keep ratio ``k_t / N`` with ``p = softmax(y / 2)``, ``r_t = 0.2 * T * p_t``,
``k_t = floor(N * min(r_t, 1))`` (N tokens per frame, 169 in the authors' LLaVA-Video
evaluation). :func:`is_sparse` keeps a sample when ``max_t k_t / N >= threshold``.

Since the r_t average to the budget (0.2), some frame always reaches it in exact
arithmetic; it is the whole-token rounding that makes the criterion bite. With the
defaults (threshold = budget = 0.2) it drops exactly the samples whose labels are flat
(uniform, e.g. the all-zero answer of an annotator that found nothing) or so nearly flat
that no frame gets a whole token more than the uniform share. A larger ``threshold`` asks
for more: 0.4 means some frame must get twice the average share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["frame_keep_ratios", "is_sparse"]


def frame_keep_ratios(labels: Sequence[int], *, temperature: float = 2.0, budget: float = 0.2,
                      tokens_per_frame: int = 169) -> list[float]:
    """Each frame's keep ratio ``k_t / N`` under KVTP's paper-mode allocation, with the labels as frame scores.

    ``p = softmax(labels / temperature)``, ``r_t = budget * T * p_t``,
    ``k_t = floor(N * min(r_t, 1))`` (METHOD.md section 2; 1e-9 is added before the floor so
    that float rounding does not cost a token).

    Args:
        labels: T relevance labels (numbers).
        temperature: tau (the authors': 2).
        budget: beta (the authors': 0.2).
        tokens_per_frame: N (the authors' LLaVA-Video evaluation: 13 x 13 = 169).
    """
    if not labels:
        raise ValueError("frame_keep_ratios: `labels` must not be empty")
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"frame_keep_ratios: `temperature` must be > 0; got {temperature!r}")
    if not (isinstance(budget, (int, float)) and 0 < budget <= 1):
        raise ValueError(f"frame_keep_ratios: `budget` must be in (0, 1]; got {budget!r}")
    if isinstance(tokens_per_frame, bool) or not isinstance(tokens_per_frame, int) or tokens_per_frame < 1:
        raise ValueError(f"frame_keep_ratios: `tokens_per_frame` must be an int >= 1; got {tokens_per_frame!r}")
    scaled = [float(y) / temperature for y in labels]
    top = max(scaled)
    weights = [math.exp(s - top) for s in scaled]
    total = sum(weights)
    T, N = len(labels), tokens_per_frame
    return [math.floor(N * min(budget * T * w / total, 1.0) + 1e-9) / N for w in weights]


def is_sparse(labels: Sequence[int], *, threshold: float = 0.2, temperature: float = 2.0, budget: float = 0.2,
              tokens_per_frame: int = 169) -> bool:
    """The authors' criterion: keep a sample when some frame's keep ratio reaches ``threshold``.

    ``max_t frame_keep_ratios(labels)[t] >= threshold`` (see the module docstring for what
    the default threshold = budget = 0.2 selects).
    """
    ratios = frame_keep_ratios(labels, temperature=temperature, budget=budget, tokens_per_frame=tokens_per_frame)
    return max(ratios) >= threshold
