"""Models with a class at every position (a segmenter: ``(batch, H, W, classes)``) and
per-pixel integer masks as labels, through the passes.

Before: an .npz of masks was refused ("give one integer class per sample"); with inputs
only, quantize and export crashed on the top-1 check (a broadcast error) and prune
reported "top-1 agreement 0.00%" (a sample counted only when all its pixels agreed).
Accuracy and agreement are now counted per pixel, as Keras's accuracy metrics count them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    """A small trained segmenter saved to a file, and an .npz of images and masks (the
    class of a pixel is its brightest channel)."""
    d = tmp_path_factory.mktemp("seg")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 12, 12, 3)).astype("float32")
    y = x.argmax(-1).astype("int64")
    inp = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inp)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c2")(h)
    out = keras.layers.Conv2D(3, 1, activation="softmax", name="mask")(h)
    model = keras.Model(inp, out)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=8, batch_size=32, verbose=0)
    model.save(d / "seg.keras")
    np.savez(d / "seg.npz", x_train=x[:128], y_train=y[:128], x_test=x[128:], y_test=y[128:])
    np.save(d / "images.npy", x)
    return d, model, x[128:], y[128:]


def _json(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{"):])


def test_masks_load_as_a_class_per_pixel(segmenter):
    from compress.data import load_data

    d, *_ = segmenter
    ds = load_data(f"npz:{d / 'seg.npz'}")
    assert ds.y_train.shape[1:] == (12, 12) and ds.num_classes == 3


def test_int8_and_export_check_and_score_per_pixel(segmenter, cli, tmp_path):
    d, model, x_test, y_test = segmenter
    pixel_acc = float(np.mean(model.predict(x_test, verbose=0).argmax(-1) == y_test))
    assert 0.5 < pixel_acc < 1.0  # trained, and not trivially perfect
    data = f"npz:{d / 'seg.npz'}"
    q = _json(cli("quantize", d / "seg.keras", "-o", tmp_path / "q.tflite", "--data", data,
                  "--json", "-q", "--no-latency"))
    assert q["verified"] and 0.9 <= q["top1_agreement"] <= 1.0
    assert q["float_accuracy"] == pytest.approx(pixel_acc, abs=1e-6)  # per pixel, as Keras
    assert abs(q["accuracy"] - pixel_acc) < 0.05
    for fmt in ("tflite", "onnx"):
        e = _json(cli("export", d / "seg.keras", "-o", tmp_path / f"e.{fmt}", "--data",
                      d / "images.npy", "--json", "-q"))
        assert e["top1_agreement"] == 1.0 and e["max_abs_diff"] <= e["tolerance"]


def test_prune_reports_per_pixel_agreement_and_fine_tunes_on_masks(segmenter, cli, tmp_path):
    d, model, *_ = segmenter
    r = _json(cli("prune", d / "seg.keras", "-o", tmp_path / "u.keras", "--data",
                  d / "images.npy", "--sparsity", "0.5", "--json", "-q"))
    pruned = keras.saving.load_model(tmp_path / "u.keras")
    images = np.load(d / "images.npy")
    want = float(np.mean(pruned.predict(images, verbose=0).argmax(-1)
                         == model.predict(images, verbose=0).argmax(-1)))
    agreement = r["after"]["top1_agreement"]
    assert 0.3 < agreement < 1.0  # was 0.00: all 144 pixels of a sample had to agree
    assert agreement == pytest.approx(want, abs=0.05)  # the report's split, not all images
    data = f"npz:{d / 'seg.npz'}"
    tuned = _json(cli("prune", d / "seg.keras", "-o", tmp_path / "s.keras", "--data", data,
                      "--structured", "--sparsity", "0.5", "--epochs", "2", "--json", "-q"))
    assert 0.3 < tuned["after"]["accuracy"] <= 1.0 and tuned["pass"]["fine_tune_epochs"] == 2


@pytest.mark.parametrize("estimator,used", [("backprop", "layer"), ("fisher", "fisher"),
                                            ("hutchinson", "hutchinson")])
def test_obd_estimators_take_masks(segmenter, cli, tmp_path, estimator, used):
    # backprop and fisher crashed on (batch, H, W) labels; hutchinson gathered the wrong axis
    d, *_ = segmenter
    r = _json(cli("prune", d / "seg.keras", "-o", tmp_path / "p.keras", "--data",
                  f"npz:{d / 'seg.npz'}", "--method", "obd", "--estimator", estimator,
                  "--sparsity", "0.5", "--json", "-q"))
    assert r["pass"]["estimator"] == used
    assert r["after"]["accuracy"] > 0.4 and r["after"]["sparsity"] > 0.45


def test_sensitivity_allocation_takes_masks(segmenter, cli, tmp_path):
    d, *_ = segmenter
    r = _json(cli("prune", d / "seg.keras", "-o", tmp_path / "p.keras", "--data",
                  f"npz:{d / 'seg.npz'}", "--scope", "sensitivity", "--sparsity", "0.6",
                  "--json", "-q"))
    assert r["after"]["sparsity"] > 0.5


def test_a_mask_with_a_class_the_model_lacks_is_one_line(segmenter, cli, tmp_path):
    d, *_ = segmenter
    z = np.load(d / "seg.npz")
    bad = dict(z)
    bad["y_train"] = bad["y_train"].copy()
    bad["y_train"][0, 0, 0] = 5
    np.savez(tmp_path / "bad.npz", **bad)
    r = cli("quantize", d / "seg.keras", "-o", tmp_path / "q.tflite", "--data",
            f"npz:{tmp_path / 'bad.npz'}")
    assert r.exit_code == 1 and not (tmp_path / "q.tflite").exists()
    assert r.output.startswith("error:") and "has 3 classes per position" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_a_segmenter_distills_pixel_by_pixel(segmenter, cli, tmp_path):
    """A segmenter (a class at every pixel) was refused by distill. It now distills
    output by output: softened class vectors matched at every pixel (KL), plus its own
    loss; the logged loss is the real one (the per-output distiller logged 0.0 every
    epoch, Keras's own untouched tracker, so a NaN stop could never fire)."""
    d, *_ = segmenter
    r = cli("distill", d / "seg.keras", "-o", tmp_path / "s.keras", "--data",
            f"npz:{d / 'seg.npz'}", "--epochs", "4", "--json")
    info = _json(r)["pass"]
    losses = info["history"]["loss"]
    assert all(v > 0 for v in losses) and losses[-1] < losses[0]
    assert info["student_params"] < info["teacher_params"]
    assert set(info["student_scores"]) == set(info["teacher_scores"]) == {"accuracy"}
    assert (tmp_path / "s.keras").exists()


def test_a_binary_segmenter_is_scored_per_pixel_as_keras_does(cli, tmp_path):
    # a sigmoid mask: a sample counted as right only when all its pixels were read 0.00%
    # against Keras's binary_accuracy of ~70%
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 12, 12, 2)).astype("float32")
    y = (x[..., 0] > x[..., 1]).astype("int64")
    inp = keras.Input((12, 12, 2))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    model = keras.Model(inp, keras.layers.Conv2D(1, 1, activation="sigmoid")(h))
    model.compile("adam", "binary_crossentropy", metrics=["binary_accuracy"])
    model.fit(x[:128], y[:128, ..., None], epochs=5, verbose=0)
    keras_acc = model.evaluate(x[128:], y[128:, ..., None], verbose=0)[1]
    model.save(tmp_path / "bseg.keras")
    np.savez(tmp_path / "bseg.npz", x_train=x[:128], y_train=y[:128], x_test=x[128:],
             y_test=y[128:])
    r = _json(cli("prune", tmp_path / "bseg.keras", "-o", tmp_path / "p.keras", "--data",
                  f"npz:{tmp_path / 'bseg.npz'}", "--sparsity", "0.3", "--json", "-q"))
    assert 0.5 < r["before"]["accuracy"] == pytest.approx(keras_acc, abs=1e-4)


