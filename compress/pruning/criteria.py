"""Saliency criteria: what removing each weight (or whole unit) costs, by criterion name.

One dispatch for everything that ranks weights: the prune pass, the
:class:`compress.callbacks.Pruning` callback and structured pruning all call
:func:`saliency_scores` / :func:`unit_scores`, so a criterion added to :data:`CRITERIA`
is available to all three (and to ``--method``, whose choices are its keys).

- ``magnitude``: ``|w|`` (Han et al. 2015), data-free.
- ``obd``: Optimal Brain Damage, ``h w^2 / 2`` with ``h`` the Hessian diagonal of the
  loss on calibration data (LeCun et al. 1990); see :mod:`compress.pruning.obd`.
- ``obs``: Optimal Brain Surgeon on each layer's output, ``w^2 / [H^-1]_qq`` with the
  layer Hessian ``H = 2 X X^T``; as a score alone (this table) it is not compensated:
  the prune pass's one-shot and iterative schedules prune with compensation
  (:mod:`compress.pruning.obs`).

Example:

>>> import numpy as np
>>> [s.tolist() for s in saliency_scores(None, [np.array([-3.0, 0.5, 2.0])], "magnitude")]
[[3.0, 0.5, 2.0]]
>>> unit_scores(None, [np.array([[3.0, -1.0], [4.0, 0.0]])], "magnitude")[0].tolist()
[5.0, 1.0]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from compress.errors import CompressError
from compress.pruning.magnitude import magnitude_saliency
from compress.pruning.obd import obd_saliency


@dataclasses.dataclass(frozen=True)
class Criterion:
    """One saliency criterion.

    Args:
        name: the ``method`` value that selects it.
        needs_data: bool. Whether it needs calibration data ``(x, y)``.
        weight_scores: callable ``(model, variables, calibration, estimator, damping,
            seed) -> list of arrays``, one per-weight saliency array per variable
            (higher: more costly to remove).
    """

    name: str
    needs_data: bool
    weight_scores: Callable


def _magnitude(model, variables, calibration, estimator, damping, seed):
    return [magnitude_saliency(np.asarray(v)) for v in variables]


def _obd(model, variables, calibration, estimator, damping, seed):
    x, y = calibration
    return obd_saliency(model, x, y, variables, estimator=estimator, damping=damping,
                        seed=seed)


def _obs(model, variables, calibration, estimator, damping, seed):
    from compress.pruning.obs import obs_saliency

    return obs_saliency(model, variables, calibration[0])


CRITERIA = {c.name: c for c in (Criterion("magnitude", False, _magnitude),
                                Criterion("obd", True, _obd),
                                Criterion("obs", True, _obs))}


def criterion(method: str) -> Criterion:
    """The :class:`Criterion` named ``method``.

    Raises:
        CompressError: for an unknown name.
    """
    if method not in CRITERIA:
        raise CompressError(f"method: must be one of {', '.join(CRITERIA)}, got {method!r}")
    return CRITERIA[method]


def saliency_scores(model, variables, method, calibration=None, estimator="backprop",
                    damping=0.0, seed=0) -> list:
    """Per-weight saliencies, one float64 array per variable, by criterion ``method``.

    Args:
        model: the Keras model holding ``variables`` (OBD runs it).
        variables: list of weight variables (or arrays, for data-free criteria).
        method: str, a key of :data:`CRITERIA` (``"magnitude"``, ``"obd"``).
        calibration: ``(x, y)`` or None, default None; needed by OBD.
        estimator: str, default ``"backprop"``. OBD Hessian-diagonal estimator.
        damping: float, default 0.0. OBD Levenberg-Marquardt damping: ``(h + damping *
            mean(h)) w^2 / 2``.
        seed: int, default 0. Seed of randomized estimators.

    Raises:
        CompressError: an unknown criterion, or one that needs data without it.
    """
    crit = criterion(method)
    if crit.needs_data and calibration is None:
        raise CompressError(f"method '{method}': needs calibration data (x, y)")
    return crit.weight_scores(model, list(variables), calibration, estimator, damping, seed)


def unit_scores(model, kernels, method, calibration=None, estimator="backprop",
                norm: str = "l2", seed=0, unit_axes=None) -> list:
    """Per-output-unit saliencies (the last axis) of each kernel, for removing whole units.

    A unit's score combines its weights' saliencies: the L2 norm for ``magnitude`` with
    ``norm="l2"`` (the unit's weight norm), otherwise their sum (the L1 norm for
    ``magnitude``, the summed predicted loss increase for OBD).

    Args:
        model, kernels, method, calibration, estimator, seed: as in
            :func:`saliency_scores` (``kernels`` are the variables).
        norm: str, default ``"l2"``; ``"l1"`` (``"bn"`` counts as ``"l1"`` here: the
            BatchNorm scale is applied by structured pruning, which knows the graph).
        unit_axes: list of int or None. Each kernel's axis of output units (default -1;
            -2 for a transposed convolution).
    """
    scores = saliency_scores(model, kernels, method, calibration, estimator, seed=seed)
    out = []
    for s, axis in zip(scores, unit_axes or [-1] * len(scores)):
        s = np.moveaxis(np.asarray(s, dtype="float64"), axis, -1)
        per_unit = s.reshape(-1, s.shape[-1])
        out.append(np.sqrt((per_unit ** 2).sum(axis=0)) if method == "magnitude"
                   and norm == "l2" else per_unit.sum(axis=0))
    return out
