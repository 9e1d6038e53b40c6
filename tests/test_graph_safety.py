"""compress.graph_safety: a SavedModel's graph is read as code, and refused by op name."""

import os
import subprocess
import sys

import numpy as np
import pytest

from compress import io
from compress.errors import CompressError
from compress.graph_safety import PURE_OPS, RESTORE_OPS, SAVE_OPS, read_saved_model, unsafe_ops


def _module_saved_model(folder, extra):
    """A SavedModel whose serving function adds ``extra(x)`` (a side effect) to x @ w."""
    import tensorflow as tf

    class Served(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.ones((4, 2)))

        @tf.function(input_signature=[tf.TensorSpec((None, 4), tf.float32)])
        def serve(self, x):
            return {"out": tf.matmul(x, self.w) + extra(x)}

    served = Served()
    tf.saved_model.save(served, str(folder), signatures={"serving_default": served.serve})
    return folder


def _hostile_bodies(target):
    import tensorflow as tf

    def write(x):
        tf.io.write_file(str(target), "pwned")
        return 0.0

    def read(x):
        return tf.cast(tf.strings.length(tf.io.read_file(str(target))), tf.float32)

    def python(x):
        return tf.py_function(lambda t: t, [x[0, 0]], tf.float32)

    def print_to_file(x):
        tf.print(x, output_stream=f"file://{target}")
        return 0.0

    def save_checkpoint(x):  # the saver's op, but reached from the signature
        tf.raw_ops.SaveV2(prefix=str(target), tensor_names=["x"], shape_and_slices=[""],
                          tensors=[x])
        return 0.0

    return {"WriteFile": write, "ReadFile": read, "EagerPyFunc": python,
            "PrintV2": print_to_file, "SaveV2": save_checkpoint}


@pytest.mark.parametrize("op", ["WriteFile", "ReadFile", "EagerPyFunc", "PrintV2", "SaveV2"])
def test_a_savedmodel_with_a_hostile_op_is_refused_by_name_and_nothing_runs(tmp_path, op):
    target = tmp_path / "pwned.txt"
    folder = _module_saved_model(tmp_path / "sm", _hostile_bodies(target)[op])
    assert op in {found for found, _ in unsafe_ops(read_saved_model(folder))}
    with pytest.raises(CompressError) as err:
        io.load_model(folder)
    message = str(err.value)
    assert f"'{op}'" in message and "--unsafe" in message and "\n" not in message
    assert not target.exists()  # refused before TensorFlow loaded (or ran) anything


def test_unsafe_loads_a_savedmodel_the_user_trusts(tmp_path):
    folder = _module_saved_model(tmp_path / "sm", _hostile_bodies(tmp_path / "t")["ReadFile"])
    (tmp_path / "t").write_text("abc")
    model = io.load_model(folder, unsafe=True)
    assert model.predict(np.ones((1, 4), "float32"), verbose=0).shape == (1, 2)


def _keras_models():
    import keras

    mlp = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                            keras.layers.Dense(16, activation="relu"),
                            keras.layers.Dropout(0.2),
                            keras.layers.Dense(10, activation="softmax")])
    cnn = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, padding="same"),
                            keras.layers.BatchNormalization(), keras.layers.ReLU(),
                            keras.layers.DepthwiseConv2D(3), keras.layers.MaxPooling2D(),
                            keras.layers.GlobalAveragePooling2D(),
                            keras.layers.Dense(10, activation="softmax")])
    rnn = keras.Sequential([keras.Input((6, 3)), keras.layers.LSTM(5, return_sequences=True),
                            keras.layers.GRU(4), keras.layers.LayerNormalization(),
                            keras.layers.Dense(3, activation="softmax")])
    tokens = keras.Input((7,), dtype="int32")
    embedded = keras.layers.Embedding(50, 8)(tokens)
    attended = keras.layers.MultiHeadAttention(2, 4)(embedded, embedded)
    text = keras.Model(tokens, keras.layers.Dense(3, activation="softmax")(
        keras.layers.GlobalAveragePooling1D()(attended)))
    return {"mlp": (mlp, (2, 8, 8, 1)), "cnn": (cnn, (2, 8, 8, 1)), "rnn": (rnn, (2, 6, 3)),
            "attention": (text, (2, 7))}


