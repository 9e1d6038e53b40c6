"""In-graph masks: zeros stay zeros under any optimizer; saved files stay plain."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

keras = pytest.importorskip("keras")

from compress.errors import CompressError
from compress.pruning import keep_zeros, lowest_mask, n_m_mask, prunable_weights, release_zeros


def _mlp(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu",
                                                                   name="a"),
                             keras.layers.Dense(3, activation="softmax", name="b")])


OPTIMIZERS = {
    "sgd_momentum": lambda: keras.optimizers.SGD(0.1, momentum=0.9),
    "adam": lambda: keras.optimizers.Adam(0.05),
    "rmsprop": lambda: keras.optimizers.RMSprop(0.05),
    "adamw": lambda: keras.optimizers.AdamW(0.05, weight_decay=0.1),
}


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(sparsity=st.floats(0.0, 0.95), opt=st.sampled_from(sorted(OPTIMIZERS)),
       seed=st.integers(0, 1000))
def test_pruned_weights_stay_zero_under_any_optimizer(sparsity, opt, seed):
    model = _mlp(seed)
    rng = np.random.default_rng(seed)
    for _, var in prunable_weights(model):
        w = np.asarray(var)
        mask = lowest_mask(np.abs(w), sparsity)
        # sparsity reached equals sparsity asked within one weight per layer
        assert abs((mask == 0).sum() - sparsity * w.size) <= 1
        var.assign(w * mask)
    zeros_before = [np.asarray(v) == 0 for _, v in prunable_weights(model)]
    keep_zeros(model)
    model.compile(OPTIMIZERS[opt](), "sparse_categorical_crossentropy")
    x = rng.normal(size=(64, 6)).astype("float32")
    y = rng.integers(0, 3, 64)
    model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    for (_, var), z in zip(prunable_weights(model), zeros_before):
        w = np.asarray(var)
        assert (w[z] == 0).all()
        if z.sum() < z.size:  # the survivors did train
            assert np.any(w[~z] != 0)


def test_masks_are_invisible_in_saved_files(tmp_path):
    model = _mlp()
    var = model.get_layer("a").kernel
    var.assign(np.asarray(var) * (np.arange(48).reshape(6, 8) % 2))
    keep_zeros(model)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(np.ones((8, 6), "float32"), np.zeros(8, "int64"), verbose=0)
    for suffix in (".keras", ".h5"):
        path = tmp_path / f"m{suffix}"
        model.save(path)
        loaded = keras.models.load_model(path, compile=False)  # no custom objects
        assert loaded.get_layer("a").kernel.constraint is None
        np.testing.assert_array_equal(loaded.get_layer("a").kernel.numpy(), var.numpy())
    assert release_zeros(model) == 2  # both Dense kernels were masked
    assert var.constraint is None


def test_release_lets_weights_regrow():
    model = _mlp()
    var = model.get_layer("a").kernel
    zero = (np.arange(48).reshape(6, 8) % 3) == 0  # no whole unit dead
    var.assign(np.where(zero, 0.0, np.asarray(var)).astype("float32"))
    keep_zeros(model)
    release_zeros(model)
    model.compile(keras.optimizers.SGD(0.5), "sparse_categorical_crossentropy")
    model.fit(np.random.default_rng(0).normal(size=(32, 6)).astype("float32"),
              np.arange(32) % 3, verbose=0)
    assert np.count_nonzero(var.numpy()[zero]) > 0


def test_layer_selection_by_name_type_and_regex():
    model = _mlp()
    assert [la.name for la, _ in prunable_weights(model, ["a"])] == ["a"]
    assert len(prunable_weights(model, ["Dense"])) == 2
    assert [la.name for la, _ in prunable_weights(model, ["^b$"])] == ["b"]
    with pytest.raises(CompressError, match="matches no prunable layer"):
        prunable_weights(model, ["conv.*"])
    with pytest.raises(CompressError, match="nothing left"):
        prunable_weights(model, skip_first_last=True)
    empty = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization()])
    with pytest.raises(CompressError, match="no prunable layers"):
        prunable_weights(empty)


def test_supported_layer_kinds_and_nested_models():
    inner = keras.Sequential([keras.Input((8, 8, 3)),
                              keras.layers.SeparableConv2D(4, 3, name="sep"),
                              keras.layers.DepthwiseConv2D(3, name="dw")], name="inner")
    model = keras.Sequential([keras.Input((8, 8, 3)), inner,
                              keras.layers.Conv2DTranspose(2, 3, name="tr"),
                              keras.layers.Flatten(), keras.layers.Dense(2, name="out")])
    names = [(la.name, v.name) for la, v in prunable_weights(model)]
    assert ("sep", "depthwise_kernel") in names and ("sep", "pointwise_kernel") in names
    assert ("dw", "kernel") in names or ("dw", "depthwise_kernel") in names
    assert ("tr", "kernel") in names and ("out", "kernel") in names
    emb = keras.Sequential([keras.Input((5,), dtype="int32"), keras.layers.Embedding(10, 4)])
    assert prunable_weights(emb)[0][1].name == "embeddings"


def test_two_four_mask_keeps_two_largest_of_every_four_inputs():
    rng = np.random.default_rng(0)
    s = rng.random((8, 3))
    m = n_m_mask(s, 2, 4)
    for j in range(3):
        for g in range(2):
            block = s[4 * g:4 * g + 4, j]
            kept = set(np.nonzero(m[4 * g:4 * g + 4, j])[0])
            assert kept == set(np.argsort(block)[2:])
    with pytest.raises(CompressError, match="divisible by 4"):
        n_m_mask(rng.random((6, 3)))


def test_lowest_mask_zeros_exactly_k_lowest():
    from compress.pruning.masks import lowest_mask

    rng = np.random.default_rng(0)
    s = rng.normal(size=(37, 11))
    for sparsity in (0.0, 0.3, 0.9, 0.999):
        m = lowest_mask(s, sparsity)
        k = round(sparsity * s.size)
        assert int((m == 0).sum()) == k
        if 0 < k < s.size:
            assert s[m == 0].max() <= s[m == 1].min()


def test_lowest_indices_with_large_groups_of_equal_scores():
    # A gradual schedule's fourth step: most scores are -inf (pruned already), and a
    # model pruned before brings many zeros. The k lowest are still exactly k entries,
    # the pruned ones first, and a large group the boundary cuts gives its lowest indices.
    from compress.pruning.masks import lowest_indices

    rng = np.random.default_rng(1)
    for trial in range(200):
        n = int(rng.integers(1, 6000))
        x = rng.random(n)
        x[rng.random(n) < rng.random()] = 0.0
        x[rng.random(n) < rng.random()] = -np.inf
        k = int(rng.integers(1, n + 1))
        got = lowest_indices(x, k)
        assert got.size == k == np.unique(got).size, trial
        assert np.array_equal(np.sort(x[got]), np.sort(x)[:k]), trial
    x = np.zeros(6000)
    x[:4000] = -np.inf
    assert sorted(lowest_indices(x, 5000)) == list(range(5000))
    m = lowest_mask(x, 0.9)  # 5,400 of 6,000: every -inf, then the zeros from index 4000 on
    assert (m[:5400] == 0).all() and (m[5400:] == 1).all()


def test_balanced_mask_prunes_each_unit_and_global_sets_layer_sparsity():
    from compress.pruning.masks import balanced_mask, select_masks

    rng = np.random.default_rng(0)
    s = rng.random((40, 6))
    s[:, 2] *= 1e-6  # a unit whose scores are all tiny: plain ranking would cut it off
    assert (lowest_mask(s, 0.8)[:, 2] == 0).all()
    m = balanced_mask(s, 0.8)
    assert (m.sum(axis=0) == 8).all()
    for j in range(6):  # the 32 lowest of each column went
        assert s[m[:, j] == 1, j].min() >= s[m[:, j] == 0, j].max()
    other = rng.random((10, 3)) * 10
    plain = select_masks([s, other], 0.5, scope="global")
    bal = select_masks([s, other], 0.5, scope="global", balance=True)
    for p, b in zip(plain, bal):
        assert abs(p.mean() - b.mean()) < 0.05
