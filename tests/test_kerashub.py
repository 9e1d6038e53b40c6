"""KerasHub models (issue 19): BERT, GPT-2 and ViT built from small configs, saved, loaded.

The three KerasHub zoo cases of :func:`compress.models.kerashub` (random weights, nothing
downloaded; BERT takes ``token_ids``/``segment_ids``/``padding_mask``, GPT-2
``token_ids``/``padding_mask``, ViT images) go through the CLI as a user's ``.keras``
files: ``inspect`` with multi-input npz data, and structured pruning that removes half
of the attention heads and feed-forward units of every transformer block. The pruned
blocks are plain Keras layers; a fraction of 0 rewrites them exactly.
"""

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("keras_hub")

from compress.models import _leaves, kerashub, kerashub_inputs
from compress.pruning.structured import prune_units

CASES = {"bert": ("BertTextClassifier", 2), "gpt2": ("GPT2Backbone", 0),
         "vit": ("ViTImageClassifier", 10)}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """short name -> (model, file, npz data, inputs); random ids with padded tails."""
    folder = tmp_path_factory.mktemp("kerashub")
    keras.utils.set_random_seed(0)
    out = {}
    for short, (name, classes) in CASES.items():
        model = kerashub(name, num_classes=classes or 2)
        path = folder / f"{short}.keras"
        model.save(path)
        x = kerashub_inputs(model, 40, seed=1)
        arrays = {}
        for split, part in (("train", slice(0, 24)), ("test", slice(24, None))):
            if isinstance(x, dict):
                arrays.update({f"x_{split}/{k}": v[part] for k, v in x.items()})
            else:
                arrays[f"x_{split}"] = x[part]
            if classes:
                arrays[f"y_{split}"] = np.arange(40)[part] % classes
        npz = folder / f"{short}.npz"
        np.savez(npz, **arrays)
        out[short] = (model, path, npz, x)
    return out


