"""How far an artifact's outputs are from its float model's: checks that can fail.

Pure NumPy, shared by :mod:`compress.runtime` (artifacts in their runtimes),
:mod:`compress.report` (label-free fidelity to the original model) and the passes:
``max_abs_diff``, ``rel_l2_error`` and ``sqnr_db`` for any output, ``top1_agreement``
only where argmax is the answer (a classifier with more than one unit: for one unit it
agrees whatever the values), and :func:`agreement_summary`, the verdict against a
threshold.

Example:

>>> import numpy as np
>>> expected = np.array([[0.2, 0.8], [0.6, 0.4]])
>>> sorted(comparison(expected + 0.01, expected, classifier=True))
['max_abs_diff', 'rel_l2_error', 'sqnr_db', 'top1_agreement']
"""

from __future__ import annotations

import numpy as np


def named_outputs(value, names: list | None = None) -> dict:
    """Outputs given as one array, a list in output order or a dict, as ``{name: array}``.

    With ``names`` (the model's output names, in order), a dict keyed by them is taken by
    name and anything else in order (an artifact's ``output_0``, ``Identity:0``...).

    >>> list(named_outputs([np.zeros(1), np.ones(1)], ["cls", "score"]))
    ['cls', 'score']
    """
    if isinstance(value, dict):
        if names is None or not all(n in value for n in names):
            values = list(value.values())
            names = names if names is not None and len(names) == len(values) else list(value)
            return dict(zip(names, values))
        return {n: value[n] for n in names}
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if names is None or len(names) != len(values):
        names = [f"output_{i}" for i in range(len(values))] if len(values) > 1 else ["output"]
    return dict(zip(names, values))


def output_comparison(got, expected, classifier, names: list | None = None) -> dict:
    """:func:`comparison` of every output of a model with several: ``outputs`` holds each
    output's (with ``max_abs_output``, its scale), and the top level the worst of them.

    ``classifier`` is a bool, or a dict ``{output name: bool}`` in output order (the
    task's), whose names then name outputs given as a list; a dict that names other
    outputs is an error, not a comparison without top-1 agreement.

    >>> c = output_comparison({"a": np.array([[1.0, 0.0]]), "b": np.array([[2.0]])},
    ...                       {"a": np.array([[0.9, 0.1]]), "b": np.array([[2.0]])},
    ...                       {"a": True, "b": False})
    >>> sorted(c["outputs"]), c["top1_agreement"], c["outputs"]["b"]["max_abs_diff"]
    (['a', 'b'], 1.0, 0.0)
    """
    if names is None and isinstance(classifier, dict) and not isinstance(expected, dict):
        names = list(classifier)
    expected = named_outputs(expected, names)
    got = named_outputs(got, list(expected))
    if isinstance(classifier, dict) and set(classifier) != set(expected):
        # a top-1 check keyed by names no output has would silently never run
        raise ValueError(f"the task names outputs {sorted(classifier)}, the outputs compared "
                         f"are {sorted(expected)}")
    per = {}
    for name, want in expected.items():
        is_cls = classifier.get(name, False) if isinstance(classifier, dict) else classifier
        want = np.asarray(want)
        have = np.asarray(got[name])
        if have.shape != want.shape:
            from compress.errors import CompressError

            raise CompressError(f"output '{name}': shape {have.shape} differs from Keras "
                                f"{want.shape}")
        scale = np.abs(want.astype(np.float64))
        per[name] = {**comparison(have, want, is_cls),
                     "max_abs_output": float(scale.max()) if scale.size else 0.0}
    out = {"max_abs_diff": max(c["max_abs_diff"] for c in per.values()),
           "rel_l2_error": max(c["rel_l2_error"] for c in per.values()),
           "sqnr_db": min(c["sqnr_db"] for c in per.values())}
    top1 = [c["top1_agreement"] for c in per.values() if "top1_agreement" in c]
    if top1:
        out["top1_agreement"] = min(top1)
    out["outputs"] = per
    return out


