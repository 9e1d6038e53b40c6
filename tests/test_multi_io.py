"""Models with several inputs or outputs, and subclassed ones, through every pass.

Tiny models (8x8 images, a few hundred samples) saved to ``.keras`` files and loaded back,
with ``.npz`` data in the ``x_SPLIT/INPUT`` and ``y_SPLIT/OUTPUT`` key convention.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import zoo_models
from bench.zoo_models import USER_MODULE, N


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Paths of the two-input, two-output and subclassed models and their npz data: the
    zoo's hand-written builders (bench/zoo_models.py), so both test the same models."""
    d = tmp_path_factory.mktemp("multi_io")
    for name, build in (("two_in", zoo_models.two_input), ("two_out", zoo_models.two_output),
                        ("sub", zoo_models.subclassed)):
        model, npz, _ = build(d, seed=0)
        model.save(d / f"{name}.keras")
        npz.rename(d / f"{name}.npz")
    zoo_models.forget_user_classes()  # a saved subclassed model needs --import again
    np.save(d / "images.npy", _data()[0])
    return d


def _data(seed=0):
    """``(image, extra, label, score)`` of the models' data (bench/zoo_models.py)."""
    return zoo_models._small_data(seed)


def _json(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{"):])


def test_npz_keys_name_inputs_and_outputs(models):
    from compress.data import load_data

    two_in = load_data(f"npz:{models / 'two_in.npz'}")
    assert sorted(two_in.x_train) == ["extra", "image"] and two_in.num_classes == 4
    assert two_in.size("train") + two_in.size("val") + two_in.size("test") == N
    two_out = load_data(f"npz:{models / 'two_out.npz'}")
    assert sorted(two_out.y_test) == ["cls", "score"]
    assert two_out.y_test["score"].dtype == np.float32


def test_two_input_model_prunes_quantizes_and_exports(models, cli, tmp_path):
    model, data = models / "two_in.keras", f"npz:{models / 'two_in.npz'}"
    pruned = _json(cli("prune", model, "-o", tmp_path / "p.keras", "--data", data,
                       "--method", "obd", "--estimator", "layer", "--sparsity", "0.5",
                       "--epochs", "1", "--json", "-q"))
    assert pruned["after"]["sparsity"] > 0.4 and "accuracy" in pruned["after"]
    shared = _json(cli("share", model, "-o", tmp_path / "s.keras", "--data", data,
                       "--method", "kmeans", "--json", "-q"))
    assert abs(shared["after"]["accuracy"] - shared["before"]["accuracy"]) < 0.15
    q = _json(cli("quantize", model, "-o", tmp_path / "q.tflite", "--data", data,
                  "--json", "-q", "--no-latency"))
    assert q["verified"] and q["top1_agreement"] >= 0.9 and q["sqnr_db"] > 20
    assert abs(q["accuracy"] - q["float_accuracy"]) < 0.1
    # inspect feeds a TFLite signature's inputs by name ("image", not the tensor's
    # "serving_default_image:0"): its latency was "not measured" for any two-input file
    i = _json(cli("inspect", tmp_path / "q.tflite", "--json"))
    assert i["latency_ms"] > 0 and "latency_not_measured" not in i
    e = _json(cli("export", model, "-o", tmp_path / "e.onnx", "--data", data, "--json", "-q"))
    assert e["max_abs_diff"] <= e["tolerance"] and e["top1_agreement"] == 1.0


def test_two_output_model_is_scored_and_checked_per_output(models, cli, tmp_path):
    model, data = models / "two_out.keras", f"npz:{models / 'two_out.npz'}"
    pruned = _json(cli("prune", model, "-o", tmp_path / "p.keras", "--data", data,
                       "--sparsity", "0.5", "--epochs", "1", "--json", "-q"))
    after = pruned["after"]["outputs"]
    assert set(after["cls"]) == {"accuracy"} and {"mse", "mae"} <= set(after["score"])
    assert "multi-output" in pruned["pass"]["task"] and "model's own" in pruned["pass"]["task"]
    for fmt in ("onnx", "tflite"):
        q = _json(cli("quantize", model, "-o", tmp_path / f"q.{fmt}", "--data", data,
                      "--json", "-q", "--no-latency"))
        assert set(q["outputs"]) == {"cls", "score"}  # the model's names, not output_0
        assert "top1_agreement" in q["outputs"]["cls"]  # two classes: argmax means something
        assert "top1_agreement" not in q["outputs"]["score"]  # one unit: SQNR only
        assert q["top1_agreement"] == q["outputs"]["cls"]["top1_agreement"]
        assert q["outputs"]["score"]["sqnr_db"] > 15
        assert set(q["output_scores"]["score"]) >= {"mse"}
        # which artifact output is which, read back by those names in the runtime
        named = q["artifact_outputs"]
        x = np.load(models / "two_out.npz")["x_train"][:3].astype("float32")
        if fmt == "tflite":
            from ai_edge_litert.interpreter import Interpreter

            runner = Interpreter(str(tmp_path / "q.tflite")).get_signature_runner()
            outs = runner(**{next(iter(runner.get_input_details())): x})
        else:
            import onnxruntime

            session = onnxruntime.InferenceSession(str(tmp_path / "q.onnx"))
            outs = dict(zip([o.name.split(":")[0] for o in session.get_outputs()],
                            session.run(None, {session.get_inputs()[0].name: x})))
        assert outs[named["cls"]].shape == (3, 2) and outs[named["score"]].shape == (3, 1)
    for fmt in ("tflite", "onnx"):
        e = _json(cli("export", model, "-o", tmp_path / f"e.{fmt}", "--data", data,
                      "--json", "-q"))
        assert set(e["outputs"]) == {"cls", "score"}
        for one in e["outputs"].values():
            assert one["max_abs_diff"] <= one["tolerance"] and one["max_abs_output"] > 0


def test_two_output_model_without_labels_reports_fidelity_per_output(models, cli, tmp_path):
    r = _json(cli("prune", models / "two_out.keras", "-o", tmp_path / "p.keras", "--data",
                  models / "images.npy", "--sparsity", "0.7", "--epochs", "1", "--json",
                  "-q"))
    after = r["after"]["outputs"]
    assert "top1_agreement" in after["cls"] and "top1_agreement" not in after["score"]
    assert 0 < after["score"]["rel_l2_error"] < 1 and np.isfinite(after["score"]["sqnr_db"])


def test_two_output_model_distills_into_a_pruned_copy(models, cli, tmp_path):
    r = _json(cli("distill", models / "two_out.keras", "-o", tmp_path / "s.keras", "--data",
                  f"npz:{models / 'two_out.npz'}", "--epochs", "2", "--no-baseline",
                  "--json", "-q"))
    info = r["pass"]
    assert "pruned" in info["student_source"] or "width" in info["student_source"]
    assert info["student_params"] < info["teacher_params"]
    assert set(info["student_scores"]["outputs"]) == {"cls", "score"}


def test_subclassed_model_gets_an_input_signature(models, cli, tmp_path):
    sub, module = models / "sub.keras", USER_MODULE
    no_shape = cli("prune", sub, "-o", tmp_path / "p.keras", "--import", module)
    assert no_shape.exit_code == 1 and "--input-shape" in no_shape.output
    pruned = _json(cli("prune", sub, "-o", tmp_path / "p.keras", "--import", module,
                       "--input-shape", "8,8,1", "--sparsity", "0.5", "--json", "-q"))
    assert pruned["after"]["sparsity"] > 0.4 and "wrapped" in pruned["input_note"]
    e = _json(cli("export", sub, "-o", tmp_path / "e.tflite", "--import", module,
                  "--data", f"npz:{models / 'sub.npz'}", "--json", "-q"))
    assert e["top1_agreement"] == 1.0
    wrong = cli("export", sub, "-o", tmp_path / "w.onnx", "--import", module,
                "--input-shape", "8,8,3")
    assert wrong.exit_code == 1 and "cannot take inputs of shape" in wrong.output
    assert len(wrong.output.strip().splitlines()) == 1


def test_export_parity_is_relative_to_the_output_scale_and_can_fail(tmp_path):
    import keras

    from compress.errors import CompressError
    from compress.export import _verified, export_artifact

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(
        3, kernel_initializer=keras.initializers.Constant(50.0))])
    x = np.random.default_rng(0).random((32, 6), dtype=np.float32)
    _, info = export_artifact(model, x, format="onnx")
    assert info["max_abs_output"] > 100  # the tolerance scales with it
    assert info["tolerance"] == pytest.approx(1e-4 * info["max_abs_output"])
    perturbed = keras.models.clone_model(model)
    perturbed.set_weights([w * 1.001 for w in model.get_weights()])
    other, _ = export_artifact(perturbed, x, format="onnx")
    with pytest.raises(CompressError, match="output scale"):
        _verified(model, other, "onnx", x, 1e-4, "perturbed.onnx")


