"""Review findings on quantization: a Keras-quantized model is refused whatever Keras mode
made it and however deep the layer sits; QAT's agreement is with the user's float model;
the CLI says one consistent thing about a subclassed model it quantized."""

from __future__ import annotations

import numpy as np
import pytest


def _digits_mlp(name="mlp"):
    import keras

    from compress.data import load_data, prepare

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)), keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(16, activation="relu", name="fc1"),
        keras.layers.Dense(10, activation="softmax", name="predictions")], name=name)
    ds = prepare(model, load_data("digits", seed=0))
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(ds.x_train, ds.y_train, epochs=2, verbose=0)
    return model, ds


def test_a_nested_keras_int8_layer_is_refused_naming_it():
    import keras

    from compress import export, runtime
    from compress.errors import CompressError

    inner_in = keras.Input((8,))
    inner = keras.Model(inner_in, keras.layers.Dense(4, name="deep")(inner_in), name="inner")
    outer_in = keras.Input((8,))
    outer = keras.Model(outer_in, keras.layers.Softmax()(inner(outer_in)), name="outer")
    runtime.refuse_keras_quantized(outer)  # float: accepted
    assert runtime.keras_quantized_layer(outer) is None
    inner.quantize("int8")  # the top level of `outer` holds only the nested model
    assert all(not (getattr(lay.dtype_policy, "quantization_mode", None))
               for lay in outer.layers)
    message = ("model 'outer' is already quantized by Keras (layer 'deep', "
               "int8_from_float32); start from the float model it was made from")
    with pytest.raises(CompressError) as caught:
        runtime.refuse_keras_quantized(outer)
    assert str(caught.value) == message
    with pytest.raises(CompressError, match="layer 'deep', int8_from_float32"):
        export.export_artifact(outer, format="tflite", samples=4)


@pytest.mark.parametrize("policy_class, mode", [("GPTQDTypePolicy", "gptq/4/128"),
                                                ("AWQDTypePolicy", "awq/4/128")])
def test_gptq_and_awq_layers_are_refused(policy_class, mode):
    import keras

    from compress import runtime
    from compress.errors import CompressError

    policy = getattr(keras.dtype_policies, policy_class)(mode, "float32")
    inp = keras.Input((8,))
    inner = keras.Model(inp, keras.layers.Dense(4, name="q", dtype=policy)(inp), name="block")
    outer_in = keras.Input((8,))
    outer = keras.Model(outer_in, inner(outer_in), name="task")
    with pytest.raises(CompressError,
                       match=f"model 'task' is already quantized by Keras .layer 'q', "
                             f"{mode}_from_float32.; start from the float model"):
        runtime.refuse_keras_quantized(outer)


def test_qat_agreement_is_with_the_users_float_model():
    from compress import runtime
    from compress.export import verification_inputs
    from compress.quantization import quantize

    model, ds = _digits_mlp()
    before = [w.copy() for w in model.get_weights()]
    content, info = quantize(model, ds, qat=True, epochs=1, learning_rate=3e-2,
                             latency=False)
    x = verification_inputs(model, ds, 256, 0)
    got = runtime.run_artifact(content, x, fmt="tflite")
    expected = model.predict(x, verbose=0)
    assert info["top1_agreement"] == pytest.approx(runtime.top1_agreement(got, expected))
    assert info["sqnr_db"] == pytest.approx(runtime.sqnr_db(got, expected), abs=1e-3)
    # the float column is the user's model too (its own float export, in LiteRT)
    keras_accuracy = float(np.mean(np.argmax(model.predict(ds.x_test, verbose=0), -1)
                                   == ds.y_test))
    assert info["float_accuracy"] == pytest.approx(keras_accuracy, abs=0.01)
    # the artifact against the QAT-trained float model is reported apart
    qat = info["qat"]
    assert 0.0 <= qat["trained_float_top1_agreement"] <= 1.0
    assert "top-1 agreement" in qat["trained_float_agreement"]
    for a, b in zip(before, model.get_weights()):  # the input model is untouched
        np.testing.assert_array_equal(a, b)


SUBNET = '''
import keras

@keras.saving.register_keras_serializable(package="review_quant_test")
class SubNet(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.flat = keras.layers.Flatten()
        self.hidden = keras.layers.Dense(16, activation="relu")
        self.head = keras.layers.Dense(10, activation="softmax")

    def call(self, x):
        return self.head(self.hidden(self.flat(x)))
'''


def _saved_subnet(tmp_path):
    """``SUBNET``'s model saved as ``tmp_path/sub.keras`` (named "sub"), its class then
    unregistered so that loading needs ``--import``; returns the module's path."""
    import keras

    module = tmp_path / "subnet.py"
    module.write_text(SUBNET)
    namespace: dict = {}
    exec(compile(SUBNET, str(module), "exec"), namespace)  # noqa: S102 - our own test code
    try:
        keras.utils.set_random_seed(0)
        model = namespace["SubNet"](name="sub")
        model(np.zeros((1, 8, 8, 1), "float32"))
        model.save(tmp_path / "sub.keras")
    finally:
        keras.saving.get_custom_objects().pop("review_quant_test>SubNet", None)
    return module


