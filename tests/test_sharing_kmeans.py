"""k-means weight sharing: 1-D k-means++, centroid-only fine-tuning, plain models out."""

from __future__ import annotations

import numpy as np
import pytest

from compress.errors import CompressError


def test_kmeans_1d_finds_separated_groups():
    from compress.sharing.kmeans import kmeans_1d

    rng = np.random.default_rng(0)
    centres = np.array([-3.0, -1.0, 0.5, 2.0])
    values = np.concatenate([c + 0.01 * rng.normal(size=200) for c in centres])
    found, assign = kmeans_1d(values, 4, seed=1)
    np.testing.assert_allclose(np.sort(found), centres, atol=0.01)
    assert np.bincount(assign).tolist() == [200, 200, 200, 200]
    # every value sits at its nearest centroid
    nearest = np.argmin(np.abs(values[:, None] - found[None, :]), axis=1)
    np.testing.assert_array_equal(nearest, assign)


def test_kmeans_1d_lowers_error_versus_uniform_grid():
    from compress.sharing.kmeans import kmeans_1d

    values = np.random.default_rng(2).normal(size=5000)
    centroids, assign = kmeans_1d(values, 16)
    kmeans_error = np.mean((values - centroids[assign]) ** 2)
    grid = np.linspace(values.min(), values.max(), 16)
    grid_error = np.mean((values - grid[np.argmin(np.abs(values[:, None] - grid), 1)]) ** 2)
    assert kmeans_error < 0.7 * grid_error


def test_cluster_model_leaves_few_distinct_values_and_input_intact(mlp_file):
    import keras

    from compress.sharing import cluster_model

    path, ds = mlp_file
    model = keras.models.load_model(path)
    before = [w.copy() for w in model.get_weights()]
    clustered, info = cluster_model(model, ds, clusters=8)
    assert all((a == b).all() for a, b in zip(before, model.get_weights()))
    assert [type(layer) for layer in clustered.layers] == [type(layer) for layer in model.layers]
    for layer in clustered.layers[1:]:
        assert np.unique(np.asarray(layer.kernel)).size <= 8
    assert info["index_bits"] == 3
    assert 3.0 < info["bits_per_weight"] < 3.5
    assert "not_reached" not in info and "warning" not in info  # every matrix clustered
    dense_acc = info["accuracy"]
    # 8 shared values, no fine-tune: 0.68 to 0.78 over seeds 0-4 (the model: 0.75 to 0.82)
    assert dense_acc > 0.6


def test_finetuning_moves_centroids_only(mlp_file):
    import keras

    from compress.sharing import cluster_model

    path, ds = mlp_file
    model = keras.models.load_model(path)
    plain, plain_info = cluster_model(model, ds, clusters=4, layers="fc1")
    tuned, tuned_info = cluster_model(model, ds, clusters=4, layers="fc1", epochs=3,
                                      learning_rate=1e-3)
    k0 = np.asarray(plain.get_layer("fc1").kernel)
    k1 = np.asarray(tuned.get_layer("fc1").kernel)
    assert np.unique(k1).size <= 4
    # same membership: weights that shared a centroid still share one
    for value in np.unique(k0):
        assert np.unique(k1[k0 == value]).size == 1
    assert not np.allclose(k0, k1)  # the centroids did move
    assert tuned_info["accuracy"] >= plain_info["accuracy"] - 0.02


def test_cluster_model_refuses_bad_input(mlp_file):
    import keras

    from compress.sharing import cluster_model

    model = keras.models.load_model(mlp_file[0])
    with pytest.raises(CompressError, match=r"^share.clusters: must be >= 2, got 1$"):
        cluster_model(model, clusters=1)
    with pytest.raises(CompressError, match="share.clusters: must be at most the 160 weights "
                                            "of layer 'predictions', got 161"):
        cluster_model(model, clusters=161, layers="predictions")
    with pytest.raises(CompressError, match="share.factor: unknown option"):
        cluster_model(model, factor=0.5)  # a hash option
    with pytest.raises(CompressError, match="needs data"):
        cluster_model(model, clusters=4, epochs=1)