@pytest.mark.parametrize("name", ["mlp", "cnn", "rnn", "attention"])
def test_keras_exports_pass_and_load(tmp_path, name):
    import tensorflow as tf

    model, shape = _keras_models()[name]
    x = np.ones(shape, "int32" if name == "attention" else "float32")
    exported = tmp_path / "exported"
    model.export(str(exported), verbose=False)
    saved = tmp_path / "saved"
    tf.saved_model.save(model, str(saved))
    for folder in (exported, saved):
        assert unsafe_ops(read_saved_model(folder)) == [], folder.name
    loaded = io.load_model(exported)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_a_keras2_savedmodel_passes(tmp_path):
    pytest.importorskip("tf_keras")
    folder = tmp_path / "k2"
    script = (
        "import tf_keras as k\n"
        "m = k.Sequential([k.layers.Conv2D(4, 3, input_shape=(8, 8, 1)),"
        " k.layers.BatchNormalization(), k.layers.Flatten(),"
        " k.layers.Dense(3, activation='softmax')])\n"
        f"m.save(r'{folder}')\n")
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run([sys.executable, "-c", script], check=True, env=env, capture_output=True)
    assert unsafe_ops(read_saved_model(folder)) == []
    assert io.load_model(folder).predict(np.ones((1, 8, 8, 1), "float32"),
                                         verbose=0).shape == (1, 3)


def test_every_allowed_op_is_a_real_tensorflow_op():
    import tensorflow as tf  # noqa: F401 - registers the ops
    from tensorflow.python.framework import op_def_registry

    unknown = sorted(op for op in PURE_OPS | RESTORE_OPS | SAVE_OPS
                     if op_def_registry.get(op) is None)
    assert unknown == []