@pytest.mark.parametrize("output, mode, says, never", [
    ("q.keras", "keras-int8",
     ("note: subclassed model 'sub' (SubNet) saved as a functional model of its layers, "
      "input shape (8, 8, 1): the file loads with plain Keras, without --import"),
     ("holds it as a layer", "with the same --import", "wrapped into")),
    ("q.tflite", "dynamic",
     ("note: subclassed model 'sub' (SubNet) traced with input shape (8, 8, 1) into the "
      "artifact's graph, which runs without --import"),
     ("holds it as a layer", "with the same --import", "saved as a functional")),
])
def test_cli_notes_on_a_subclassed_model_agree_with_the_artifact(cli, tmp_path, output,
                                                                 mode, says, never):
    import keras

    module = _saved_subnet(tmp_path)
    out = tmp_path / output
    r = cli("quantize", tmp_path / "sub.keras", "-o", out, "--mode", mode, "--data", "digits",
            "--import", module, "--no-latency")
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert text.count("note:") == 1 and says in text, r.output
    assert not any(phrase in text for phrase in never), r.output
    if mode == "keras-int8":  # what the note says: plain Keras loads it, no --import
        reloaded = keras.models.load_model(out)
        assert sum("int8" in lay.dtype_policy.name for lay in reloaded.layers) == 2


def test_int4_agreement_is_with_the_float_model_not_the_snapped_copy():
    """Mode int4 exports a copy snapped onto the 4-bit grid: compared with that copy, its
    float artifact would agree almost exactly, whatever the rounding cost."""
    from compress import runtime
    from compress.export import verification_inputs
    from compress.quantization import quantize

    model, ds = _digits_mlp("mlp4")
    content, info = quantize(model, ds, mode="int4", latency=False)
    x = verification_inputs(model, ds, 256, 0)
    got = runtime.run_artifact(content, x, fmt="tflite")
    expected = model.predict(x, verbose=0)
    assert info["sqnr_db"] == pytest.approx(runtime.sqnr_db(got, expected), abs=1e-3)
    assert info["top1_agreement"] == pytest.approx(runtime.top1_agreement(got, expected))


def test_cli_export_note_on_a_subclassed_model_says_what_the_artifact_holds(cli, tmp_path):
    """``compress export`` of a subclassed model: one note, saying the graph was traced
    into the artifact (not that a .keras file holds it as a layer)."""

    module = _saved_subnet(tmp_path)
    r = cli("export", tmp_path / "sub.keras", "-o", tmp_path / "e.onnx", "--format", "onnx",
            "--data", "digits", "--import", module)
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert text.count("note:") == 1, r.output
    assert ("note: subclassed model 'sub' (SubNet) traced with input shape (8, 8, 1) into "
            "the artifact's graph, which runs without --import") in text, r.output
    assert "holds it as a layer" not in text, r.output


def test_top1_failure_on_an_undecided_model_names_its_near_ties():
    """An int8 file of a barely trained two-class model (outputs near 0.5/0.5) flipped 15
    of 50 answers at SQNR 53.7 dB: the warning said only "top-1 agreement is below
    90%". It still fails (the answers differ), and now says how many flips are near-ties
    of the float model; a low-SQNR artifact gets no such excuse."""
    from compress.agreement import agreement_summary, comparison

    rng = np.random.default_rng(0)
    p = 0.5 + rng.normal(scale=1e-3, size=200)
    expected = np.stack([p, 1 - p], axis=1)
    got = expected + rng.normal(scale=1e-3, size=expected.shape)
    check = comparison(got, expected, classifier=True)
    ok, words = agreement_summary(check)
    assert not ok and check["sqnr_db"] > 40
    assert check["near_ties"] >= 0.8 * check["top1_flips"] > 20
    assert f"({check['near_ties']} of the {check['top1_flips']} flips are near-ties" in words
    broken = comparison(rng.uniform(size=expected.shape), expected, classifier=True)
    ok, words = agreement_summary(broken)
    assert not ok and "near-ties" not in words


def test_passes_that_change_weights_refuse_a_keras_quantized_model(tmp_path):
    """Pruning, k-means, hashing and cascade training of a ``model.quantize("int8")``
    model were ranking, clustering or hashing its int8 values, whose per-unit scales they
    never read, and wrote a model with exit code 0; each now refuses in one line, and
    the CLI writes nothing."""
    import keras
    from click.testing import CliRunner

    from compress import cascade_train, prune, share
    from compress.cli import main
    from compress.errors import CompressError

    model, ds = _digits_mlp()
    model.quantize("int8")
    refusal = ("model 'mlp' is already quantized by Keras (layer 'fc1', int8_from_float32); "
               "start from the float model it was made from")
    for run in (lambda: prune(model, ds, sparsity=0.5),
                lambda: share(model, ds, method="kmeans", clusters=8),
                lambda: share(model, ds, method="hash", factor=0.5),
                lambda: cascade_train(model, ds, epochs=1)):
        with pytest.raises(CompressError) as caught:
            run()
        assert str(caught.value) == refusal
    path = tmp_path / "q.keras"
    model.save(path)
    out = tmp_path / "p.keras"
    result = CliRunner().invoke(main, ["prune", str(path), "-o", str(out), "--sparsity",
                                       "0.5", "--data", "digits"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == f"error: {refusal}"
    assert not out.exists()
    assert isinstance(keras.models.load_model(path).layers[1].dtype_policy,
                      keras.dtype_policies.QuantizedDTypePolicy)  # the input untouched


def test_a_width_student_of_a_keras_quantized_teacher_is_float():
    """A Keras-quantized teacher is a fine teacher, but its width student was built with
    the teacher's int8 policies: int8 kernels initialised to zero that never train (a
    student with 22 nonzero weights of 406). The student is now float and trains."""
    from compress.distillation.students import width_student

    teacher, _ = _digits_mlp()
    teacher.quantize("int8")
    student = width_student(teacher, 0.5)
    fc1 = student.get_layer("fc1")
    assert fc1.dtype_policy.name == "float32"
    assert fc1.kernel.dtype == "float32" and fc1.kernel.trainable and fc1.units == 8
    assert np.count_nonzero(np.asarray(fc1.kernel)) == 64 * 8  # initialised, unlike int8
