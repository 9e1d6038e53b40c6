"""Structured OBS: whole channels removed, their consumers refit by least squares."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from compress.pruning import prune
from compress.pruning.structured_obs import obs_channel_order, prune_channels_obs


def _saved(model, tmp_path, name):
    path = tmp_path / f"{name}.keras"
    model.save(path)
    return keras.models.load_model(path)


def _mlp(tmp_path):
    """Dense-Dense-Dense: fc1 -> fc2 (linear, then ReLU) -> out."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((20,))
    h = keras.layers.Dense(24, activation="relu", name="fc1")(inp)
    h = keras.layers.Dense(16, name="fc2")(h)
    h = keras.layers.ReLU(name="relu2")(h)
    out = keras.layers.Dense(3, activation="softmax", name="out")(h)
    return _saved(keras.Model(inp, out), tmp_path, "mlp")


def _cnn(tmp_path):
    """Conv-BN-ReLU-Conv (the second bias-free, into a BatchNorm) -> pooling -> Dense."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inp)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="c2")(h)
    h = keras.layers.BatchNormalization(name="bn2")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    out = keras.layers.Dense(3, activation="softmax", name="out")(h)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(1)
    for bn in ("bn1", "bn2"):  # statistics that are not the identity
        layer = model.get_layer(bn)
        layer.moving_mean.assign(rng.normal(0, 0.3, layer.moving_mean.shape))
        layer.moving_variance.assign(rng.uniform(0.5, 2.0, layer.moving_variance.shape))
    return _saved(model, tmp_path, "cnn")


def _output(model, layer, x):
    return keras.Model(model.inputs, model.get_layer(layer).output).predict(x, verbose=0)


def _rel_error(model, pruned, layer, x):
    ref, got = _output(model, layer, x), _output(pruned, layer, x)
    return float(((got - ref) ** 2).sum() / (ref ** 2).sum())


@pytest.mark.parametrize("build, producer, consumer", [(_mlp, "fc1", "fc2"),
                                                       (_cnn, "c1", "bn2")])
def test_compensation_lowers_the_consumer_error_for_the_same_channels(
        build, producer, consumer, tmp_path):
    model = build(tmp_path)
    x = np.random.default_rng(0).normal(size=(256, *model.input_shape[1:])).astype("float32")
    comp, info = prune_channels_obs(model, 0.5, x, layers=[producer])
    plain, plain_info = prune_channels_obs(model, 0.5, x, layers=[producer],
                                           compensate=False)
    comp, plain = _saved(comp, tmp_path, "comp"), _saved(plain, tmp_path, "plain")
    # The same channels went: the producer's kept kernels are identical.
    np.testing.assert_array_equal(np.asarray(comp.get_layer(producer).kernel),
                                  np.asarray(plain.get_layer(producer).kernel))
    assert comp.output_shape == plain.output_shape == model.output_shape
    assert comp.count_params() == plain.count_params() < model.count_params()
    e_comp, e_plain = (_rel_error(model, m, consumer, x) for m in (comp, plain))
    assert e_comp < 0.8 * e_plain, (e_comp, e_plain)
    if consumer == "fc2":  # the report's errors are the ones measured here
        row = info["compensated"]["fc2"]
        assert row["inputs"] == [24, 12]
        assert row["error_compensated"] == pytest.approx(e_comp, rel=1e-3)
        assert row["error_uncompensated"] == pytest.approx(e_plain, rel=1e-3)
        assert plain_info["compensated"]["fc2"]["error_compensated"] == \
            pytest.approx(e_plain, rel=1e-3)


def test_least_squares_weights_equal_numpy_lstsq(tmp_path):
    keras.utils.set_random_seed(3)
    inp = keras.Input((5,))
    h = keras.layers.Dense(6, name="p")(inp)
    out = keras.layers.Dense(4, name="c")(h)
    model = _saved(keras.Model(inp, out), tmp_path, "tiny")
    x = np.random.default_rng(2).normal(size=(40, 5)).astype("float32")
    small, _ = prune_channels_obs(model, 0.5, x, layers=["p"], damp=0.0)
    feats = _output(model, "p", x).astype("float64")  # the consumer's inputs, original
    kp, kn = np.asarray(model.get_layer("p").kernel), np.asarray(small.get_layer("p").kernel)
    kept = [int(np.argmin(np.abs(kp - col[:, None]).sum(0))) for col in kn.T]
    assert len(kept) == 3 and len(set(kept)) == 3
    c = model.get_layer("c")
    target = feats @ np.asarray(c.kernel, "float64") + np.asarray(c.bias, "float64")
    design = np.hstack([feats[:, kept], np.ones((len(x), 1))])
    want = np.linalg.lstsq(design, target, rcond=None)[0]
    got = np.vstack([np.asarray(small.get_layer("c").kernel),
                     np.asarray(small.get_layer("c").bias)])
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_obs_channel_choice_matches_brute_force_least_squares():
    """Each greedy removal is the channel whose removal (the others refit exactly) costs
    the least, found by trying every one with lstsq; two columns per channel, as a
    convolution's kernel positions."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 10))
    x[:, 6] = x[:, 1] - x[:, 3] + 0.05 * rng.normal(size=300)  # correlated channels
    x[:, 7] = x[:, 0] + 0.05 * rng.normal(size=300)
    w = rng.normal(size=(10, 4))
    y = x @ w
    cols = np.arange(10).reshape(5, 2)  # channel j: columns 2j, 2j+1

    def best(gone):
        costs = {}
        for j in set(range(5)) - set(gone):
            keep = np.setdiff1d(np.arange(10), cols[list(gone) + [j]].reshape(-1))
            fit = np.linalg.lstsq(x[:, keep], y, rcond=None)[0]
            costs[j] = ((x[:, keep] @ fit - y) ** 2).sum()
        return min(costs, key=costs.get)

    order = obs_channel_order([(x.T @ x / 300, w, cols)], 3, damp=1e-9)
    assert order == [best(order[:i]) for i in range(3)]
    assert len(set(order)) == 3