def _graph(nodes=(), functions=(), saver=("save", "restore")):
    """A SavedModel proto by hand: nodes (name, op, inputs, called function), functions
    (name, ops, called functions) and the saver's save and restore node names."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    meta = proto.meta_graphs.add()
    meta.saver_def.save_tensor_name = f"{saver[0]}:0"
    meta.saver_def.restore_op_name = saver[1]
    for name, op, inputs, call in nodes:
        node = meta.graph_def.node.add(name=name, op=op, input=list(inputs))
        if call:
            node.attr["f"].func.name = call
    for name, ops, calls in functions:
        function = meta.graph_def.library.function.add()
        function.signature.name = name
        for i, op in enumerate(ops):
            function.node_def.add(name=f"n{i}", op=op)
        for i, callee in enumerate(calls):
            node = function.node_def.add(name=f"c{i}", op="PartitionedCall")
            node.attr["f"].func.name = callee
    return proto


def _saver_nodes(save_fn="save_fn", restore_fn="restore_fn"):
    return [("filename", "Placeholder", [], None),
            ("save", "StatefulPartitionedCall", ["filename"], save_fn),
            ("restore", "StatefulPartitionedCall", ["filename"], restore_fn),
            ("serving", "StatefulPartitionedCall", [], "serve_fn")]


def test_checkpoint_ops_only_where_the_saver_alone_reaches_them():
    functions = [("save_fn", ["SaveV2", "MergeV2Checkpoints", "StringJoin"], []),
                 ("restore_fn", ["RestoreV2", "AssignVariableOp"], []),
                 ("serve_fn", ["MatMul"], [])]
    assert unsafe_ops(_graph(_saver_nodes(), functions)) == []
    # Restoring never saves: SaveV2 under the restore op is refused.
    functions[1] = ("restore_fn", ["RestoreV2", "SaveV2"], [])
    assert unsafe_ops(_graph(_saver_nodes(), functions)) == [("SaveV2", "restore_fn")]
    # A function the signature also calls gets no allowance, whoever else calls it.
    functions = [("save_fn", [], ["shared"]), ("restore_fn", [], []),
                 ("serve_fn", ["MatMul"], ["shared"]), ("shared", ["SaveV2"], [])]
    assert unsafe_ops(_graph(_saver_nodes(), functions)) == [("SaveV2", "shared")]
    # A function nothing in the graph calls may be called through the object graph.
    functions = [("save_fn", [], []), ("restore_fn", [], []), ("serve_fn", [], []),
                 ("orphan", ["RestoreV2"], [])]
    assert unsafe_ops(_graph(_saver_nodes(), functions)) == [("RestoreV2", "orphan")]


def test_top_level_nodes_and_direct_calls_are_checked():
    functions = [("save_fn", [], []), ("restore_fn", [], []), ("serve_fn", [], []),
                 ("direct", ["WriteFile"], [])]
    nodes = _saver_nodes() + [("evil", "SaveV2", [], None),
                              ("uses_evil", "Identity", ["^evil"], None),
                              ("call", "direct", [], None)]
    assert unsafe_ops(_graph(nodes, functions)) == [("SaveV2", "graph"), ("WriteFile", "direct")]
    # A file op hung under the restore op runs when a TF1-style model loads: refused.
    nodes = _saver_nodes() + [("write", "WriteFile", [], None)]
    nodes[2] = ("restore", "StatefulPartitionedCall", ["filename", "^write"], "restore_fn")
    assert unsafe_ops(_graph(nodes, functions[:3])) == [("WriteFile", "graph")]
    # Unknown and custom ops are refused like file I/O.
    nodes = _saver_nodes() + [("custom", "MyCustomOp", [], None)]
    assert unsafe_ops(_graph(nodes, functions[:3])) == [("MyCustomOp", "graph")]


def test_a_broken_saved_model_pb_is_one_line(tmp_path):
    folder = tmp_path / "sm"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"\xff\xff not a protobuf")
    with pytest.raises(CompressError, match="could not read saved_model.pb"):
        io.load_model(folder)


def test_a_savedmodel_with_two_inputs_and_two_outputs_loads_and_exports(tmp_path, cli):
    # The wrapper fed one tensor to the signature ("Could not automatically infer the
    # output shape", cut off mid-sentence) and kept the first output only; both outputs
    # came from one layer, so Keras named them alike and the export check lost one.
    import json

    import keras

    a, b = keras.Input((6,), name="a"), keras.Input((3,), name="b")
    h = keras.layers.Concatenate()([a, b])
    model = keras.Model([a, b], [keras.layers.Dense(4, activation="softmax", name="cls")(h),
                                 keras.layers.Dense(1, name="score")(h)])
    folder = tmp_path / "two_sm"
    model.export(str(folder), format="tf_saved_model", verbose=False)
    loaded = io.load_model(folder)
    x = {"a": np.ones((2, 6), "float32"), "b": np.zeros((2, 3), "float32")}
    got = loaded.predict(x, verbose=0)
    want = model.predict([x["a"], x["b"]], verbose=0)
    assert sorted(got) == ["output_0", "output_1"]
    np.testing.assert_allclose(got["output_0"], want[0], atol=1e-6)
    np.testing.assert_allclose(got["output_1"], want[1], atol=1e-6)
    result = cli("export", folder, "-o", tmp_path / "two.onnx", "--json", "-q")
    assert result.exit_code == 0, result.output
    check = json.loads(result.output)
    assert sorted(check["outputs"]) == ["output_0", "output_1"]
    assert all(o["max_abs_diff"] <= o["tolerance"] for o in check["outputs"].values())
