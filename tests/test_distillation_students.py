"""compress.distillation.students: width and depth students derived from a teacher."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from compress.distillation import depth_student, make_student, width_student
from compress.errors import CompressError
from compress.models import build


def _units(model):
    return {layer.name: layer.get_config().get("units", layer.get_config().get("filters"))
            for layer in model.layers}


def test_width_student_scales_hidden_layers_and_keeps_the_output():
    teacher = build("lenet300")
    student = width_student(teacher, 0.25)
    assert _units(student)["fc1"] == 75 and _units(student)["fc2"] == 25
    assert _units(student)["predictions"] == 10
    assert student.layers[-1].activation.__name__ == "softmax"
    assert student.count_params() < 0.25 * teacher.count_params()  # 784 inputs stay
    assert tuple(student.outputs[0].shape) == tuple(teacher.outputs[0].shape)
    assert _units(teacher)["fc1"] == 300  # teacher untouched
    assert student.name == "lenet300_w0.25"


def test_width_student_of_a_functional_cnn_with_batchnorm():
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv1")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(10, activation="softmax", name="predictions")(x)
    teacher = keras.Model(inp, out, name="cnn")
    student = width_student(teacher, 0.5)
    assert student.get_layer("conv1").filters == 8
    assert student.get_layer("bn1").gamma.shape == (8,)
    x = np.random.default_rng(0).random((4, 8, 8, 1), dtype=np.float32)
    assert np.asarray(student(x)).shape == (4, 10)


def test_width_student_has_fresh_weights_and_keeps_layer_constraints():
    teacher = keras.Sequential([
        keras.Input((16,)),
        keras.layers.Dense(20, activation="relu", kernel_constraint="non_neg", name="fc1"),
        keras.layers.Dense(3, activation="softmax", name="out")])
    student = width_student(teacher, 1.0)
    assert isinstance(student.get_layer("fc1").kernel.constraint, keras.constraints.NonNeg)
    assert not np.array_equal(np.asarray(student.get_layer("fc1").kernel),
                              np.asarray(teacher.get_layer("fc1").kernel))


@pytest.mark.parametrize("width", [0.0, -0.5, 5.0, "half"])
def test_width_out_of_range(width):
    with pytest.raises(CompressError, match="width"):
        width_student(build("lenet300"), width)


def test_depth_student_drops_the_deepest_hidden_blocks():
    teacher = keras.Sequential([
        keras.Input((28, 28, 1)), keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(64, name="fc1"), keras.layers.BatchNormalization(name="bn1"),
        keras.layers.ReLU(name="relu1"), keras.layers.Dropout(0.2, name="drop1"),
        keras.layers.Dense(32, activation="relu", name="fc2"),
        keras.layers.Dropout(0.2, name="drop2"),
        keras.layers.Dense(16, activation="relu", name="fc3"),
        keras.layers.Dense(10, activation="softmax", name="predictions")], name="deep")
    one = depth_student(teacher, drop=1)
    assert [lay.name for lay in one.layers] == ["flatten", "fc1", "bn1", "relu1", "drop1",
                                                "fc2", "drop2", "predictions"]
    two = depth_student(teacher, drop=2)
    assert [lay.name for lay in two.layers] == ["flatten", "fc1", "bn1", "relu1", "drop1",
                                                "predictions"]
    named = depth_student(teacher, drop=["fc1"])
    assert [lay.name for lay in named.layers] == ["flatten", "fc2", "drop2", "fc3",
                                                  "predictions"]
    assert two.count_params() < one.count_params() < teacher.count_params()
    assert tuple(named.outputs[0].shape) == (None, 10)
    with pytest.raises(CompressError, match="depth 3: the student can drop at most 2 of "
                                            "the teacher's 3 hidden blocks"):
        depth_student(teacher, drop=3)
    with pytest.raises(CompressError, match="'predictions' is not a hidden"):
        depth_student(teacher, drop=["predictions"])


def test_a_depth_out_of_range_says_how_many_blocks_can_go():
    """It said "can drop 1 to 0 of the 1 hidden blocks" for a teacher with one block."""
    one_block = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                  keras.layers.Dense(16, name="fc1"),
                                  keras.layers.Dense(10, activation="softmax")], name="small")
    with pytest.raises(CompressError, match=r"depth 1: teacher 'small' has 1 hidden block\(s\) "
                                            "and a student keeps at least one, so none can be "
                                            "dropped"):
        depth_student(one_block, drop=1)


def test_depth_student_of_a_cnn_adapts_the_next_layer():
    teacher = build("lenet5")
    student = depth_student(teacher, drop=1)  # removes fc1: Flatten feeds the output
    assert "fc1" not in [lay.name for lay in student.layers]
    x = np.zeros((2, 28, 28, 1), dtype=np.float32)
    assert np.asarray(student(x)).shape == (2, 10)


def test_depth_student_refuses_functional_models():
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Dense(3)(inp)))
    with pytest.raises(CompressError, match="Sequential"):
        depth_student(model, 1)


def test_make_student_picks_one_source():
    teacher = build("lenet300")
    assert make_student(teacher).get_layer("fc1").units == 75
    assert make_student(teacher, width=0.5).get_layer("fc1").units == 150
    assert len(make_student(teacher, depth=1).layers) == len(teacher.layers) - 1
    given = build("lenet300", width=0.1)
    assert make_student(teacher, student=given) is given
    with pytest.raises(CompressError, match="not width and depth"):
        make_student(teacher, width=0.5, depth=1)


def test_a_width_no_layer_config_holds_is_refused_in_one_line():
    """A fixed tensor added in the graph keeps the teacher's width: the half-width copy
    crashed with Keras's broadcast error ("unexpected ValueError")."""
    import tensorflow as tf

    inp = keras.Input((10,), dtype="int32")
    h = keras.layers.Dense(8)(keras.layers.Embedding(20, 8)(inp)) + tf.zeros((10, 8))
    teacher = keras.Model(inp, keras.layers.Dense(2, activation="softmax")(
        keras.layers.Flatten()(h)), name="fixed")
    with pytest.raises(CompressError) as refused:
        width_student(teacher, 0.5)
    text = str(refused.value)
    assert text.startswith("teacher 'fixed': its 0.5-wide copy does not build (Add: ")
    assert "give --student FILE" in text and "\n" not in text


