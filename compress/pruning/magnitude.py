"""Magnitude saliency: the absolute value of each weight (Han et al. 2015).

Example:

>>> import numpy as np
>>> magnitude_saliency(np.array([-3.0, 0.5, 2.0]))
array([3. , 0.5, 2. ])
>>> han_threshold_mask(np.array([-3.0, 0.1, 2.0, -0.2]), quality=0.5)
array([1., 0., 1., 0.], dtype=float32)
"""

from __future__ import annotations

import numpy as np


def magnitude_saliency(weights) -> np.ndarray:
    """``|w|``: the cost of removing a weight under the magnitude criterion."""
    return np.abs(np.asarray(weights, dtype="float64"))


def han_threshold_mask(weights, quality: float) -> np.ndarray:
    """Han et al.'s per-layer rule: keep weights with ``|w| > quality * std(w)``.

    Args:
        weights: the layer's weight array.
        quality: float, the multiple of the standard deviation used as the threshold.
    """
    w = np.asarray(weights, dtype="float64")
    return (np.abs(w) > quality * w.std()).astype("float32")