def test_share_dispatches_and_validates(mlp_file):
    import keras

    from compress.sharing import SHARE_OPTIONS, share

    model = keras.models.load_model(mlp_file[0])
    _, info = share(model, method="kmeans", clusters=4)
    assert info["method"] == "kmeans" and info["clusters"] == 4
    _, info = share(model, method="hash", factor=0.5)
    assert info["method"] == "hash" and info["bits_per_weight"] == pytest.approx(16, rel=0.01)
    with pytest.raises(CompressError) as refused:
        share(model, factor=2)
    assert str(refused.value) == "share.factor: must be in (0.0, 1.0], got 2.0"
    with pytest.raises(CompressError, match="unknown option"):
        share(model, sparsity=0.5)
    assert SHARE_OPTIONS.validate({})["method"] == "hash"


def test_pruned_zeros_stay_zero_through_clustering_and_finetuning(mlp_file):
    import keras

    from compress.sharing import cluster_model

    path, ds = mlp_file
    model = keras.models.load_model(path)
    kernel = np.asarray(model.get_layer("fc1").kernel)
    pruned = np.where(np.abs(kernel) < np.quantile(np.abs(kernel), 0.7), 0.0, kernel)
    model.get_layer("fc1").kernel.assign(pruned)
    clustered, info = cluster_model(model, ds, clusters=4, layers="fc1", epochs=2,
                                    learning_rate=1e-3)
    out = np.asarray(clustered.get_layer("fc1").kernel)
    np.testing.assert_array_equal(out == 0, pruned == 0)
    assert np.unique(out[out != 0]).size <= 4
    assert info["layers"][0]["bits_per_weight"] > 2.0  # 4 clusters + the zero: 3-bit index


def test_centroid_finetuning_is_a_fit_that_resumes(mlp_file, tmp_path, monkeypatch):
    """The fine-tune obeys the training context: interrupted, it resumes where it was."""
    import keras

    from compress import training
    from compress.sharing import cluster_model
    from compress.training_context import TrainingContext

    path, ds = mlp_file
    model = keras.models.load_model(path)
    options = {"clusters": 4, "layers": "fc1", "epochs": 3, "learning_rate": 1e-3}
    plain, _ = cluster_model(model, ds, clusters=4, layers="fc1")
    whole, whole_info = cluster_model(model, ds, **options)
    real_fit, seen = training.fit_model, []

    def fit_with(*extra):
        def fit(*args, callbacks=None, **kwargs):
            return real_fit(*args, callbacks=[*(callbacks or []), *extra], **kwargs)
        return fit

    def stop(epoch, logs=None):
        if epoch == 2:
            raise KeyboardInterrupt

    ck = tmp_path / "ck"
    monkeypatch.setattr(training, "fit_model",
                        fit_with(keras.callbacks.LambdaCallback(on_epoch_begin=stop)))
    with pytest.raises(KeyboardInterrupt), TrainingContext(checkpoint_dir=ck):
        cluster_model(model, ds, **options)
    assert (ck / "fit1" / "latest.weights.h5").exists()
    monkeypatch.setattr(training, "fit_model", fit_with(keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs=None: seen.append(epoch))))
    with TrainingContext(checkpoint_dir=ck):
        resumed, info = cluster_model(model, ds, **options)
    assert seen == [2]  # epochs 0 and 1 came from the backup
    k_plain, k_whole, k_resumed = (np.asarray(m.get_layer("fc1").kernel)
                                   for m in (plain, whole, resumed))
    for value in np.unique(k_plain):  # the same membership, 4 shared values
        assert np.unique(k_resumed[k_plain == value]).size == 1
    assert np.unique(k_resumed).size <= 4
    # the backed-up epochs were kept: the resumed centroids are the tuned ones
    assert np.abs(k_resumed - k_whole).max() < 0.5 * np.abs(k_plain - k_whole).max()
    assert abs(info["accuracy"] - whole_info["accuracy"]) <= 0.02
    assert not any(ck.iterdir())