def test_width_student_of_text_models_scales_embeddings_attention_and_wrapped_layers():
    """A half-width student of a text model: the Embedding's output_dim, the attention's
    key_dim and the layers inside Bidirectional/TimeDistributed are scaled too. A
    Bidirectional LSTM after a narrower layer crashed on its first batch: its inner
    layers were rebuilt from the teacher's saved build shapes."""
    inp = keras.Input((12,), dtype="int32")
    h = keras.layers.Embedding(50, 16, mask_zero=True, name="embed")(inp)
    h = keras.layers.Bidirectional(keras.layers.LSTM(8, return_sequences=True),
                                   name="bilstm")(h)
    h = keras.layers.TimeDistributed(keras.layers.Dense(16), name="td")(h)
    h = h + keras.layers.MultiHeadAttention(2, 8, name="mha")(h, h)
    out = keras.layers.Dense(3, activation="softmax", name="cls")(
        keras.layers.GlobalAveragePooling1D()(h))
    teacher = keras.Model(inp, out, name="text")
    student = width_student(teacher, 0.5)
    assert student.get_layer("embed").output_dim == 8
    assert student.get_layer("bilstm").forward_layer.units == 4
    assert student.get_layer("bilstm").backward_layer.units == 4
    assert student.get_layer("td").layer.units == 8
    assert student.get_layer("mha")._key_dim == 4
    assert student.get_layer("cls").units == 3
    x = np.random.default_rng(0).integers(0, 50, (6, 12))
    assert student.predict(x, verbose=0).shape == (6, 3)
    student.compile("adam", "sparse_categorical_crossentropy")
    student.fit(x, np.arange(6) % 3, epochs=1, verbose=0)  # trains: the crash was here
    assert student.count_params() < teacher.count_params() / 2.5


def test_width_student_scales_the_layers_of_nested_models():
    """A Siamese model's shared encoder (a nested Sequential) kept its width: the
    half-width student had 93% of the teacher's parameters. Nested models' layers are
    scaled too, and the encoder stays shared by both inputs."""
    encoder = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, name="e1"),
                                keras.layers.Dense(16, name="e2")], name="encoder")
    ia, ib = keras.Input((16,)), keras.Input((16,))
    h = keras.layers.Subtract()([encoder(ia), encoder(ib)])
    teacher = keras.Model([ia, ib], keras.layers.Dense(2, activation="softmax",
                                                       name="out")(h), name="pair")
    student = width_student(teacher, 0.5)
    inner = student.get_layer("encoder")
    assert [la.units for la in inner.layers] == [16, 8]
    assert student.get_layer("out").units == 2
    x = np.zeros((3, 16), "float32")
    assert student.predict([x, x], verbose=0).shape == (3, 2)
    assert student.count_params() < 0.4 * teacher.count_params()