def _run(cli, *args):
    result = cli(*args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _predict(model, x):
    return np.asarray(model.predict(x, verbose=0, batch_size=40))


def test_kerashub_files_load_in_a_fresh_process_without_import(hub):
    # the file names keras_hub's classes by module; Keras imports keras_hub itself, in
    # safe mode, so neither --import keras_hub nor --unsafe is needed
    _, path, _, _ = hub["bert"]
    with zipfile.ZipFile(path) as z:
        config = json.loads(z.read("config.json"))
    assert config["module"].startswith("keras_hub.") and \
        config["class_name"] == "BertTextClassifier"
    code = ("import sys, keras; m = keras.saving.load_model(sys.argv[1], safe_mode=True); "
            "print(type(m).__name__, 'keras_hub' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr[-800:]
    assert proc.stdout.split()[-2:] == ["BertTextClassifier", "True"]


@pytest.mark.parametrize("short", ["bert", "vit"])
def test_inspect_reports_multi_input_and_image_models(cli, hub, short):
    model, path, npz, _ = hub[short]
    report = _run(cli, "inspect", path, "--data", f"npz:{npz}", "--json")
    assert report["params"] == model.count_params()
    assert 0.0 <= report["accuracy"] <= 1.0 and report["latency_ms"] > 0
    assert any(r["type"] in ("TransformerEncoder", "ViTEncoder") for r in report["layers"])


@pytest.mark.parametrize("short", ["bert", "gpt2", "vit"])
def test_structured_prune_removes_half_the_heads_and_ffn_units(cli, hub, short, tmp_path):
    model, path, npz, x = hub[short]
    out = tmp_path / "pruned.keras"
    info = _run(cli, "prune", path, "-o", out, "--structured", "--sparsity", "0.5",
                "--json")["pass"]
    assert len(info["heads"]) == 2 and all(v == [4, 2] for v in info["heads"].values())
    assert all(v == [64, 32] for v in info["ffn_units"].values())
    pruned = keras.saving.load_model(out, safe_mode=True)
    assert info["params_after"] == pruned.count_params() < 0.75 * info["params_before"]
    heads = [la.num_heads for la in _leaves(pruned)
             if isinstance(la, keras.layers.MultiHeadAttention)]
    assert heads == [2, 2]
    y = _predict(pruned, x)
    assert y.shape == _predict(model, x).shape and np.all(np.isfinite(y))
    if short == "vit":  # the pruned blocks export to ONNX with the parity check
        result = _run(cli, "export", out, "-o", tmp_path / "m.onnx", "--data", f"npz:{npz}",
                      "--json")
        assert result["max_abs_diff"] <= result["tolerance"]


def test_pruned_bert_computes_the_original_with_the_removed_heads_zeroed(hub):
    model, path, _, x = hub["bert"]
    pruned, _ = prune_units(model, 0.5)
    twin = keras.saving.load_model(path)  # a copy of the original, weights zeroed below
    for i in range(2):
        old = twin.backbone.get_layer(f"transformer_layer_{i}")
        new_q = _layer(pruned, f"transformer_layer_{i}_self_attention")._query_dense.kernel
        old_q = np.asarray(old._self_attention_layer._query_dense.kernel)
        kept = [h for h in range(4)
                if any(np.array_equal(old_q[:, h], np.asarray(new_q)[:, j]) for j in range(2))]
        assert len(kept) == 2
        out = old._self_attention_layer._output_dense.kernel
        out.assign(np.where(np.isin(np.arange(4), kept)[:, None, None], out, 0.0))
        first = _layer(pruned, f"transformer_layer_{i}_feedforward_intermediate").kernel
        old_first = np.asarray(old._feedforward_intermediate_dense.kernel)
        units = [u for u in range(64) if any(np.array_equal(old_first[:, u], c)
                                             for c in np.asarray(first).T)]
        assert len(units) == 32
        second = old._feedforward_output_dense.kernel
        second.assign(np.where(np.isin(np.arange(64), units)[:, None], second, 0.0))
    # the pooler lost half its units too: zero the rest in the twin likewise
    pooled = _layer(pruned, "pooled_dense").kernel
    old_pool = twin.backbone.get_layer("pooled_dense")
    keep = [u for u in range(32) if any(np.array_equal(np.asarray(old_pool.kernel)[:, u], c)
                                        for c in np.asarray(pooled).T)]
    logits = twin.get_layer("logits").kernel
    logits.assign(np.where(np.isin(np.arange(32), keep)[:, None], logits, 0.0))
    np.testing.assert_allclose(_predict(pruned, x), _predict(twin, x), atol=1e-5)


@pytest.mark.parametrize("short", ["bert", "gpt2", "vit"])
def test_rewrite_in_plain_keras_layers_is_exact(hub, short, tmp_path):
    model, _, _, x = hub[short]
    same, info = prune_units(model, 0.0)  # every head kept: only the rewrite
    assert all(a == b for a, b in info["heads"].values())
    assert not any(type(la).__module__.startswith("keras_hub") and
                   type(la).__name__ in ("TransformerEncoder", "TransformerDecoder",
                                         "ViTEncoder", "ViTPatchingAndEmbedding")
                   for la in _leaves(same))
    # ViT's class token is folded into position 0 of the position table
    assert model.count_params() - same.count_params() == (32 if short == "vit" else 0)
    np.testing.assert_allclose(_predict(same, x), _predict(model, x), atol=1e-5)


def _layer(model, name):
    return next(la for la in _leaves(model) if la.name == name)


@pytest.mark.parametrize("mode,suffix", [("int8", "onnx"), ("dynamic", "tflite"),
                                         ("int8", "tflite")])
def test_bert_int8_artifacts_take_int32_token_ids_and_are_verified(cli, hub, tmp_path, mode,
                                                                   suffix):
    """Token ids reach the artifact as int32 (calibration reader, runtime feed), not as
    float32 ("expected tensor(int32)") or as "quantized" with a zero scale (gather out of
    bounds); the check compares every output with Keras and can fail (SQNR). Full-integer
    TFLite calibrates with int32 ids too (a float32 calibration sample made LiteRT refuse
    the int32 input, which read as "an op has no int8 TFLite kernel")."""
    _model, path, npz, _x = hub["bert"]
    out = tmp_path / f"bert.{suffix}"
    report = _run(cli, "quantize", path, "--data", f"npz:{npz}", "--mode", mode, "-o", out,
                  "--json")
    assert out.exists()
    assert report["verified"] and report["sqnr_db"] >= 20, report


@pytest.mark.parametrize("command", ["export", "quantize"])
def test_vit_exports_to_onnx_with_its_gelu_written_with_erf(cli, hub, tmp_path, command):
    """The exact GELU of the Dense layers KerasHub's ViT MLP builds becomes TensorFlow's
    Erfc, which onnxruntime rejects: the export copy writes it with Erf (and holds ViT's
    position ids as constants, not as an unfed graph input); parity and SQNR are checked."""
    _, path, npz, _ = hub["vit"]
    out = tmp_path / "vit.onnx"
    mode = ["--mode", "int8"] if command == "quantize" else []
    report = _run(cli, command, path, "--data", f"npz:{npz}", *mode, "-o", out, "--json")
    report = report.get("pass", report)
    assert out.exists() and "GELU written with erf (2 layers)" in report["export_copy"]
    if command == "export":
        assert report["max_abs_diff"] <= report["tolerance"] and report["sqnr_db"] > 80
    else:
        assert report["verified"] and report["sqnr_db"] >= 20, report


def test_export_refusal_compares_keras_and_the_artifact_with_a_float64_copy(cli, hub,
                                                                           tmp_path):
    # a tolerance no float32 computation meets: refused, naming how far the artifact and
    # Keras's own float32 outputs are from a float64 copy of the model
    _, path, npz, _ = hub["vit"]
    out = tmp_path / "vit.onnx"
    result = cli("export", path, "--data", f"npz:{npz}", "-o", out, "--atol", "1e-12")
    assert result.exit_code == 1 and not out.exists()
    assert "disagrees with Keras" in result.output and "float64 copy: artifact" in \
        result.output and "Traceback" not in result.output


def test_an_onnx_graph_onnxruntime_rejects_is_refused_in_one_line():
    from onnx import TensorProto, helper

    from compress import runtime
    from compress.errors import CompressError

    spec = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in "xy"]
    graph = helper.make_graph([helper.make_node("Erfc", ["x"], ["y"], name="gelu")], "g",
                              spec[:1], spec[1:])
    content = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(CompressError, match=r"cannot load the ONNX graph \(at its Erfc "
                       r"node\)") as caught:
        runtime.run_artifact(content.SerializeToString(), np.zeros(1, np.float32), fmt="onnx")
    assert "\n" not in str(caught.value)


def test_debug_layers_on_a_three_input_model(cli, hub, tmp_path):
    """--debug-layers on BERT (token ids, segment ids, padding mask): the debugger gets
    each input in its own dtype and in the debug model's own input order."""
    _model, path, npz, _x = hub["bert"]
    report = _run(cli, "quantize", path, "--data", f"npz:{npz}", "-o", tmp_path / "b.tflite",
                  "--debug-layers", "--json", "--no-latency")
    rows = report["layer_sqnr"]["layers"]
    # JSON has no Infinity or NaN: an op that loses nothing (SQNR inf) reads null
    assert len(rows) > 10 and all(r["sqnr_db"] is None or np.isfinite(r["sqnr_db"])
                                  for r in rows)
    assert sum(r["sqnr_db"] is not None for r in rows) > 10
    assert report["layer_sqnr"]["worst"][0] == rows[0]["layer"]