def comparison(got: np.ndarray, expected: np.ndarray, classifier: bool) -> dict:
    """How far ``got`` (an artifact's outputs) is from ``expected`` (its float model's).

    Every check here can fail: ``max_abs_diff``, the relative L2 error
    ``||got - expected|| / ||expected||`` and the SQNR ``-20 log10`` of it in dB (for any
    output), and ``top1_agreement`` only for a classifier with more than one output unit:
    for one unit, or a regression, argmax agrees whatever the values.

    Example:

    >>> c = comparison(np.array([[1.1], [2.0]]), np.array([[1.0], [2.0]]), classifier=False)
    >>> round(c["rel_l2_error"], 4), round(c["sqnr_db"], 1), "top1_agreement" in c
    (0.0447, 27.0, False)
    """
    if isinstance(expected, (dict, list, tuple)) or isinstance(got, dict) or \
            isinstance(classifier, dict):  # several outputs: each compared on its own
        return output_comparison(got, expected, classifier)
    out = {"max_abs_diff": max_abs_diff(got, expected),
           "rel_l2_error": rel_l2_error(got, expected),
           "sqnr_db": sqnr_db(got, expected)}
    if classifier and np.asarray(expected).ndim >= 2 and np.asarray(expected).shape[-1] > 1:
        out["top1_agreement"] = top1_agreement(got, expected)
        flips, ties = near_ties(got, expected)
        if flips:
            out["top1_flips"] = flips
            if out["sqnr_db"] >= MIN_SQNR_DB:  # else the artifact's error makes all "ties"
                out["near_ties"] = ties
    if constant(expected):
        out["constant_reference"] = True
    return out


def near_ties(got: np.ndarray, expected: np.ndarray) -> tuple[int, int]:
    """``(flips, ties)``: rows (positions) whose top-1 class differs, and how many of
    those the float model barely decided: its top two outputs lie within twice the
    artifact's typical error (the median over rows of a row's largest error), so rounding
    of that size may swap them. Many ties among the flips of an artifact whose SQNR is
    good point at an undecided model (untrained, or given inputs unlike its training
    data), not at a broken artifact.

    >>> near_ties(np.array([[0.50, 0.49], [0.1, 0.9], [0.2, 0.8]]),
    ...           np.array([[0.49, 0.50], [0.9, 0.1], [0.21, 0.79]]))
    (2, 1)
    """
    got = np.asarray(got, np.float64)
    expected = np.asarray(expected, np.float64)
    if got.shape != expected.shape or got.size == 0 or not np.isfinite(got).all() \
            or not np.isfinite(expected).all():
        return 0, 0
    flips = np.argmax(got, -1) != np.argmax(expected, -1)
    top2 = np.sort(expected, axis=-1)[..., -2:]
    margin = top2[..., 1] - top2[..., 0]
    err = float(np.median(np.max(np.abs(got - expected), axis=-1)))
    return int(flips.sum()), int((flips & (margin <= 2 * err)).sum())


def constant(outputs) -> bool:
    """Whether a model gave (to float rounding) the same outputs for every one of several
    inputs: an agreement with such a model holds whatever its inputs (a collapsed or
    untrained model, or inputs scaled otherwise than it expects).

    >>> constant(np.array([[0.5, 0.5], [0.5, 0.5]])), constant(np.array([[0.5], [0.6]]))
    (True, False)
    >>> constant(np.array([[0.5]]))  # one input: nothing to compare
    False
    """
    values = np.asarray(outputs, np.float64)
    if values.ndim < 1 or len(values) < 2 or not np.isfinite(values).all():
        return False
    spread = float(np.max(np.ptp(values, axis=0)))
    return spread <= 1e-6 * max(1.0, float(np.max(np.abs(values))))


