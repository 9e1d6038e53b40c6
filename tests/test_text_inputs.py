"""Models that keep state outside their weights, as users build them from the keras.io
guides: an end-to-end text classifier (string input, ``TextVectorization`` inside) and a
tabular model (a ``StringLookup`` on a string column, an adapted ``Normalization``).

Before: a string array in an ``.npz`` was refused, ``inspect`` crashed on a string input,
every copy a pass made of such a model lost its vocabulary ("Table not initialized", or
a saved file with an empty one that does not load), and every copy of an adapted
``Normalization`` normalized with mean 0 and variance 1 while its weights held the real
statistics: reports and fine-tuning saw raw features (a k-means copy of a 99%-accurate
tabular model was reported at 48.5%; the file it wrote scored 100%).
"""

from __future__ import annotations

import numpy as np
import pytest


def _text_model(tmp_path):
    import keras
    import tensorflow as tf
    from keras import layers

    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    words = [f"w{i}" for i in range(60)]
    y = rng.integers(0, 2, size=400)
    x = np.array([" ".join(list(rng.choice(words, size=8)) + ["good" if t else "bad"] * 2)
                  for t in y])[:, None]
    vectorize = layers.TextVectorization(max_tokens=80, output_sequence_length=12,
                                         name="vectorize")
    vectorize.adapt(x[:, 0])
    inp = keras.Input((1,), dtype="string", name="text")
    h = layers.Embedding(80, 8, name="embed")(vectorize(inp))
    h = layers.GlobalAveragePooling1D(name="pool")(h)
    h = layers.Dense(16, activation="relu", name="hidden")(h)
    model = keras.Model(inp, layers.Dense(2, activation="softmax", name="out")(h),
                        name="text_model")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(tf.constant(x), y, epochs=12, verbose=0)
    path = tmp_path / "text.keras"
    model.save(path)
    data = tmp_path / "text.npz"
    np.savez(data, x_train=x[:300], y_train=y[:300], x_test=x[300:], y_test=y[300:])
    return path, data, x[300:], y[300:]


def _tabular_model(tmp_path):
    import keras
    import tensorflow as tf
    from keras import layers

    rng = np.random.default_rng(1)
    keras.utils.set_random_seed(1)
    n = 600
    city = rng.choice(["paris", "rome", "oslo", "lima"], size=n)[:, None]
    age = rng.normal(40, 12, size=(n, 1)).astype("float32")  # far from mean 0, var 1
    y = (np.isin(city[:, 0], ["paris", "oslo"]) ^ (age[:, 0] > 45)).astype("int64")
    lookup = layers.StringLookup(output_mode="one_hot", name="city_lookup")
    lookup.adapt(city)
    norm = layers.Normalization(name="age_norm")
    norm.adapt(age)
    ci, ai = keras.Input((1,), dtype="string", name="city"), keras.Input((1,), name="age")
    h = layers.Concatenate()([layers.Flatten()(lookup(ci)), norm(ai)])
    h = layers.Dense(32, activation="relu", name="hidden")(h)
    model = keras.Model({"city": ci, "age": ai},
                        layers.Dense(2, activation="softmax", name="out")(h), name="tab")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit({"city": tf.constant(city), "age": age}, y, epochs=40, verbose=0)
    path = tmp_path / "tab.keras"
    model.save(path)
    data = tmp_path / "tab.npz"
    np.savez(data, **{"x_train/city": city[:450], "x_train/age": age[:450],
                      "y_train": y[:450], "x_test/city": city[450:],
                      "x_test/age": age[450:], "y_test": y[450:]})
    return path, data, {"city": city[450:], "age": age[450:]}, y[450:]


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    """The text model's file, its npz, and its test split (built once for the file)."""
    return _text_model(tmp_path_factory.mktemp("text"))


@pytest.fixture(scope="module")
def tabular_files(tmp_path_factory):
    """The tabular model's file, its npz, and its test split (built once for the file)."""
    return _tabular_model(tmp_path_factory.mktemp("tabular"))


def _accuracy(path, x, y) -> float:
    import keras
    import tensorflow as tf

    from compress.layers import register_layers

    register_layers()
    model = keras.models.load_model(path)
    x = {k: tf.constant(v) for k, v in x.items()} if isinstance(x, dict) else tf.constant(x)
    return float(np.mean(np.argmax(np.asarray(model(x)), axis=-1) == y))


