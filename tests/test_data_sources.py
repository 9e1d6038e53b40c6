"""Data sources (issue 18): tf.data, PyDataset, arrays, (x, y), .npy, image folders.

Each failure the issue lists for data is reproduced here: a ``tf.data.Dataset`` or an
``(x, y)`` tuple given to ``prepare``, ``prune`` (data-free one-shot too), ``share``,
``quantize`` and ``export_onnx``; an image folder on the CLI; ``npz:DIR``. Images are real
PNG files written with Pillow, models real Keras models saved to files and loaded back.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from compress.errors import CompressError


@pytest.fixture(scope="module")
def digits3():
    """300 real 8x8 digits (classes 0-2) as float images in [0, 1] and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = d.target < 3
    x = (d.images[keep] / 16.0).astype("float32")[..., None][:300]
    return x, d.target[keep][:300].astype("int64")


@pytest.fixture(scope="module")
def cnn_file(tmp_path_factory):
    """A small real Keras CNN (8x8x1 -> 3 softmax classes), saved and loaded back."""
    import keras

    from compress import io, training

    training.set_seed(0)
    inp = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(6, 3, activation="relu", name="conv")(inp)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(16, activation="relu", name="fc")(h)
    out = keras.layers.Dense(3, activation="softmax", name="predictions")(h)
    path = tmp_path_factory.mktemp("model") / "cnn.keras"
    keras.Model(inp, out).save(path)
    return path, io.load_model(path)


