"""``--keep-float auto``: while the int8 artifact disagrees with its float model, the
layer that loses most in TFLite's per-op debugger is kept float and the model converted
again; a layer that does not help is put back."""

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def offset_logits(tmp_path_factory):
    """A classifier whose logits sit near 1000 and differ by a few tenths: one int8 scale
    for that output rounds them all alike (top-1 agreement falls apart), while every
    hidden layer quantizes well. Saved, with labels, as a user would have them."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((8,))
    hidden = keras.layers.Dense(16, activation="relu", name="fc1")(inp)
    out = keras.layers.Dense(4, name="out")(hidden)
    model = keras.Model(inp, out, name="offset")
    w, b = model.get_layer("out").get_weights()
    model.get_layer("out").set_weights([w * 0.2, b + 1000.0])
    x = np.random.default_rng(0).normal(size=(320, 8)).astype("float32")
    y = np.argmax(model.predict(x, verbose=0), -1).astype("int32")
    folder = tmp_path_factory.mktemp("offset")
    model.save(folder / "m.keras")
    np.savez(folder / "d.npz", x_train=x[:256], y_train=y[:256], x_test=x[256:],
             y_test=y[256:])
    return folder / "m.keras", f"npz:{folder / 'd.npz'}"


def _json(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_auto_keeps_float_the_layer_that_makes_the_artifact_agree(cli, offset_logits,
                                                                 tmp_path):
    path, data = offset_logits
    plain = _json(cli("quantize", path, "-o", tmp_path / "a.tflite", "--data", data,
                      "--no-latency", "--json"))
    assert not plain["verified"] and plain["top1_agreement"] < 0.9  # flagged as it is
    auto = _json(cli("quantize", path, "-o", tmp_path / "b.tflite", "--data", data,
                     "--no-latency", "--keep-float", "auto", "--json", "--strict"))
    assert auto["verified"] and auto["top1_agreement"] >= 0.9  # --strict: written
    report = auto["keep_float_auto"]
    assert report["layers"] == auto["kept_float_layers"] and "out" in report["layers"]
    assert report["conversions"] == 1 + len(report["layers"]) + len(report["put_back"])
    assert report["verified"]
    assert "note" not in report and "out" not in report["put_back"]
    # the written files are the ones measured: one fully connected op computes in float
    # in the second, none in the first
    assert _float_matmuls(tmp_path / "a.tflite") == 0
    assert _float_matmuls(tmp_path / "b.tflite") == len(report["layers"])


def test_strict_refuses_the_artifact_that_fails_its_check_and_writes_nothing(
        cli, offset_logits, tmp_path):
    # Without --strict the flagged artifact is written with a warning, exit 0: a script
    # chaining `compress quantize ... && deploy` shipped it.
    path, data = offset_logits
    out = tmp_path / "s.tflite"
    run = cli("quantize", path, "-o", out, "--data", data, "--no-latency", "--strict")
    assert run.exit_code == 1 and not out.exists() and list(tmp_path.iterdir()) == []
    line = run.output.strip().splitlines()[-1]
    assert line.startswith("error: --strict: the int8 tflite artifact disagrees with its "
                           "float model on ") and line.endswith("; nothing was written")
    # what passes its check is written: --keep-float auto --strict, in the test above


def _float_matmuls(path) -> int:
    from compress.runtime import tflite_interpreter

    interp = tflite_interpreter(path.read_bytes())
    types = {t["index"]: t["dtype"] for t in interp.get_tensor_details()}
    return sum(types[op["outputs"][0]] == np.float32 for op in interp._get_ops_details()
               if op["op_name"] == "FULLY_CONNECTED")


def test_auto_says_so_when_nothing_needs_to_stay_float_and_refuses_names_beside_it(
        cli, mlp_file, tmp_path):
    path, _ = mlp_file
    run = cli("quantize", path, "-o", tmp_path / "m.tflite", "--data", "digits",
              "--no-latency", "--keep-float", "auto")
    assert run.exit_code == 0, run.output
    text = " ".join(run.output.split())
    assert "--keep-float auto: the all-int8 artifact passed its check: no layer kept " \
        "float" in text and "kept float (--keep-float" not in text
    run = cli("quantize", path, "-o", tmp_path / "n.tflite", "--data", "digits",
              "--keep-float", "auto,fc1")
    assert run.exit_code == 1 and not (tmp_path / "n.tflite").exists()
    assert run.output.strip().splitlines()[-1].endswith(
        "--keep-float auto picks the layers itself; give auto alone, or layer names")


def test_auto_finds_the_same_layer_for_an_onnx_artifact(cli, offset_logits, tmp_path):
    """ONNX has no per-op debugger here: TFLite's ranking of the same model orders the
    layers tried, each kept float with onnxruntime's nodes_to_exclude."""
    path, data = offset_logits
    auto = _json(cli("quantize", path, "-o", tmp_path / "m.onnx", "--data", data,
                     "--no-latency", "--keep-float", "auto", "--json"))
    assert auto["verified"] and "out" in auto["keep_float_auto"]["layers"]


@pytest.fixture(scope="module")
def auto_named(tmp_path_factory):
    """A Sequential whose Dense layers have Keras's own names (dense, dense_1, ...) and
    kernels of distinct shapes, saved with data."""
    import keras

    keras.utils.set_random_seed(0)
    names = ["dense", "dense_1", "dense_2", "dense_3"]  # Keras's own, in a fresh process
    model = keras.Sequential([keras.Input((8,))] + [
        keras.layers.Dense(units, activation="relu", name=name)
        for units, name in zip((16, 12, 10), names)] + [keras.layers.Dense(4, name=names[3])])
    x = np.random.default_rng(0).normal(size=(160, 8)).astype("float32")
    y = np.argmax(model.predict(x, verbose=0), -1).astype("int32")
    folder = tmp_path_factory.mktemp("named")
    model.save(folder / "m.keras")
    np.savez(folder / "d.npz", x_train=x[:128], y_train=y[:128], x_test=x[128:],
             y_test=y[128:])
    return folder / "m.keras", f"npz:{folder / 'd.npz'}"


def _float_kernels(path) -> list:
    """The shapes of the 2-D float32 weights (kernels left float) of an artifact."""
    if str(path).endswith(".onnx"):
        import onnx
        from onnx import numpy_helper

        return sorted(tuple(numpy_helper.to_array(t).shape)
                      for t in onnx.load(str(path)).graph.initializer
                      if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2)
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
    graph, buffers = model.subgraphs[0], model.buffers
    return sorted(tuple(t.shape) for t in graph.tensors if len(t.shape) == 2
                  and t.type == 0 and buffers[t.buffer].data is not None
                  and len(buffers[t.buffer].data))


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_keep_float_keeps_the_named_layer_and_no_other(cli, auto_named, tmp_path, fmt):
    """The converter scopes ``dense`` and ``dense_1`` as ``dense_1/`` and ``dense_1_2/``:
    ``--keep-float dense_1`` took both (two float kernels) before the scopes were told
    apart by the model's layer names."""
    path, data = auto_named
    out = tmp_path / f"k.{fmt}"
    report = _json(cli("quantize", path, "-o", out, "--data", data, "--no-latency",
                       "--keep-float", "dense_1", "--json"))
    assert report["kept_float_layers"] == ["dense_1"]
    kernel = (16, 12) if fmt == "onnx" else (12, 16)  # TFLite stores (units, inputs)
    assert _float_kernels(out) == [kernel]
