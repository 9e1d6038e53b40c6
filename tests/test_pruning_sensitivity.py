"""Sensitivity allocation: per-layer sparsities from losses measured on held-out data."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from compress import training
from compress.errors import CompressError
from compress.pruning import masks, prune, saliency_scores
from compress.pruning.sensitivity import (
    allocate_sparsities,
    layer_loss_curves,
    sensitivity_masks,
)


@pytest.fixture(scope="module")
def mlp(mlp_file):
    from compress.io import load_model

    path, ds = mlp_file
    return load_model(path), ds


def _val_loss(model, ds):
    p = training.predict(model, ds.x_val)
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(ds.y_val)), ds.y_val], 1e-12))))


def test_allocation_cuts_cheapest_loss_per_weight_first_and_hits_total():
    flat = ([0.0, 0.5, 0.9], [1.0, 1.01, 1.05])    # robust layer
    steep = ([0.0, 0.5, 0.9], [1.0, 1.50, 3.00])   # sensitive layer
    alloc = allocate_sparsities([flat, steep], [1000, 1000], 0.6)
    assert alloc[0] == pytest.approx(0.9) and alloc[1] == pytest.approx(0.3)
    assert 1000 * alloc[0] + 1000 * alloc[1] == pytest.approx(0.6 * 2000)
    # a small layer with the same loss curve costs more per removed weight: cut the big one
    alloc = allocate_sparsities([steep, steep], [100, 10000], 0.4)
    assert alloc[1] > alloc[0]
    assert 100 * alloc[0] + 10000 * alloc[1] == pytest.approx(0.4 * 10100)
    # curves that start above 0 (already pruned) never go below their start
    alloc = allocate_sparsities([([0.7, 0.9], [1.0, 1.1]), ([0.0, 0.9], [1.0, 1.2])],
                                [100, 100], 0.5)
    assert alloc[0] >= 0.7 and sum(alloc) == pytest.approx(1.0)


def test_loss_curves_are_measured_and_leave_weights_unchanged(mlp):
    model, ds = mlp
    model = training.copy_model(model)
    variables = [v for _, v in masks.prunable_weights(model)]
    before = [np.asarray(v).copy() for v in variables]
    scores = saliency_scores(model, variables, "magnitude")
    curves = layer_loss_curves(model, variables, scores, ds.x_val, ds.y_val)
    dense_loss = _val_loss(model, ds)
    for (points, losses), v, b in zip(curves, variables, before):
        np.testing.assert_array_equal(np.asarray(v), b)  # restored
        assert points[0] == 0.0 and points[-1] == pytest.approx(0.99)
        assert losses[0] == pytest.approx(dense_loss, rel=1e-3)
        assert losses[-1] > losses[0] + 0.05  # 99% of one layer gone hurts
    # the 50% point of fc1 equals pruning that layer by hand
    v = variables[0]
    i = curves[0][0].index(0.5)
    v.assign(before[0] * masks.lowest_mask(scores[0], 0.5))
    assert curves[0][1][i] == pytest.approx(_val_loss(model, ds), rel=1e-3)


def test_prune_sensitivity_scope_uneven_allocation_and_lower_val_loss(mlp):
    model, ds = mlp
    weights = [w.copy() for w in model.get_weights()]
    for method in ("magnitude", "obd"):
        pruned, info = prune(model, ds, method=method, sparsity=0.85, scope="sensitivity",
                             damping=1.0)
        assert abs(info["sparsity_reached"] - 0.85) < 0.005
        per_layer = [r["sparsity"] for r in info["layers"]]
        assert max(per_layer) - min(per_layer) > 0.05  # not uniform
        uniform, _ = prune(model, ds, method=method, sparsity=0.85, damping=1.0)
        # measured allocation beats the uniform one on the data it measures
        assert _val_loss(pruned, ds) < _val_loss(uniform, ds)
        assert all(w.constraint is None for w in pruned.weights)
    for a, b in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(a, b)  # input untouched


def test_sensitivity_keeps_earlier_pruned_weights_pruned(mlp):
    model, ds = mlp
    _, info = prune(model, ds, method="obd", sparsity=0.9, scope="sensitivity",
                    schedule="iterative", rounds=2, epochs=2, steps=2)
    assert abs(info["sparsity_reached"] - 0.9) < 0.005


def test_sensitivity_bad_input(mlp):
    model, ds = mlp
    with pytest.raises(CompressError, match="scope sensitivity need"):
        prune(model, sparsity=0.5, scope="sensitivity")
    with pytest.raises(CompressError, match="scope 'sensitivity'"):
        prune(model, ds, sparsity=0.5, scope="sensitivity", schedule="gradual", epochs=1)
    with pytest.raises(CompressError, match="validation data"):
        variables = [v for _, v in masks.prunable_weights(model)]
        sensitivity_masks(model, variables, [np.abs(np.asarray(v)) for v in variables],
                          ds.x_val[:0], ds.y_val[:0], 0.5)