def constant_note(check: dict, samples: int, model: str = "the model",
                  random: bool = False) -> str | None:
    """The warning a :func:`comparison` with a constant reference calls for, else None.

    >>> constant_note({"constant_reference": True}, 40, "model 'tl'")
    "model 'tl' gives the same output for all 40 check inputs: an agreement with it says nothing about inputs (is it trained, and are its inputs scaled as it expects?)"
    """
    names = [n for n, c in (check.get("outputs") or {}).items()
             if c.get("constant_reference")]
    if not check.get("constant_reference") and not names:
        return None
    which = f"output{'s' if len(names) > 1 else ''} {', '.join(names)} of {model}" \
        if names else model
    if random:  # seeded random inputs: a trained model may saturate on noise
        return (f"{which} gives the same output for all {samples} random check inputs: an "
                "agreement with it says little; pass --data to check on real inputs")
    return (f"{which} gives the same output for all {samples} check inputs: an agreement "
            "with it says nothing about inputs (is it trained, and are its inputs scaled "
            "as it expects?)")


#: The least SQNR (dB) of a quantized artifact's outputs against its float model's that
#: counts as agreeing: a relative L2 error of 10%. int8 of a healthy model gives 25-45 dB.
MIN_SQNR_DB = 20.0
#: The least top-1 agreement of a quantized classifier with its float model (near-ties on
#: random verification inputs may flip a few rows).
MIN_TOP1_AGREEMENT = 0.9


def agreement_summary(check: dict, min_sqnr_db: float = MIN_SQNR_DB,
                      min_top1: float = MIN_TOP1_AGREEMENT) -> tuple[bool, str]:
    """``(agrees, words)`` for a :func:`comparison`: a classifier is judged by its top-1
    agreement, any other output by its SQNR; both thresholds can fail.

    >>> agreement_summary({"rel_l2_error": 0.5, "sqnr_db": 6.0})
    (False, 'SQNR 6.0 dB (relative L2 error 50.00%) is below 20 dB')
    >>> agreement_summary({"rel_l2_error": 0.01, "sqnr_db": 40.0, "top1_agreement": 0.99})
    (True, 'top-1 agreement 99.00%, SQNR 40.0 dB')

    A float model that gave one output for every check input verifies nothing (any
    artifact that outputs that constant agrees):

    >>> agreement_summary({"rel_l2_error": 0.0, "sqnr_db": 90.0, "constant_reference": True})
    (False, 'not verified: the float model gives the same output for every check input (SQNR 90.0 dB against it says nothing)')
    """
    if check.get("constant_reference"):
        return False, (f"not verified: the float model gives the same output for every "
                       f"check input (SQNR {check['sqnr_db']:.1f} dB against it says "
                       "nothing)")
    if "outputs" in check:  # several outputs: each judged on its own terms
        verdicts = {name: agreement_summary(c, min_sqnr_db, min_top1)
                    for name, c in check["outputs"].items()}
        return (all(ok for ok, _ in verdicts.values()),
                "; ".join(f"{name}: {words}" for name, (_, words) in verdicts.items()))
    sqnr = f"SQNR {check['sqnr_db']:.1f} dB"
    if "top1_agreement" in check:
        top1 = check["top1_agreement"]
        ok = top1 >= min_top1
        words = f"top-1 agreement {top1:.2%}, {sqnr}"
        if ok:
            return ok, words
        words = f"{words}: top-1 agreement is below {min_top1:.0%}"
        if check.get("near_ties") and check["sqnr_db"] >= min_sqnr_db:
            words += (f" ({check['near_ties']} of the {check['top1_flips']} flips are near-"
                      "ties: the float model's top two outputs there are closer than twice "
                      "the artifact's error; is the model trained, and given its own kind "
                      "of inputs?)")
        return ok, words
    ok = check["sqnr_db"] >= min_sqnr_db
    words = f"{sqnr} (relative L2 error {check['rel_l2_error']:.2%})"
    return ok, words if ok else f"{words} is below {min_sqnr_db:g} dB"


def _empty_or_not_finite(got: np.ndarray, expected: np.ndarray) -> float | None:
    """0.0 for empty outputs, infinity where either side holds a NaN or an infinity (a
    NaN difference would pass no threshold, and fail none), else None: compare them."""
    if got.size == 0:
        return 0.0
    if not (np.isfinite(got).all() and np.isfinite(expected).all()):
        return float("inf")
    return None