def _write_pngs(folder, images, labels=None, sizes=(8,)):
    """PNG files of grey images (values in [0, 1]) into class folders (or flat)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        side = sizes[i % len(sizes)]
        pixels = Image.fromarray((image[..., 0] * 255).round().astype("uint8"), "L")
        where = folder if labels is None else folder / f"class_{labels[i]}"
        where.mkdir(exist_ok=True)
        pixels.resize((side, side)).save(where / f"img_{i:04d}.png")
    return folder


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, digits3):
    """60 labelled PNG digits in 3 class folders, of mixed sizes (8, 12, 16 px)."""
    x, y = digits3
    return _write_pngs(tmp_path_factory.mktemp("imgs") / "digits", x[:60], y[:60],
                       sizes=(8, 12, 16))


# -- the Python API: tf.data, (x, y), PyDataset ---------------------------------------
def test_tf_data_and_tuples_flow_through_prepare_prune_share_quantize_export(
        cnn_file, digits3, tmp_path):
    import tensorflow as tf

    import compress
    from compress.data import StreamDataset, prepare

    _, model = cnn_file
    x, y = digits3
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    prepared = prepare(model, ds)  # raised AttributeError before
    assert isinstance(prepared, StreamDataset) and prepared.labelled
    assert prepared.sample_shape == (8, 8, 1) and prepared.num_classes == 3
    np.testing.assert_array_equal(prepared.head("train", 40)[1], y[:40])

    oneshot, info = compress.prune(model, ds, sparsity=0.5)  # data-free one-shot
    assert info["sparsity_reached"] == pytest.approx(0.5, abs=0.02)
    tuned, info = compress.prune(model, ds, sparsity=0.5, epochs=1)  # streamed fine-tune
    assert info["sparsity_reached"] == pytest.approx(0.5, abs=0.02)
    moved = np.abs(np.asarray(tuned.get_layer("fc").kernel)
                   - np.asarray(oneshot.get_layer("fc").kernel)).max()
    assert moved > 0  # the kept weights were trained on the stream's batches
    _, info = compress.prune(model, (x, y), method="obd", sparsity=0.5, calibration=64)
    assert info["sparsity_reached"] == pytest.approx(0.5, abs=0.02)

    student, info = compress.distill(model, ds, width=0.5, epochs=1, baseline=False)
    assert student.count_params() < model.count_params() and info["epochs"] == 1
    # distillation's other form, (teacher, student, data): one line, not a TypeError
    for args in ((model, student, ds), (model, student)):
        with pytest.raises(CompressError, match=r"compress.distillation.distill\(teacher, "):
            compress.distill(*args)
    # a report scores an (x, y) pair as it is (an AttributeError on 'labelled' before)
    report = compress.model_report(model, (x, y), latency=False)
    assert report["accuracy"] == pytest.approx(
        float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y)))

    shared, info = compress.share(model, ds, method="kmeans", clusters=4, epochs=1)
    kernel = np.asarray(shared.get_layer("fc").kernel)
    assert len(np.unique(kernel)) <= 4

    content, info = compress.quantize(model, tf.data.Dataset.from_tensor_slices((x, y)),
                                      mode="int8", latency=False, calibration_samples=64)
    assert content[4:8] == b"TFL3" and info["calibration_samples"] == 64

    check = compress.export_onnx(model, tmp_path / "m.onnx", x=ds)  # TypeError before
    assert (tmp_path / "m.onnx").stat().st_size == check["bytes"]
    assert check["max_abs_diff"] <= 1e-4  # verified on the first 256 samples of ds


def test_unlabelled_stream_calibrates_and_prunes_data_free(cnn_file, digits3):
    import tensorflow as tf

    import compress
    from compress.data import as_dataset

    _, model = cnn_file
    x, _ = digits3
    data = as_dataset(tf.data.Dataset.from_tensor_slices(x), model)  # x only, unbatched
    assert not data.labelled and data.y_train is None and data.size("train") == len(x)
    x_cal, y_cal = data.head("train", 10)
    assert x_cal.shape == (10, 8, 8, 1) and y_cal is None
    np.testing.assert_allclose(x_cal, x[:10])
    _, info = compress.prune(model, data, sparsity=0.7)
    assert info["sparsity_reached"] == pytest.approx(0.7, abs=0.02)
    content, info = compress.quantize(model, data, mode="int8", latency=False,
                                      calibration_samples=32)  # calibration needs no labels
    assert content[4:8] == b"TFL3" and info["calibration_samples"] == 32
    assert "accuracy" not in info  # no labels: no accuracy (it read 0.0 before)


def test_pydataset_and_arrays_stream_into_a_fit(cnn_file, digits3):
    import keras

    from compress import training
    from compress.data import as_dataset

    _, model = cnn_file
    x, y = digits3

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return x[i * 20:(i + 1) * 20], y[i * 20:(i + 1) * 20]

    data = as_dataset(Batches(), model)
    assert data.labelled and data.head("train", 25)[0].shape == (25, 8, 8, 1)
    student = training.copy_model(model)
    training.compile_classifier(student)
    history = training.fit(student, data, epochs=1, verbose=0)
    assert len(history.history["loss"]) == 1
    arrays = as_dataset((x, y), model, validation=(x[:30], y[:30]))
    assert arrays.size("train") == 300 and arrays.size("test") == 30


def test_multi_input_multi_output_data_is_carried_and_checked(digits3):
    import keras

    from compress import training
    from compress.data import as_dataset

    x, y = digits3
    a = keras.Input((8, 8, 1), name="image")
    b = keras.Input((4,), name="extra")
    h = keras.layers.Concatenate()([keras.layers.Flatten()(a), b])
    cls = keras.layers.Dense(3, activation="softmax", name="cls")(h)
    reg = keras.layers.Dense(1, name="reg")(h)
    model = keras.Model({"image": a, "extra": b}, {"cls": cls, "reg": reg})
    inputs = {"image": x.reshape(len(x), 64), "extra": np.ones((len(x), 4), "float32")}
    targets = {"cls": y, "reg": y.astype("float32")[:, None] / 2}
    data = as_dataset((inputs, targets), model)
    assert data.x_train["image"].shape == (300, 8, 8, 1)  # reshaped per input
    model.compile("adam", loss={"cls": "sparse_categorical_crossentropy", "reg": "mse"})
    history = training.fit(model, data, epochs=1, verbose=0, batch_size=64)
    assert np.isfinite(history.history["loss"][0])
    with pytest.raises(CompressError, match="'score', which is not an output"):
        as_dataset((inputs, {"score": y}), model)
    with pytest.raises(CompressError, match="no array for model input 'extra'"):
        as_dataset(({"image": inputs["image"]}, targets), model)
    with pytest.raises(CompressError, match="labels go up to 5 but the model has only 3"):
        as_dataset((inputs, {"cls": y + 3, "reg": targets["reg"]}), model)


# -- image folders ---------------------------------------------------------------------
def test_image_folder_streams_resized_labelled_images(image_folder, cnn_file, digits3):
    from compress.data import load_data, prepare

    _, model = cnn_file
    folder = load_data(str(image_folder), seed=0, val_split=0.25)
    assert folder.class_names == ["class_0", "class_1", "class_2"]
    assert folder.count == 45 and len(folder.val_files) == 15
    data = prepare(model, folder)
    x, y = data.head("train", 45)
    assert x.shape == (45, 8, 8, 1) and 0.0 <= x.min() and x.max() <= 1.0  # mixed sizes
    assert sorted(set(y.tolist())) == [0, 1, 2]
    np.testing.assert_array_equal(data.y_train, y)  # labels known without decoding
    batch = next(iter(data.batches("train", 16, shuffle=True)))
    assert batch[0].shape == (16, 8, 8, 1)
    flat = _write_pngs(image_folder.parent / "flat", digits3[0][:12])
    unlabelled = prepare(model, load_data(str(flat)))
    assert not unlabelled.labelled and unlabelled.head("train", 3)[0].shape == (3, 8, 8, 1)


def test_class_folders_keep_their_labels_and_a_missing_class_is_warned(image_folder,
                                                                       cnn_file, tmp_path):
    # A test folder without class_1 gave class_2's images label 1: a silent accuracy drop
    # (a 10-class model: 83% -> 12%). An empty folder was dropped the same way.
    import shutil

    from compress.data import load_data, prepare

    _, model = cnn_file  # 3 classes
    empty = tmp_path / "empty_class"
    shutil.copytree(image_folder, empty)
    for f in (empty / "class_1").iterdir():
        f.unlink()
    folder = load_data(str(empty), seed=0)
    assert folder.class_names == ["class_0", "class_1", "class_2"]  # as Keras lists them
    assert set(folder.train_labels + folder.val_labels) == {0, 2}  # class_2 keeps label 2
    assert any("'class_1' (label 1) holds no image; kept as a class" in n for n in folder.notes)
    one = tmp_path / "one_image"  # a class whose only image went to validation: not empty
    shutil.copytree(image_folder, one)
    for f in sorted((one / "class_1").iterdir())[1:]:
        f.unlink()
    split = load_data(str(one), seed=0, val_split=0.5)
    assert not any("holds no image" in n for n in split.notes)
    assert not any(n.startswith("warning") for n in prepare(model, folder).notes)

    missing = tmp_path / "missing_class"
    shutil.copytree(image_folder, missing)
    shutil.rmtree(missing / "class_1")
    from compress.data import as_dataset

    with pytest.warns(UserWarning, match="2 class folders .* add it"):  # the Python API
        as_dataset(str(missing), model)
    data = prepare(model, load_data(str(missing), seed=0))
    warned = [n for n in data.notes if n.startswith("warning")]
    assert len(warned) == 1 and "2 class folders (class_0, class_2) for model" in warned[0]
    assert "3 classes" in warned[0] and "add it (empty is fine)" in warned[0]

    numbered = tmp_path / "numbered"
    for i in range(11):
        shutil.copytree(image_folder / f"class_{i % 3}", numbered / str(i))
    folder = load_data(str(numbered), seed=0)
    assert folder.class_names[:3] == ["0", "1", "10"]
    assert any("folder '10' is label 2" in n for n in folder.notes)


def test_a_model_that_rescales_pixels_itself_gets_them_in_0_255(image_folder, digits3, cli,
                                                                tmp_path):
    # Rescaling(1/255) inside (the keras.io pattern): the folder gave [0, 1] pixels, which the
    # model scaled again, and a trained model scored chance, silently
    import keras

    from compress.data import load_data, prepare

    keras.utils.set_random_seed(0)
    x, y = digits3
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Rescaling(1 / 255),
                              keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(np.round(x * 255), y, epochs=60, verbose=0)
    data = prepare(model, load_data(str(image_folder), seed=0))
    images, _ = data.head("train", 8)
    assert images.max() > 100 and any("scales pixels itself (Rescaling 0.003922)" in n
                                      for n in data.notes)
    path = tmp_path / "rescales.keras"
    model.save(path)
    r = cli("inspect", path, "--data", image_folder, "--json", "--no-latency")
    assert r.exit_code == 0, r.output
    accuracy = json.loads(r.output[r.output.index("{"):])["accuracy"]
    assert accuracy > 0.8 and "--preprocess raw" in r.output  # the note, on stderr
    forced = cli("inspect", path, "--data", image_folder, "--preprocess", "scale01", "--json",
                 "--no-latency")
    assert json.loads(forced.output[forced.output.index("{"):])["accuracy"] < 0.6


def test_a_model_taking_uint8_pixels_gets_0_255_from_folders_and_named_data(image_folder,
                                                                           digits3, cli,
                                                                           tmp_path):
    # keras.Input(dtype="uint8") with no Rescaling to spot: [0, 1] pixels were cast to
    # uint8, nearly all 0, and a trained model scored 17% on a folder (60% in Keras)
    import keras

    from compress.data import load_data, prepare

    keras.utils.set_random_seed(0)
    x, y = digits3
    model = keras.Sequential([keras.Input((8, 8, 1), dtype="uint8"), keras.layers.Rescaling(1.0),
                              keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")],
                             name="u8")
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(np.round(x * 255).astype("uint8"), y, epochs=60, verbose=0)
    data = prepare(model, load_data(str(image_folder), seed=0))
    images, _ = data.head("train", 8)
    assert images.dtype == np.uint8 and images.max() > 100
    assert any("takes uint8 pixels: images are given in [0, 255]" in n for n in data.notes)
    path = tmp_path / "u8.keras"
    model.save(path)
    r = cli("inspect", path, "--data", image_folder, "--json", "--no-latency")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output[r.output.index("{"):])["accuracy"] > 0.8
    wide = keras.Sequential([keras.Input((8, 8, 1), dtype="uint8"), keras.layers.Rescaling(1.0),
                             keras.layers.Flatten(), keras.layers.Dense(10)], name="u8wide")
    named = prepare(wide, load_data("digits", seed=0))  # [0, 1] floats: scaled, rounded
    assert named.x_train.dtype == np.uint8 and named.x_train.max() == 255
    np.savez(tmp_path / "own.npz", x_train=x, y_train=y)  # the user's [0, 1] arrays: warned
    own = prepare(model, load_data(f"npz:{tmp_path / 'own.npz'}"))
    assert any(n.startswith("warning") and "takes uint8 pixels" in n and "become 0 or 1" in n
               for n in own.notes)


def test_named_datasets_scale_for_such_a_model_and_own_arrays_are_warned(tmp_path):
    import keras

    from compress.data import load_data, prepare

    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Rescaling(1 / 255),
                              keras.layers.Flatten(), keras.layers.Dense(10)])
    digits = prepare(model, load_data("digits", seed=0))
    assert 200 < digits.x_train.max() <= 255 and "given in [0, 255]" in digits.notes[-1]
    x = np.random.default_rng(0).random((40, 8, 8, 1)).astype("float32")
    np.savez(tmp_path / "own.npz", x_train=x, y_train=np.arange(40) % 10)
    own = prepare(model, load_data(f"npz:{tmp_path / 'own.npz'}", seed=0))
    assert own.x_train.max() <= 1.0  # the user's arrays are theirs: a warning only
    assert own.notes[-1].startswith("warning:") and "expects [0, 255]" in own.notes[-1]
    plain = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10)])
    assert prepare(plain, load_data("digits", seed=0)).x_train.max() <= 1.0


def test_preprocessing_matches_keras_applications():
    import importlib

    from compress.data.folders import FAMILIES, preprocess_numpy

    pixels = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    for family, mode in FAMILIES.items():
        module = importlib.import_module(f"keras.applications.{family}")
        expected = module.preprocess_input(pixels.copy())
        np.testing.assert_allclose(preprocess_numpy(pixels, mode), expected, rtol=1e-5,
                                   atol=1e-4, err_msg=family)
    np.testing.assert_allclose(preprocess_numpy(pixels, "tf"), pixels / 127.5 - 1)


def test_cli_prunes_from_an_image_folder_with_fine_tuning(cli, cnn_file, image_folder,
                                                          tmp_path):
    path, _ = cnn_file
    out = tmp_path / "pruned.keras"
    res = cli("prune", path, "-o", out, "--data", image_folder, "--preprocess", "scale01",
              "--val-split", "0.2", "--sparsity", "0.6", "--epochs", "1", "--json")
    assert res.exit_code == 0, res.output
    result = json.loads(res.output[res.output.index("{"):])
    assert result["pass"]["sparsity_reached"] == pytest.approx(0.6, abs=0.02)
    assert 0.0 <= result["after"]["accuracy"] <= 1.0 and out.exists()


def test_cli_npy_inputs_and_corrupt_images_are_counted(cli, cnn_file, digits3, tmp_path):
    path, _ = cnn_file
    x, _ = digits3
    np.save(tmp_path / "x.npy", x[:50])
    res = cli("prune", path, "-o", tmp_path / "a.keras", "--data", tmp_path / "x.npy",
              "--sparsity", "0.5")
    assert res.exit_code == 0, res.output
    folder = _write_pngs(tmp_path / "mixed", x[:20], np.arange(20) % 3)
    (folder / "class_1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (folder / "class_2" / "notes.jpg").write_text("not an image")
    # a JPEG cut short (Pillow's verify() does not decode JPEG data: TensorFlow's decoder
    # stopped the whole run mid-stream, naming no file), beside a whole one
    import io

    from PIL import Image

    pixels = np.repeat((x[0] * 255).astype("uint8"), 3, axis=-1)
    whole = io.BytesIO()
    Image.fromarray(pixels).save(whole, "JPEG")
    (folder / "class_0" / "whole.jpg").write_bytes(whole.getvalue())
    (folder / "class_0" / "cut.jpg").write_bytes(whole.getvalue()[:len(whole.getvalue()) // 2])
    res = cli("prune", path, "-o", tmp_path / "b.keras", "--data", folder, "--sparsity",
              "0.5", "--epochs", "1")
    assert res.exit_code == 0, res.output
    assert "skipped 3 unreadable image files (class_0/cut.jpg, class_1/broken.png, " \
        "class_2/notes.jpg)" in " ".join(res.output.split())
    # the training folder given again as --val-data: its bad files are counted once
    res = cli("inspect", path, "--data", folder, "--val-data", folder)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "skipped 3 unreadable image files" in text
    # 21 images: an accuracy on them moves by 4.76 pts a sample, and the report says so
    assert re.search(r"samples scored .* 21 ", text) and \
        "the scores come from only 21 test samples: one sample moves an accuracy by 4.76 " \
        "pts" in text, text


def _empty(tmp):
    (tmp / "empty").mkdir()
    (tmp / "empty" / "readme.txt").write_text("no images here")
    return ["--data", tmp / "empty"]


def _all_corrupt(tmp):
    (tmp / "bad" / "a").mkdir(parents=True)
    for i in range(3):
        (tmp / "bad" / "a" / f"{i}.png").write_bytes(b"garbage")
    return ["--data", tmp / "bad"]


def _too_many_classes(tmp):
    rng = np.random.default_rng(0)
    _write_pngs(tmp / "five", rng.random((10, 8, 8, 1)), np.arange(10) % 5)
    return ["--data", tmp / "five"]


@pytest.mark.parametrize("make,message", [
    (_empty, r"no images \(files ending in .png"),
    (_all_corrupt, "none of its 3 image files could be read"),
    (_too_many_classes, "labels go up to 4 but the model has only 3 outputs"),
    (lambda tmp: ["--data", tmp, "--preprocess", "vgg99"], "--preprocess 'vgg99': unknown"),
    (lambda tmp: ["--data", f"npz:{tmp}"], "is a folder, not an .npz file .*--data"),
    (lambda tmp: ["--data", "digits", "--preprocess", "tf"], "applies to image folders"),
    (lambda tmp: ["--preprocess", "tf"], "--preprocess applies to --data"),
    (lambda tmp: ["--data", tmp / "nope" / "imgs"], "no such folder"),
    (lambda tmp: _too_many_classes(tmp)[:2] + ["--val-split", "0.99"],
     "--val-split 0.99 holds out all 10 images and leaves none to train on"),
], ids=["no-images", "all-corrupt", "labels-vs-outputs", "unknown-preprocess", "npz-dir",
        "preprocess-named", "preprocess-alone", "missing-folder", "split-holds-out-all"])
def test_cli_bad_data_is_one_line_exit_1_nothing_written(cli, cnn_file, tmp_path, make,
                                                         message):
    import re

    path, _ = cnn_file
    args = make(tmp_path)
    out = tmp_path / "out.keras"
    res = cli("prune", path, "-o", out, "--sparsity", "0.5", *args)
    assert res.exit_code == 1, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and re.search(message, lines[0]), res.output
    assert "Traceback" not in res.output and not out.exists()


def test_api_bad_data_is_refused_in_one_line(cnn_file, digits3):
    import tensorflow as tf

    import compress

    _, model = cnn_file
    x, y = digits3
    with pytest.raises(CompressError, match="empty dataset"):
        compress.prune(model, tf.data.Dataset.from_tensor_slices((x[:0], y[:0])), epochs=1)
    with pytest.raises(CompressError, match="unsupported data of type set"):
        compress.prune(model, {1, 2})
    with pytest.raises(CompressError, match=r"samples of shape \(5,\)"):
        compress.prune(model, tf.data.Dataset.from_tensor_slices(np.zeros((4, 5))))
    with pytest.raises(CompressError, match="300 samples but 20 targets"):
        compress.prune(model, (x, y[:20]), epochs=1)


def test_recipe_reads_an_image_folder(image_folder, cnn_file, tmp_path):
    from compress.recipes import run_recipe

    path, _ = cnn_file
    recipe = {"model": str(path), "data": str(image_folder), "preprocess": "scale01",
              "val_split": 0.2, "output": str(tmp_path / "out"),
              "steps": [{"prune": {"sparsity": 0.5, "epochs": 1}}]}
    result = run_recipe(recipe)
    assert any("prune" in str(step) for step in result["steps"])
    assert "data_notes" not in result
    with pytest.raises(CompressError, match="preprocess 'nope': unknown"):
        run_recipe({**recipe, "preprocess": "nope"})
    # the data's notes and warnings are said and kept in the report (a recipe said none)
    import shutil

    partial = tmp_path / "two_classes"
    shutil.copytree(image_folder, partial)
    shutil.rmtree(partial / "class_1")
    said = []
    result = run_recipe({**recipe, "data": str(partial), "output": str(tmp_path / "o2")},
                        progress=said.append)
    warned = [n for n in result["data_notes"] if n.startswith("warning")]
    assert len(warned) == 1 and "2 class folders (class_0, class_2)" in warned[0]
    assert warned[0] in said
    assert said.index(warned[0]) < said.index("steps[0].prune")  # before any training
    assert f"- {warned[0]}" in (tmp_path / "o2" / "report.md").read_text()


def test_a_smaller_image_folder_draws_files_of_every_class(digits3, tmp_path):
    # Its lists are in class order: the first n files (a recipe's subset, --quick) were
    # all of class 0, and the run trained and tested on one class.
    from compress.data.folders import scan

    x, _ = digits3
    folder = _write_pngs(tmp_path / "f", x[:60], np.arange(60) // 20)  # 20 per class
    full = scan(folder, val_split=0.25)
    small = full.take(12, 6)
    assert len(small.train_files) == 12 and len(small.val_files) == 6
    assert set(small.train_labels) == {0, 1, 2}
    assert small.train_files == sorted(small.train_files, key=full.train_files.index)
    again = full.take(12, 6)
    assert again.train_files == small.train_files and again.val_files == small.val_files
    assert full.take(None, None).train_files == full.train_files


def test_calibration_from_an_image_folder_draws_every_class(digits3, cnn_file, tmp_path,
                                                            monkeypatch):
    """Its file lists are in class order: calibration (int8 ranges, OBS/OBD Hessians,
    BatchNorm statistics), the held-out samples of sensitivity and the export check read
    the head of a split, and were all of the first class."""
    from compress.data import load_data, prepare
    from compress.pruning import prune_pass, sensitivity

    x, _ = digits3
    folder = _write_pngs(tmp_path / "f", x[:90], np.arange(90) // 30)  # 30 per class
    data = prepare(cnn_file[1], load_data(str(folder), seed=0, val_split=0.3))
    assert set(data.head("train", 16)[1].tolist()) == {0}  # why: the list's order
    x_cal, y_cal = data.spread("train", 16)
    assert x_cal.shape == (16, 8, 8, 1) and set(y_cal.tolist()) == {0, 1, 2}
    np.testing.assert_array_equal(data.spread("train", 16)[1], y_cal)  # seeded
    np.testing.assert_array_equal(data.representative(16), x_cal)
    assert set(sensitivity.held_out(data, 12)[1].tolist()) == {0, 1, 2}
    assert set(prune_pass._val_head(data, 12)[1].tolist()) == {0, 1, 2}


def test_arrays_stored_class_by_class_calibrate_on_every_class(digits3):
    """Arrays sorted by label: the first 16 training samples were all of class 0, and
    calibration, OBS/OBD and a recipe's subset read only those. A shuffled set keeps its
    head (the benchmarks' numbers do not move)."""
    from compress.data import Dataset

    x, y = digits3
    order = np.argsort(y, kind="stable")
    ds = Dataset("sorted", x[order], y[order], None, None, x[order], y[order], 3)
    assert set(ds.head("train", 16)[1].tolist()) == {0}
    assert set(ds.spread("train", 16)[1].tolist()) == {0, 1, 2}
    assert set(ds.take(30, 12).y_train.tolist()) == {0, 1, 2}
    assert ds.representative(16).shape == (16, 8, 8, 1)
    assert any("stored class by class" in note for note in ds.notes)
    mixed = Dataset("mixed", x, y, None, None, x, y, 3)
    np.testing.assert_array_equal(mixed.spread("train", 16)[0], x[:16])
    assert not mixed.notes


def test_a_recipe_subset_of_an_image_folder_holds_every_class(cnn_file, digits3, tmp_path):
    """A model file, an image folder and ``subset``: the stream's first files were taken,
    all of class 0 for training and no class 2 for the test."""
    from compress.recipes import runner

    x, _ = digits3
    folder = _write_pngs(tmp_path / "f", x[:90], np.arange(90) // 30)  # 30 per class
    recipe = {"model": str(cnn_file[0]), "data": str(folder), "seed": 0, "unsafe": False,
              "val_split": 0.3, "subset": 24}
    _, dataset = runner._read_model_file(recipe, runner._read_data(recipe))
    train, test = dataset.split("train")[1], dataset.split("test")[1]
    assert len(train) == 24 and set(train.tolist()) == {0, 1, 2}
    assert set(test.tolist()) == {0, 1, 2}
    again = dataset.split("train")[1]
    np.testing.assert_array_equal(again, train)  # the same files at every read