def test_prune_pass_structured_obs_compensates_every_consumer(tmp_path):
    model = _mlp(tmp_path)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 20)).astype("float32")
    y = rng.integers(0, 3, 200)
    small, info = prune(model, (x, y), structured=True, method="obs", sparsity=0.5)
    small = _saved(small, tmp_path, "small")
    assert info["units"] == {"fc1": [24, 12], "fc2": [16, 8], "out": [3, 3]}
    assert set(info["compensated"]) == {"fc2", "out"}
    assert small.output_shape == model.output_shape
    assert small.count_params() < model.count_params() / 2
    plain, _ = prune(model, (x, y), structured=True, sparsity=0.5)
    gap = [np.abs(m.predict(x, verbose=0) - model.predict(x, verbose=0)).mean()
           for m in (small, plain)]
    assert gap[0] < gap[1]


def test_cli_structured_obs_without_data_is_refused(cli, tmp_path):
    path = tmp_path / "mlp.keras"
    _mlp(tmp_path).save(path)
    out = tmp_path / "out.keras"
    res = cli("prune", path, "-o", out, "--structured", "--method", "obs",
              "--sparsity", "0.5")
    assert res.exit_code == 1
    lines = [line for line in res.output.strip().splitlines() if line]
    assert len(lines) == 1 and "--method obs" in lines[0] and "--data" in lines[0], res.output
    assert "Traceback" not in res.output and not out.exists()


def test_a_group_normalization_group_loses_whole_groups_and_is_still_refit():
    import keras

    keras.utils.set_random_seed(0)
    layers = keras.layers
    inp = keras.Input((6, 6, 3))
    a = layers.Conv2D(8, 3, padding="same", name="c1")(inp)
    g = layers.GroupNormalization(4, name="gn")(a)
    b = layers.Conv2D(6, 3, padding="same", name="c2")(g)
    model = keras.Model(inp, layers.Dense(3, name="out")(layers.GlobalAveragePooling2D()(b)))
    x = np.random.default_rng(0).normal(size=(64, 6, 6, 3)).astype("float32")
    small, info = prune_channels_obs(model, 0.5, x)
    assert small.get_layer("gn").groups == 2 and info["units"]["c1"] == [8, 4]
    assert info["chosen_by_norm"] == {
        "feeds a GroupNormalization: whole groups by l2 norm": ["c1"]}
    refit = info["compensated"]["c2"]  # the consumer of the normalized groups is refit
    assert refit["error_compensated"] < refit["error_uncompensated"]