def test_a_copy_of_an_adapted_normalization_normalizes_as_the_original(tabular_files):
    import keras

    from compress import training
    from compress.pruning import graph

    path, _, x, _ = tabular_files
    model = keras.models.load_model(path)
    want = np.asarray(model(x))
    copy = training.copy_model(model)
    np.testing.assert_allclose(np.asarray(copy(x)), want, atol=1e-6)
    rebuilt, mapping = graph.rebuild(model, lambda op: op.__class__.from_config(
        op.get_config()))
    for layer in model.layers:
        if id(layer) in mapping and layer.weights:
            mapping[id(layer)].set_weights(layer.get_weights())
    np.testing.assert_allclose(np.asarray(rebuilt(x)), want, atol=1e-6)
    assert copy.get_layer("city_lookup").get_vocabulary() == \
        model.get_layer("city_lookup").get_vocabulary()


def test_tabular_model_with_a_string_column_reports_what_its_file_scores(
        tmp_path, cli, tabular_files):
    import json

    path, data, x, y = tabular_files
    before = _accuracy(path, x, y)
    assert before > 0.9
    for name, command, floor in (("k", ["share", "--method", "kmeans", "--clusters", "8"],
                                  0.05),  # it was 0.485 with the copy's raw ages
                                 ("p", ["prune", "--sparsity", "0.5", "--epochs", "2"], 0.1)):
        out = tmp_path / f"{name}.keras"
        result = cli(command[0], path, "-o", out, "--data", f"npz:{data}", "--json",
                     *command[1:])
        assert result.exit_code == 0, result.output
        reported = json.loads(result.output)["after"]["accuracy"]
        assert reported == pytest.approx(_accuracy(out, x, y), abs=1e-9)
        assert reported > before - floor


def test_a_text_model_goes_through_the_keras_passes_with_its_vocabulary(tmp_path, cli, text_files):
    import json

    import keras

    path, data, x, y = text_files
    vocabulary = keras.models.load_model(path).get_layer("vectorize").get_vocabulary()
    result = cli("inspect", path)  # no data: timed on a sentence
    assert result.exit_code == 0, result.output
    assert "latency b=1" in result.output
    before = _accuracy(path, x, y)
    assert before > 0.9
    runs = {"prune": ["prune", "--sparsity", "0.5", "--epochs", "1"],
            "obs": ["prune", "--method", "obs", "--sparsity", "0.5"],
            "kmeans": ["share", "--method", "kmeans", "--clusters", "16"],
            "hash": ["share", "--method", "hash", "--factor", "0.5", "--epochs", "4"],
            "cascade": ["cascade"],
            "distill": ["distill", "--width", "0.5", "--epochs", "8", "--temperature", "1"],
            "keras-int8": ["quantize", "--mode", "keras-int8"]}
    for name, (command, *options) in runs.items():
        out = tmp_path / f"{name}.keras"
        result = cli(command, path, "-o", out, "--data", f"npz:{data}", "--json", *options)
        assert result.exit_code == 0, (name, result.output)
        assert keras.models.load_model(out).get_layer("vectorize").get_vocabulary() == \
            vocabulary, name
        assert _accuracy(out, x, y) > 0.8, name
        info = json.loads(result.output)
        reported = info["after"]["accuracy"] if "after" in info else info.get("accuracy")
        if name != "distill":  # its report is teacher, student alone, distilled
            assert reported == pytest.approx(_accuracy(out, x, y), abs=1e-9), name


def test_strings_and_numbers_given_to_the_wrong_input_are_one_line(tmp_path, cli, text_files):
    path, *_ = text_files
    numbers = tmp_path / "numbers.npz"
    np.savez(numbers, x_train=np.zeros((20, 1), "float32"), y_train=np.zeros(20, "int64"))
    out = tmp_path / "p.keras"
    result = cli("prune", path, "-o", out, "--data", f"npz:{numbers}")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        f"error: npz:{numbers}: model input (1,) takes strings, but the data holds float32 "
        "numbers; give the text (a NumPy str array)")
    assert not out.exists()
    text = tmp_path / "t.npz"
    np.savez(text, x_train=np.array([["a b"]] * 20), y_train=np.zeros(20, "int64"))
    mlp = tmp_path / "mlp.keras"
    import keras

    keras.Sequential([keras.Input((1,)), keras.layers.Dense(2)]).save(mlp)
    result = cli("prune", mlp, "-o", out, "--data", f"npz:{text}")
    assert result.exit_code == 1
    assert "the data holds strings, but model input (1,) takes float32" in result.output
    assert not out.exists()


