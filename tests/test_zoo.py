"""The model zoo, fast subset: models people ship, driven through the CLI in-process.

Each case is a real Keras architecture (``keras.applications`` with ``weights=None`` at a
32x32 input, BatchNorm statistics set from real photographs so the outputs are not a
tied uniform softmax) saved to a ``.keras`` file: MobileNetV3Small (hard-swish ops,
squeeze-and-excitation), EfficientNet-B0's blocks at reduced depth (Normalization,
Reshape in SE blocks), a small
ConvNeXt (grouped depthwise convolutions, LayerNorm, Dense on 4-D tensors, layer scale,
GELU), a transfer-learning nest (MobileNetV2 used as a layer), a model with a custom
layer loaded through ``--import``, and a ``mixed_float16`` model. Every case goes
through structured pruning (output shape kept, parameters down) and ONNX export with
the parity check; int8 TFLite runs on the cases whose conversion had its own failure.
"""

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from bench import zoo_models
from bench.cases.zoo import _photos
from compress import io


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """32x32 patches of the two scikit-learn sample photographs, as an npz data file
    (the zoo benchmark's, bench/cases/zoo.py)."""
    x = _photos(32, 48, 0)
    path = tmp_path_factory.mktemp("zoo") / "photos.npz"
    np.savez(path, x_train=x[:24], x_test=x[24:])
    return path, x


def _save(model, folder, name):
    path = folder / f"{name}.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, photos):
    """name -> (model file, extra CLI arguments); each model built once per module."""
    from keras.src.applications.convnext import ConvNeXt
    from keras.src.applications.efficientnet import EfficientNet

    from compress.models import application, recalibrate_batchnorm

    folder = tmp_path_factory.mktemp("zoo_models")
    _, x = photos
    keras.utils.set_random_seed(0)
    cases = {}
    cases["mobilenetv3small"] = _save(application("MobileNetV3Small", 32, calibration=x),
                                      folder, "mnv3s")
    # EfficientNet-B0's blocks (Normalization, swish, squeeze-and-excitation with Reshape)
    # at a quarter of its depth and half its width: the full B0 is a bench/zoo.py case.
    effnet = EfficientNet(0.5, 0.25, 32, input_shape=(32, 32, 3), weights=None, classes=10,
                          name="efficientnet_small")
    recalibrate_batchnorm(effnet, x)
    cases["efficientnet"] = _save(effnet, folder, "effnet")
    cases["convnext"] = _save(ConvNeXt(depths=[1, 1, 1, 1], projection_dims=[8, 16, 32, 64],
                                       input_shape=(32, 32, 3), weights=None, classes=10,
                                       name="convnext_mini"), folder, "convnext")
    # the zoo benchmark's hand-written cases (bench/zoo_models.py), built the same way
    for name, build in (("nested", zoo_models.transfer_nest),
                        ("custom", zoo_models.custom_layer),
                        ("mixed_float16", zoo_models.mixed_float16)):
        model, _, _ = build(folder, seed=0)
        cases[name] = _save(model, folder, name)
    zoo_models.forget_user_classes()  # only --import brings the custom layer back
    extra = {name: [] for name in cases}
    extra["custom"] = ["--import", str(zoo_models.USER_MODULE)]
    return {name: (path, extra[name]) for name, path in cases.items()}


CASES = ["mobilenetv3small", "efficientnet", "convnext", "nested", "custom", "mixed_float16"]
# int8 TFLite on the cases whose conversion had its own failure (custom layer, float16:
# FlexConv2D); grouped convs are in test_export.py, the rest bench/zoo.py cells (time).
INT8_CASES = ["custom", "mixed_float16"]


def _run(cli, *args):
    result = cli(*args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.parametrize("name", CASES)
def test_structured_prune_then_onnx_export_with_parity(cli, zoo, photos, name, tmp_path):
    path, extra = zoo[name]
    out = tmp_path / "pruned.keras"
    info = _run(cli, "prune", path, "-o", out, "--structured", "--sparsity", "0.3", "--json",
                *extra)["pass"]
    if extra:
        io.import_modules(extra[1:])
    pruned = io.load_model(out)
    original_shape = keras.saving.load_model(path, compile=False).output.shape \
        if name == "nested" else None
    assert info["params_after"] == pruned.count_params() < 0.8 * info["params_before"]
    assert pruned.output.shape == (None, 10)
    shrunk = [n for n, (before, after) in info["units"].items() if after < before]
    assert len(shrunk) >= 2
    # every producer left whole is named, with the reason: here at least the classifier
    assert any("output" in reason for reason in info["not_pruned"])
    if name == "nested":  # layers inside the nested MobileNetV2 were pruned, nesting kept
        assert original_shape == pruned.output.shape
        inner = [la for la in pruned.layers if isinstance(la, keras.Model)]
        assert len(inner) == 1 and any(n.startswith("block_") for n in shrunk)
    if name == "custom":  # the custom layer cannot be resized: its producer is named
        assert any("gain" in reason and "c1" in names
                   for reason, names in info["not_pruned"].items())

    # the pruned model exports to ONNX and agrees with Keras on the photographs
    result = _run(cli, "export", out, "-o", tmp_path / "m.onnx", "--data",
                  f"npz:{photos[0]}", "--json", *extra)
    assert result["max_abs_diff"] <= 1e-4 and result["top1_agreement"] == 1.0
    assert (tmp_path / "m.onnx").stat().st_size == result["bytes"]
    if name in ("mixed_float16", "efficientnet", "convnext"):
        assert result["export_copy"]  # the report says how the artifact was made
    if name == "mixed_float16":
        assert "float32 copy" in result["export_copy"]
        assert 0.0 < result["copy_max_abs_diff"] < 0.05  # float16 rounding, no more


@pytest.mark.parametrize("name", INT8_CASES)
def test_int8_tflite_runs_and_is_measured(cli, zoo, photos, name, tmp_path):
    path, extra = zoo[name]
    result = _run(cli, "quantize", path, "-o", tmp_path / "m.tflite", "--mode", "int8",
                  "--data", f"npz:{photos[0]}", "--json", "--no-latency", *extra)
    assert result["bytes"] == (tmp_path / "m.tflite").stat().st_size
    assert result["bytes"] < 0.5 * result["float_bytes"]
    assert 0.0 <= result["top1_agreement"] <= 1.0


def test_failed_import_is_one_line_and_writes_nothing(cli, zoo, tmp_path):
    path, _ = zoo["custom"]
    bad = tmp_path / "broken_layers.py"
    bad.write_text("raise RuntimeError('the user module is broken')\n")
    out = tmp_path / "x.onnx"
    result = cli("export", path, "-o", out, "--import", bad)
    assert result.exit_code == 1 and not out.exists()
    assert result.output.strip() == ("error: --import " + str(bad) +
                                     ": RuntimeError: the user module is broken")
    zoo_models.forget_user_classes()  # as in a new process
    missing = cli("export", path, "-o", out)  # without --import the layer is unknown
    assert missing.exit_code == 1 and "--import" in missing.output and not out.exists()


def test_recipe_import_needs_the_users_unsafe_flag(tmp_path):
    from compress.errors import CompressError
    from compress.recipes import load_recipe

    recipe = {"model": "lenet300", "data": "digits", "import": "my_layers",
              "steps": [{"prune": {"sparsity": 0.5}}]}
    with pytest.raises(CompressError, match="import: a recipe cannot run Python modules"):
        load_recipe(dict(recipe))
    assert load_recipe(dict(recipe), unsafe=True)["import"] == ["my_layers"]