def rel_l2_error(got: np.ndarray, expected: np.ndarray) -> float:
    """``||got - expected|| / ||expected||``; infinite where either side is not finite.

    >>> rel_l2_error(np.array([3.0, 4.0]), np.array([3.0, 4.0]))
    0.0
    >>> rel_l2_error(np.array([np.nan]), np.array([1.0]))
    inf
    """
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    early = _empty_or_not_finite(got, expected)
    if early is not None:
        return early
    diff = float(np.linalg.norm((got - expected).ravel()))
    norm = float(np.linalg.norm(expected.ravel()))
    if norm == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / norm


def sqnr_db(got: np.ndarray, expected: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB: ``-20 log10`` of :func:`rel_l2_error`
    (infinite for identical outputs, minus infinity for non-finite ones).

    >>> round(sqnr_db(np.array([1.01, 2.0]), np.array([1.0, 2.0])), 1)
    47.0
    """
    err = rel_l2_error(got, expected)
    if err == 0.0:
        return float("inf")
    if not np.isfinite(err):
        return float("-inf")
    return float(-20.0 * np.log10(err))


def max_abs_diff(got: np.ndarray, expected: np.ndarray) -> float:
    """The largest ``|got - expected|``; infinite where either side is NaN or infinite.

    A NaN difference would pass (and fail) no threshold, since every comparison with NaN
    is False: ``diff <= atol`` must not hold for outputs that are not numbers.

    Example:

    >>> max_abs_diff(np.array([[0.5, 0.5]]), np.array([[0.5, 0.25]]))
    0.25
    >>> max_abs_diff(np.array([[np.nan, 1.0]]), np.array([[np.nan, 1.0]]))
    inf
    """
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    early = _empty_or_not_finite(got, expected)
    if early is not None:
        return early
    return float(np.max(np.abs(got - expected)))


def top1_agreement(got: np.ndarray, expected: np.ndarray) -> float:
    """Fraction of rows whose top-1 class agrees; a row with a NaN or infinite output on
    either side disagrees (``argmax`` of NaN is index 0 on both sides, a false match).

    ``expected`` may also be the expected class indices (one per row). An output with
    classes at every position (``(batch, height, width, classes)`` of a segmenter,
    ``(batch, steps, classes)`` of a tagger) is compared position by position, as Keras's
    accuracy metrics count it: the fraction of pixels or tokens whose class agrees.

    Example:

    >>> outputs = np.array([[0.1, 0.9], [np.nan, 0.0]])
    >>> top1_agreement(outputs, outputs)
    0.5
    >>> pixels = np.zeros((1, 2, 2, 3)); pixels[0, 0, 0, 1] = 1.0  # one of 4 pixels moves
    >>> top1_agreement(pixels, np.zeros((1, 2, 2, 3)))
    0.75
    """
    got = np.asarray(got, np.float64)
    expected = np.asarray(expected)
    if len(got) == 0:
        return 0.0
    if expected.ndim == got.ndim:
        labels = np.argmax(expected, -1)
        expected_finite = np.isfinite(expected.astype(np.float64)).all(axis=-1)
    else:
        labels, expected_finite = expected.reshape(got.shape[:-1]), True
    finite = np.isfinite(got).all(axis=-1) & expected_finite
    return float(np.mean((np.argmax(got, -1) == labels) & finite))


def xnnpack_note(check: dict) -> str | None:
    """The note for an artifact that LiteRT's XNNPACK delegate could not prepare.

    >>> xnnpack_note({"xnnpack_refused": "Node 3 failed to prepare"})[:44]
    "LiteRT's default XNNPACK delegate could not "
    """
    why = check.get("xnnpack_refused")
    if not why:
        return None
    return ("LiteRT's default XNNPACK delegate could not prepare this model (" + why + "): "
            "it was verified and timed on LiteRT's builtin kernels; where a runtime applies "
            "XNNPACK by default, turn it off for this model (ai_edge_litert: "
            "Interpreter(..., experimental_op_resolver_type=OpResolverType."
            "BUILTIN_WITHOUT_DEFAULT_DELEGATES))")