def test_python_api_takes_a_subclassed_model_with_arrays(models):
    import compress
    from compress import io

    io.import_modules([USER_MODULE])  # what --import does
    try:
        sub = compress.load_model(models / "sub.keras")
        image, _, label, _ = _data()
        pruned, info = compress.prune(sub, (image[:64], label[:64]), sparsity=0.5)
        assert pruned.inputs[0].shape[1:] == (8, 8, 1) and info["sparsity_reached"] >= 0.45
    finally:
        zoo_models.forget_user_classes()


def test_one_target_array_for_two_outputs_says_how_to_name_them(models, cli, tmp_path):
    # an .npz of x and y for a two-output model: the refusal spoke of Python dicts and lists
    x = np.load(models / "two_out.npz")
    np.savez(tmp_path / "xy.npz", x=x["x_train"], y=x["y_train/cls"])
    r = cli("export", models / "two_out.keras", "-o", tmp_path / "e.onnx", "--data",
            f"npz:{tmp_path / 'xy.npz'}")
    assert r.exit_code == 1 and not (tmp_path / "e.onnx").exists()
    assert r.output.strip().endswith("gives one target array: name the arrays y_train/cls, "
                                     "y_train/score in the .npz"), r.output


def test_targets_for_one_output_of_two_name_the_missing_one(models, cli, tmp_path):
    # y_train/cls without y_train/score: it was "targets: 1 arrays for 2 outputs"
    x = np.load(models / "two_out.npz")
    np.savez(tmp_path / "cls.npz", **{"x_train": x["x_train"], "y_train/cls": x["y_train/cls"]})
    r = cli("prune", models / "two_out.keras", "-o", tmp_path / "p.keras", "--sparsity", "0.5",
            "--data", f"npz:{tmp_path / 'cls.npz'}", "--epochs", "1")
    assert r.exit_code == 1 and not (tmp_path / "p.keras").exists()
    assert r.output.strip().endswith("targets: none for output 'score' (given: 'cls'); every "
                                     "output needs its own (in an .npz: y_train/score)"), r.output


