"""The saliency criteria: one dispatch for the prune pass, the callback and structured pruning."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from compress.errors import CompressError
from compress.pruning import criteria


@pytest.fixture(scope="module")
def mlp(mlp_file):
    from compress.io import load_model

    path, ds = mlp_file
    return load_model(path), ds


def _callback_masks(model, ds, **kwargs):
    """Kernels' zero patterns after one batch of a zero-learning-rate fit with a
    constant-schedule Pruning callback: the callback's masks of the weights as they are."""
    from compress import training
    from compress.callbacks import Pruning

    model = training.copy_model(model)
    model.compile(keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy")
    model.fit(ds.x_train[:64], ds.y_train[:64], batch_size=64, epochs=1, verbose=0,
              callbacks=[Pruning(schedule="constant", frequency=1, **kwargs)])
    return {la.name: np.asarray(la.kernel) == 0 for la in model.layers if la.weights}


@pytest.mark.parametrize("method", ["magnitude", "obd"])
def test_the_callback_and_the_pass_prune_the_same_weights(mlp, method):
    from compress.pruning import prune

    model, ds = mlp
    pruned, _ = prune(model, ds, method=method, sparsity=0.6, calibration=64)
    by_pass = {la.name: np.asarray(la.kernel) == 0 for la in pruned.layers if la.weights}
    by_callback = _callback_masks(model, ds, sparsity=0.6, method=method,
                                  calibration=(ds.x_train[:64], ds.y_train[:64]))
    assert by_pass.keys() == by_callback.keys() == {"fc1", "fc2", "predictions"}
    for name, zeros in by_pass.items():
        assert abs(zeros.mean() - 0.6) < 0.01
        np.testing.assert_array_equal(zeros, by_callback[name], err_msg=name)


def test_a_criterion_changed_in_the_registry_changes_all_three_users(mlp, monkeypatch):
    """Scoring |w| negated (largest weights least salient) must reach the pass, the
    callback and structured pruning: none of them ranks weights on its own."""
    from compress.pruning import prune
    from compress.pruning.structured import prune_units

    model, ds = mlp
    monkeypatch.setitem(criteria.CRITERIA, "magnitude", criteria.Criterion(
        "magnitude", False,
        lambda model, variables, *rest: [-np.abs(np.asarray(v, "float64")) for v in variables]))
    kernel = np.asarray(model.get_layer("fc1").kernel)

    pruned, _ = prune(model, sparsity=0.5)
    kept = np.asarray(pruned.get_layer("fc1").kernel) != 0
    assert np.abs(kernel[kept]).max() <= np.abs(kernel[~kept]).min()  # the largest went

    by_callback = _callback_masks(model, ds, sparsity=0.5)["fc1"]
    np.testing.assert_array_equal(by_callback, ~kept)

    small, info = prune_units(model, 0.5, norm="l1")
    assert info["units"]["fc1"] == [32, 16]
    expected = np.sort(np.argsort(np.abs(kernel).sum(axis=0), kind="stable")[:16])
    np.testing.assert_array_equal(np.asarray(small.get_layer("fc1").kernel), kernel[:, expected])


def test_unit_scores_are_unit_norms_and_summed_obd_saliencies(mlp):
    model, ds = mlp
    kernel = model.get_layer("fc1").kernel
    k = np.asarray(kernel, "float64")
    l2, = criteria.unit_scores(model, [kernel], "magnitude")
    l1, = criteria.unit_scores(model, [kernel], "magnitude", norm="l1")
    np.testing.assert_allclose(l2, np.sqrt((k ** 2).sum(axis=0)))
    np.testing.assert_allclose(l1, np.abs(k).sum(axis=0))
    calib = (ds.x_train[:64], ds.y_train[:64])
    obd, = criteria.unit_scores(model, [kernel], "obd", calib)
    per_weight, = criteria.saliency_scores(model, [kernel], "obd", calib)
    np.testing.assert_allclose(obd, per_weight.sum(axis=0))
    assert (obd >= 0).all() and obd.shape == (32,)


def test_unknown_criteria_and_missing_calibration_are_refused(mlp):
    model, _ = mlp
    kernel = model.get_layer("fc1").kernel
    with pytest.raises(CompressError, match="method: must be one of magnitude, obd, obs, got 'snip'"):
        criteria.saliency_scores(model, [kernel], "snip")
    with pytest.raises(CompressError, match="method 'obd': needs calibration data"):
        criteria.saliency_scores(model, [kernel], "obd")