def test_finetuning_without_labels_follows_the_original(mlp_file, tmp_path):
    # unlabelled data was refused ("trains the centroids on labels"); it now trains the
    # centroids to reproduce the original model, as the other label-free passes do
    import keras

    from compress.data import load_data
    from compress.report import fidelity
    from compress.sharing import cluster_model

    path, ds = mlp_file
    model = keras.models.load_model(path)
    np.save(tmp_path / "inputs.npy", ds.x_train)
    inputs = load_data(str(tmp_path / "inputs.npy"), seed=0)
    assert not inputs.labelled
    plain, _ = cluster_model(model, inputs, clusters=2)
    tuned, _ = cluster_model(model, inputs, clusters=2, epochs=4, learning_rate=1e-3)
    for m in (plain, tuned):
        assert max(np.unique(np.asarray(m.get_layer(n).kernel)).size
                   for n in ("fc1", "fc2", "predictions")) <= 2
    before = fidelity(plain, model, ds.x_test, classifier=True)
    after = fidelity(tuned, model, ds.x_test, classifier=True)
    # 2 centroids per layer: 3.0 -> 4.1 dB, top-1 agreement 25% -> 44% when written
    assert after["sqnr_db"] > before["sqnr_db"] + 0.5  # closer to the original
    assert after["top1_agreement"] > before["top1_agreement"] + 0.1


def test_finetuning_without_labels_takes_a_stream(tmp_path):
    # a flat image folder is a stream: the original's outputs are computed in the pipeline
    import keras
    from PIL import Image

    from compress.data import load_data, prepare
    from compress.sharing import cluster_model

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    folder = tmp_path / "flat"
    folder.mkdir()
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8), "L").save(
            folder / f"{i:03d}.png")
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    data = prepare(model, load_data(str(folder), seed=0))
    assert data.streaming and not data.labelled
    tuned, info = cluster_model(model, data, clusters=4, epochs=1)
    assert info["epochs"] == 1 and np.unique(np.asarray(tuned.layers[1].kernel)).size <= 4


def test_hashing_names_the_weights_it_does_not_reach():
    """Hashing shared Dense and Conv2D kernels only: on a model that is mostly Embedding
    and LSTM it said "3 bits" about 16 weights of 6,000. It now hashes the Embedding too;
    the report names the recurrent matrices left in float and warns when they are most.
    The model is built in memory: hashing it crashed on its clone's input name."""
    import keras

    from compress.sharing import share
    from compress.sharing.hashing import materialize

    inp = keras.Input((10,), dtype="int32")
    h = keras.layers.Embedding(30, 8, name="emb")(inp)
    h = keras.layers.LSTM(12, name="lstm")(h)
    model = keras.Model(inp, keras.layers.Dense(3, name="head")(h))
    new, info = share(model, method="hash", factor=0.5)
    x = np.arange(20).reshape(2, 10) % 30  # and back to plain layers, from memory too
    np.testing.assert_allclose(materialize(new).predict(x, verbose=0),
                               new.predict(x, verbose=0), atol=1e-6)
    assert info["not_reached"].startswith("lstm/lstm_cell/kernel (384), "
                                          "lstm/lstm_cell/recurrent_kernel (576): only "
                                          "Dense, Embedding and Conv1D/2D/3D weights can be "
                                          "hashed")
    assert info["warning"].startswith("276 of the model's 1,236 weight-matrix values are")
    assert [r["type"] for r in info["layers"]] == ["HashedEmbedding", "HashedDense"]
    gru = keras.Sequential([keras.Input((5, 3)), keras.layers.GRU(4, name="gru"),
                            keras.layers.Dense(2, name="head")])
    _, info = share(gru, method="hash", factor=0.5)  # its (2, 12) bias is no matrix
    assert info["not_reached"].startswith("gru/gru_cell/kernel (36), "
                                          "gru/gru_cell/recurrent_kernel (48): only")