def test_multilabel_accuracy_is_per_label_as_keras_binary_accuracy():
    from compress.task import resolve

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="sigmoid")])
    task = resolve(model)
    out = np.array([[0.9, 0.1, 0.8], [0.2, 0.7, 0.4], [np.nan, 0.9, 0.9]])
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 1]])
    # 2 of 3, 3 of 3, and 2 of 3 (the NaN value counts as wrong) = 7 of 9
    assert task.score(out, y)["accuracy"] == pytest.approx(7 / 9)
    metric = keras.metrics.BinaryAccuracy()
    metric.update_state(y[:2], out[:2])
    assert task.score(out[:2], y[:2])["accuracy"] == pytest.approx(float(metric.result()))


def test_a_fully_convolutional_model_takes_masks_and_says_what_size_it_was_checked_at(
        segmenter, cli, tmp_path):
    # Input((None, None, 3)): masks of (12, 12) were refused against an output of
    # (None, None, 3); without data, inputs of unknown size were checked (and timed) at
    # 1x1 pixels, where a 3x3 convolution sees almost nothing, without saying so
    d, *_ = segmenter
    inp = keras.Input((None, None, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    model = keras.Model(inp, keras.layers.Conv2D(3, 1, activation="softmax")(h))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.save(tmp_path / "fcn.keras")
    q = _json(cli("quantize", tmp_path / "fcn.keras", "-o", tmp_path / "q.tflite", "--data",
                  f"npz:{d / 'seg.npz'}", "--json", "-q", "--no-latency"))
    assert q["verified"] and 0 <= q["accuracy"] <= 1 and "input_size_note" not in q
    e = _json(cli("export", tmp_path / "fcn.keras", "-o", tmp_path / "e.onnx", "--json",
                  "-q"))
    assert "(None, None, None, 3) at 32 on the unknown axes" in e["input_size_note"]
    assert e["top1_agreement"] == 1.0
    text = cli("inspect", tmp_path / "fcn.keras")
    assert "note: input size unknown: timed on random inputs of (None, None, None, 3) at 32" \
        in " ".join(text.output.split())