def test_a_one_unit_sigmoid_teacher_distills():
    """A binary head of one sigmoid unit (labels 0/1, one per sample) crashed distill:
    its own loss was called on labels of shape (batch,) against outputs (batch, 1)."""
    import keras

    from compress import distill

    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    x = rng.normal(size=(600, 10)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int64")
    teacher = keras.Sequential([keras.Input((10,)), keras.layers.Dense(16, activation="relu"),
                                keras.layers.Dense(1, activation="sigmoid")])
    teacher.compile("adam", "binary_crossentropy", metrics=["accuracy"])
    teacher.fit(x, y, epochs=10, verbose=0)
    student, _ = distill(teacher, (x, y), width=0.5, epochs=20, alpha=0.5, learning_rate=0.01)
    assert student.layers[-1].units == 1 and student.layers[0].units == 8
    p = np.asarray(student(x[:200]))[:, 0]
    assert np.mean((p > 0.5) == y[:200]) > 0.85


def test_a_text_model_becomes_int8_tflite_from_its_token_ids(tmp_path, cli, text_files):
    """Without the option the lookup layer is refused in one line that names the option;
    with it the artifact starts at the TextVectorization's output, and fed the ids that
    layer of the saved model gives, LiteRT agrees with the whole Keras model on text."""
    import keras
    import tensorflow as tf

    from compress.runtime import run_artifact

    path, data, x, _ = text_files
    out = tmp_path / "t.tflite"
    refused = cli("quantize", path, "-o", out, "--data", f"npz:{data}")
    assert refused.exit_code == 1 and not out.exists()
    assert refused.output.strip().splitlines()[-1].endswith(
        "tflite needs the model without it: add --without-lookups to start the artifact "
        "at its output (the layer then runs in your input pipeline)")
    result = cli("quantize", path, "-o", out, "--data", f"npz:{data}", "--without-lookups",
                 "--json")
    assert result.exit_code == 0, result.output
    import json

    info = json.loads(result.output)
    assert info["lookups_note"].startswith(
        "the artifact starts after the lookup layers 'vectorize' (TextVectorization: int64 "
        "(12,))")
    model = keras.models.load_model(path)
    ids = np.asarray(model.get_layer("vectorize")(tf.constant(x)))
    got = run_artifact(out.read_bytes(), ids, fmt="tflite")
    want = np.asarray(model(tf.constant(x)))
    assert np.mean(np.argmax(got, -1) == np.argmax(want, -1)) >= 0.99
    assert info["top1_agreement"] >= 0.99


def test_a_tabular_model_exports_to_onnx_from_its_lookup_outputs(tmp_path, cli, tabular_files):
    import keras
    import onnxruntime as ort
    import tensorflow as tf

    path, data, x, _ = tabular_files
    out = tmp_path / "tab.onnx"
    result = cli("export", path, "-o", out, "--data", f"npz:{data}", "--without-lookups")
    assert result.exit_code == 0, result.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sorted(i.name for i in session.get_inputs()) == ["age", "city_lookup"]
    model = keras.models.load_model(path)
    feed = {"age": x["age"].astype("float32"),
            "city_lookup": np.asarray(model.get_layer("city_lookup")(tf.constant(x["city"])),
                                      "float32")}
    got = session.run(None, feed)[0]
    want = np.asarray(model({k: tf.constant(v) for k, v in x.items()}))
    np.testing.assert_allclose(got, want, atol=1e-5)
    mlp = tmp_path / "mlp.keras"
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save(mlp)
    refused = cli("export", mlp, "-o", tmp_path / "m.onnx", "--without-lookups")
    assert refused.exit_code == 1 and not (tmp_path / "m.onnx").exists()
    assert "--without-lookups: it has no lookup layer" in refused.output


def test_without_lookups_leaves_the_users_model_as_it_was(tabular_files):
    """Cutting the graph at the lookups' outputs added nodes to the user's layers, and a
    later pass on the same model object failed ("could not find node key")."""
    import keras

    from compress import quantize
    from compress.data import load_data, prepare
    from compress.export import export_artifact

    path, data, *_ = tabular_files
    model = keras.models.load_model(path)
    nodes = {la.name: len(la._inbound_nodes) for la in model.layers}
    ds = prepare(model, load_data(f"npz:{data}", 0))
    export_artifact(model, ds, format="onnx", samples=16, without_lookups=True)
    assert {la.name: len(la._inbound_nodes) for la in model.layers} == nodes
    _, info = quantize(model, ds, mode="keras-int8", format="keras", latency=False)
    assert info["top1_agreement"] > 0.95


def test_an_efficientnet_copy_normalizes_with_its_own_statistics(tmp_path):
    """keras.applications EfficientNet normalizes its input inside, with statistics that
    come with its weights (ImageNet's). Every copy a pass made of a loaded EfficientNet
    normalized with mean 0 and variance 1 instead: its normalized input was off by 2.1."""
    import keras

    from compress import training

    model = keras.applications.EfficientNetB0(weights=None, input_shape=(32, 32, 3),
                                              classes=4)
    norm = next(la for la in model.layers if isinstance(la, keras.layers.Normalization))
    norm.set_weights([np.array([0.485, 0.456, 0.406], "float32"),
                      np.array([0.229, 0.224, 0.225], "float32") ** 2, np.array(0)])
    model.save(tmp_path / "eff.keras")
    model = keras.models.load_model(tmp_path / "eff.keras")
    copy = training.copy_model(model)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    layer = model.get_layer(norm.name)
    want = keras.Model(model.input, layer.output)(x)
    got = keras.Model(copy.input, copy.get_layer(norm.name).output)(x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
    assert float(np.abs(np.asarray(want)).max()) > 1.0


def test_keras_int8_of_a_tabular_model_with_several_inputs(tmp_path, cli, tabular_files):
    """It crashed when timing ('dict' object has no attribute 'shape')."""
    import json

    path, data, x, y = tabular_files
    out = tmp_path / "q.keras"
    result = cli("quantize", path, "-o", out, "--mode", "keras-int8", "--data",
                 f"npz:{data}", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["latency_ms"]["1"] > 0
    assert info["accuracy"] == pytest.approx(_accuracy(out, x, y), abs=1e-9)


def test_text_as_an_object_array_from_pandas_is_text(text_files):
    """A pandas column's ``.values`` is an object array of Python strings."""
    import keras

    from compress import prune

    path, _, x, y = text_files
    model = keras.models.load_model(path)
    column = np.array([s for s in x[:, 0]], dtype=object)[:, None]
    pruned, info = prune(model, (column, y), sparsity=0.5)
    assert info["sparsity_reached"] == pytest.approx(0.5, abs=0.01)
    import tensorflow as tf

    agree = np.argmax(np.asarray(pruned(tf.constant(x))), -1) == \
        np.argmax(np.asarray(model(tf.constant(x))), -1)
    assert agree.mean() > 0.8


def test_a_recipe_takes_a_text_model_to_int8_tflite(tmp_path, cli, text_files):
    """The recipe's report ran the artifact on the strings it does not take."""
    import json

    path, data, _, _ = text_files
    recipe = tmp_path / "text.yaml"
    recipe.write_text(f"name: text\nseed: 0\ndata: npz:{data}\nmodel: {path}\nsteps:\n"
                      "  - prune: {sparsity: 0.5, epochs: 1}\n"
                      "  - quantize: {mode: int8, format: tflite, without_lookups: true}\n")
    out = tmp_path / "run"
    result = cli("run", recipe, "-o", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    after = report["steps"][-1]["after"]
    assert after["name"].endswith("(tflite)") and after["accuracy"] > 0.9


def test_without_lookups_refuses_a_stream_in_one_line(text_files):
    import keras
    import tensorflow as tf

    from compress.errors import CompressError
    from compress.export import export_artifact

    path, _, x, y = text_files
    stream = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    with pytest.raises(CompressError, match="--without-lookups maps the data through the "
                                            "lookup layers in memory; give arrays"):
        export_artifact(keras.models.load_model(path), stream, format="onnx",
                        without_lookups=True)