def test_kmeans_clusters_every_weight_matrix_pruning_reaches(tmp_path):
    """k-means clustered Dense and Conv2D kernels only, leaving an Embedding + LSTM
    model's matrices (97% of it) and a TCN's Conv1D kernels in float. It now clusters
    every matrix pruning acts on (embeddings, recurrent cells, Conv1D, depthwise), names
    a custom layer's own weight it does not reach, and keeps a matrix with no more values
    than --clusters in float, named; the result saves and loads as a plain model."""
    import keras

    from compress.sharing import share
    from tests.test_pruning_prune import _recurrent_model

    inp = keras.Input((10,), dtype="int32")
    h = keras.layers.Embedding(30, 8, name="emb")(inp)
    h = keras.layers.LSTM(12, name="lstm")(h)
    model = keras.Model(inp, keras.layers.Dense(3, name="head")(h))
    new, info = share(model, method="kmeans", clusters=4)
    assert [r["weight"] for r in info["layers"]] == [
        "emb/embeddings", "lstm/lstm_cell/kernel", "lstm/lstm_cell/recurrent_kernel",
        "head/kernel"]
    for v in (new.get_layer("emb").embeddings, new.get_layer("lstm").cell.kernel,
              new.get_layer("lstm").cell.recurrent_kernel):
        assert np.unique(np.asarray(v)).size <= 4
    assert info["clustered_weights"] == 1236
    assert "not_reached" not in info and "warning" not in info

    signal = keras.Input((16, 2))
    h = keras.layers.Conv1D(8, 3, padding="causal", name="c1")(signal)
    h = keras.layers.DepthwiseConv1D(3, name="dw")(h)  # 24 values: float with 32 clusters
    tcn = keras.Model(signal, keras.layers.Dense(1, name="out")(keras.layers.Flatten()(h)))
    new, info = share(tcn, method="kmeans", clusters=32)
    assert [r["weight"] for r in info["layers"]] == ["c1/kernel", "out/kernel"]
    assert np.unique(np.asarray(new.get_layer("c1").kernel)).size <= 32  # of its 48 values
    assert info["left_float"].startswith("dw/kernel (24): no more values than")
    with pytest.raises(CompressError, match="must be at most the 24 weights of layer "
                                            "'dw', got 32"):
        share(tcn, method="kmeans", clusters=32, layers=["dw"])

    _, info = share(_recurrent_model(), method="kmeans", clusters=4)  # custom layer 'own'
    assert info["not_reached"].startswith("own/w (35): k-means reaches the weights of")
    new.save(tmp_path / "tcn.keras")
    back = keras.models.load_model(tmp_path / "tcn.keras", safe_mode=True)
    x = np.random.default_rng(0).normal(size=(4, 16, 2)).astype("float32")
    np.testing.assert_allclose(back.predict(x, verbose=0), new.predict(x, verbose=0),
                               atol=1e-6)


def test_index_bits_count_a_pruned_kernels_zero_slot(mlp_file):
    """A pruned kernel keeps its zeros as a fixed extra value: 4 clusters and the zero
    are 5 values, stored with 3-bit indices (each layer said so; the top level said 2)."""
    import keras

    from compress.pruning import prune
    from compress.sharing import cluster_model

    path, ds = mlp_file
    pruned, _ = prune(keras.models.load_model(path), None, sparsity=0.5)
    _, info = cluster_model(pruned, ds, clusters=4)
    distinct = max(row["distinct"] for row in info["layers"])
    assert distinct == 5 and info["index_bits"] == 3