def test_labels_beyond_a_binary_output_say_it_takes_0_and_1():
    import keras

    from compress.data.arrays import check_labels
    from compress.errors import CompressError

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, activation="sigmoid")])
    check_labels(model, 2, "npz:d.npz")  # 0 and 1
    with pytest.raises(CompressError, match="has one output unit: a binary classifier, which "
                                            "takes labels 0 and 1"):  # was "only 1 outputs"
        check_labels(model, 3, "npz:d.npz")


def test_outputs_in_a_list_are_named_by_the_task_and_top1_can_fail():
    # An artifact's outputs come as a list; the task names them. Keyed by names no output
    # had (output_0, output_1), the top-1 check of a classifier output never ran.
    from compress.agreement import comparison

    rng = np.random.default_rng(0)
    want = [rng.random((100, 3)), rng.random((100, 1))]
    flipped = [want[0][:, ::-1].copy(), want[1]]  # every class answer changed
    c = comparison(flipped, want, {"cls": True, "score": False})
    assert sorted(c["outputs"]) == ["cls", "score"]
    assert c["top1_agreement"] < 0.5 and "top1_agreement" not in c["outputs"]["score"]
    with pytest.raises(ValueError, match="the task names outputs"):
        comparison({"a": want[0], "b": want[1]}, {"a": want[0], "b": want[1]},
                   {"cls": True, "score": False})
