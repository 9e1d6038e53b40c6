"""Unstructured pruning reaches Dense layers inside custom (non-Model) layers, as in a
KerasHub transformer block; OBD/OBS leave out layers whose Hessian cannot be formed."""

import keras
import numpy as np
import pytest
from _models import attention_classifier

from compress import training
from compress.errors import CompressError
from compress.pruning import prune


@keras.saving.register_keras_serializable(package="test_nested_prune")
class Block(keras.layers.Layer):
    """A residual block holding two Dense sub-layers (tracked, not a Model)."""

    def __init__(self, units=16, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.fc1 = keras.layers.Dense(units, activation="relu", name="fc1")
        self.fc2 = keras.layers.Dense(units, name="fc2")

    def build(self, shape):
        self.fc1.build(shape)
        self.fc2.build(tuple(shape[:-1]) + (self.units,))

    def call(self, x):
        return x + self.fc2(self.fc1(x))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    keras.utils.set_random_seed(0)
    ids = keras.Input((8,), dtype="int32")
    h = keras.layers.Embedding(40, 16, name="tokens")(ids)
    h = Block(16, name="block")(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    out = keras.layers.Dense(3, activation="softmax", name="head")(h)
    model = keras.Model(ids, out)
    model.compile("adam", "sparse_categorical_crossentropy")
    path = tmp_path_factory.mktemp("nested") / "nested.keras"
    model.save(path)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 40, (64, 8)).astype("int32")
    y = rng.integers(0, 3, 64)
    return path, x, y


def _zeros(model) -> dict:
    return {w.path: int(np.sum(np.asarray(w) == 0)) for w in model.weights}


def test_magnitude_reaches_kernels_inside_a_custom_layer(saved, tmp_path):
    path, x, y = saved
    model = keras.models.load_model(path)
    pruned, info = prune(model, sparsity=0.5)
    rows = {r["weight"]: r for r in info["layers"]}
    assert {"block/fc1/kernel", "block/fc2/kernel", "tokens/embeddings",
            "head/kernel"} <= set(rows)
    block = pruned.get_layer("block")
    for inner in (block.fc1, block.fc2):
        assert np.mean(np.asarray(inner.kernel) == 0) == 0.5  # 128 of 256, exactly
        assert rows[f"block/{inner.name}/kernel"]["sparsity"] == 0.5
    assert np.all(np.isfinite(training.predict(pruned, x)))
    pruned.save(tmp_path / "pruned.keras")
    back = keras.models.load_model(tmp_path / "pruned.keras")
    assert _zeros(back) == _zeros(pruned)
    assert np.mean(np.asarray(back.get_layer("block").fc1.kernel) == 0) == 0.5

    # Fine-tuning keeps the masks on the nested variables; 2:4 reaches them too.
    tuned, _ = prune(keras.models.load_model(path), (x, y), sparsity=0.5, two_four=True,
                     epochs=1, batch_size=32)
    kernel = np.asarray(tuned.get_layer("block").fc1.kernel)
    assert np.all(np.sum(kernel.reshape(4, 4, 16) != 0, axis=1) == 2)  # 2 of every 4 inputs

    # --layers takes the nested layer's path (and its plain name).
    _, info = prune(keras.models.load_model(path), sparsity=0.5, layers=["block/fc2"])
    assert [r["weight"] for r in info["layers"]] == ["block/fc2/kernel"]
    _, info = prune(keras.models.load_model(path), sparsity=0.5, layers=["fc1"])
    assert [r["weight"] for r in info["layers"]] == ["block/fc1/kernel"]


def test_obd_layer_hessians_leave_the_embedding_out_and_name_it(saved):
    path, x, y = saved
    pruned, info = prune(keras.models.load_model(path), (x, y), method="obd",
                         estimator="layer", sparsity=0.5)
    assert list(info["left_out"]) == ["tokens/embeddings"]
    assert "Embedding" in info["left_out"]["tokens/embeddings"]
    assert "tokens/embeddings" not in {r["weight"] for r in info["layers"]}
    assert np.all(np.asarray(pruned.get_layer("tokens").embeddings) != 0)
    # The kernels inside the block get their layer Hessians from hooked calls.
    assert np.mean(np.asarray(pruned.get_layer("block").fc1.kernel) == 0) == 0.5
    with pytest.raises(CompressError, match="^layer 'tokens' \\(Embedding\\).*--layers$"):
        prune(keras.models.load_model(path), (x, y), method="obd", estimator="layer",
              sparsity=0.5, layers=["tokens", "head"])


def test_kmeans_clusters_kernels_inside_a_custom_layer(saved):
    from compress.sharing import share

    path, _, _ = saved
    shared, info = share(keras.models.load_model(path), method="kmeans", clusters=4)
    assert {"block/fc1", "block/fc2", "head"} <= {r["layer"] for r in info["layers"]}
    block = shared.get_layer("block")
    for inner in (block.fc1, block.fc2):
        assert np.unique(np.asarray(inner.kernel)).size <= 4


def test_attention_einsum_kernels_get_layer_hessians():
    # Query/key/value (abc,cde->abde) and output (abcd,cde->abe) projections are Dense
    # layers on flattened axes: OBS forms their Hessians and prunes them.
    from compress.pruning.hessian import layer_hessians

    model, x, y = attention_classifier()
    mha = model.get_layer("mha")
    hess = layer_hessians(model, [mha._query_dense.kernel], x)[0]
    assert hess.rows == 32 * 6  # every position is an input vector
    np.testing.assert_allclose(hess.diagonal()[:, 0, 0],
                               2 * np.mean(x.reshape(-1, 8) ** 2, 0), rtol=1e-5)
    _, info = prune(model, (x, y), method="obs", sparsity=0.5)
    assert "left_out" not in info
    assert {r["weight"]: r["sparsity"] for r in info["layers"]} == {
        f"mha/{n}/kernel": 0.5 for n in ("query", "key", "value", "attention_output")} | {
        "head/kernel": 0.5}
    # 2:4 groups run along the flattened input axis of those kernels (not the heads axis).
    pruned, info = prune(model, sparsity=0.5, two_four=True)
    assert not info.get("two_four_left_dense")
    attention = pruned.get_layer("mha")
    for kernel in (attention._query_dense.kernel, attention._output_dense.kernel):
        groups = np.asarray(kernel).reshape(8, 8).reshape(2, 4, 8)  # (inputs, outputs)
        assert np.all(np.sum(groups != 0, axis=1) == 2)
