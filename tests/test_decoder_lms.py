"""KerasHub decoder language models (Llama, Qwen 3, GPT-NeoX, Bloom, a Llama CausalLM):
every pass on a user's file, with no labels (token ids only).

What broke before, each asserted here:

- KerasHub 0.32's ``LlamaTransformerDecoder.get_config`` names an attribute it never sets
  (``rope_scaling_factor``), and the Qwen 3 and GPT-NeoX decoders write keys their
  constructors refuse: every pass's copy (``clone_model``) crashed, and a copy could not
  be saved. Such a layer is now read back from its constructor's arguments.
- A CausalLM's head shares its backbone's token embedding: the copy cloned it twice
  ("a weight list of length 21, but the layer was expecting 23").
- The backbone's output (hidden states from an RMS norm) was scored as a 32-class
  classifier: "top-1 agreement" of argmaxes over hidden features.
- OBS 2:4 left grouped-query attention's key and value kernels dense, unsaid (their
  ``(hidden, kv_heads, head_dim)`` kernel was grouped along the head axis).
- k-means and magnitude pruning did not reach KerasHub's ``ReversibleEmbedding``.
- ``distill`` crashed on unlabelled data (the student-alone baseline trained on None), and
  a half-width student of a backbone changed its output width.
- TFLite needed the Flex delegate for the attention mask's ``[:, None, :, :]``.
- GPTQ refused the two-input backbone; a GPTQ'd backbone's file did not load back.
- onnxruntime refused Bloom's int8 layer norms (QLinearGlobalAveragePool).
"""

import json
import warnings

import numpy as np
import pytest

keras = pytest.importorskip("keras")
keras_hub = pytest.importorskip("keras_hub")

from compress import io
from compress.errors import CompressError
from compress.layer_state import clone_layer, layer_config, read_config
from compress.models import kerashub
from compress.training import copy_model

SMALL = {"vocabulary_size": 100, "num_layers": 2, "hidden_dim": 32, "intermediate_dim": 64}


def _ids(n, length=16, seed=1):
    rng = np.random.default_rng(seed)
    return {"token_ids": rng.integers(1, 100, (n, length)).astype("int32"),
            "padding_mask": np.ones((n, length), "int32")}


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """(model, file, unlabelled npz) of the zoo's LlamaBackbone (grouped-query attention)."""
    folder = tmp_path_factory.mktemp("llama")
    keras.utils.set_random_seed(0)
    model = kerashub("LlamaBackbone")
    path = folder / "llama.keras"
    model.save(path)
    x = _ids(96)
    npz = folder / "tokens.npz"
    np.savez(npz, **{f"x_{split}/{k}": v[part] for k, v in x.items()
                     for split, part in (("train", slice(0, 64)), ("test", slice(64, None)))})
    return model, path, npz


def _json(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _predict(model, x):
    return np.asarray(model.predict(x, verbose=0))


@pytest.mark.parametrize("backbone, extra", [
    ("LlamaBackbone", {"num_query_heads": 4, "num_key_value_heads": 2}),
    ("Qwen3Backbone", {"num_query_heads": 4, "num_key_value_heads": 2, "head_dim": 8}),
    ("GPTNeoXBackbone", {"num_heads": 4, "max_sequence_length": 32}),
])
def test_a_decoder_its_own_config_cannot_rebuild_is_read_back_and_copied_exactly(
        backbone, extra, tmp_path):
    model = getattr(keras_hub.models, backbone)(**SMALL, **extra)
    decoder = model.get_layer("transformer_layer_0")
    with pytest.raises((AttributeError, TypeError)):  # the KerasHub defect worked around
        type(decoder).from_config(decoder.get_config())
    config, own = read_config(decoder)
    assert not own and type(decoder).from_config(layer_config(decoder)).name == decoder.name
    assert clone_layer(decoder).get_config() == config  # it describes itself with it
    copy = copy_model(model)
    x = _ids(3)
    np.testing.assert_array_equal(_predict(copy, x), _predict(model, x))
    copy.save(tmp_path / "copy.keras")  # its layers' configs are written and read back
    again = io.load_model(tmp_path / "copy.keras")
    np.testing.assert_array_equal(_predict(again, x), _predict(model, x))


def test_a_causal_lm_copy_keeps_its_head_tied_to_the_backbone_embedding():
    lm = keras_hub.models.LlamaCausalLM(
        keras_hub.models.LlamaBackbone(**SMALL, num_query_heads=4, num_key_value_heads=2),
        preprocessor=None)
    copy = copy_model(lm)
    assert len(copy.weights) == len(lm.weights)
    x = _ids(2)
    np.testing.assert_array_equal(_predict(copy, x), _predict(lm, x))


def test_pruning_a_llama_file_without_labels_scores_it_as_features(cli, llama, tmp_path):
    _, path, npz = llama
    out = tmp_path / "pruned.keras"
    result = _json(cli("prune", path, "-o", out, "--sparsity", "0.5", "--data",
                       f"npz:{npz}", "--json"))
    after = result["after"]
    assert "top1_agreement" not in json.dumps(after)  # no argmax over hidden features
    assert after["rel_l2_error"] > 0
    text = cli("prune", path, "-o", tmp_path / "again.keras", "--sparsity", "0.5",
               "--data", f"npz:{npz}").output
    assert "hidden features, not class scores" in text and "top-1" not in text
    pruned = io.load_model(out)  # safe mode, no --import: a plain file
    kernel = pruned.get_layer("transformer_layer_0")._self_attention_layer._query_dense.kernel
    assert abs(float(np.mean(np.asarray(kernel) == 0)) - 0.5) < 0.01
    # the token table is pruned too (KerasHub's ReversibleEmbedding)
    table = np.asarray(pruned.get_layer("token_embedding").embeddings)
    assert abs(float(np.mean(table == 0)) - 0.5) < 0.01


def test_obs_two_four_reaches_grouped_query_key_and_value_kernels(cli, llama, tmp_path):
    _, path, npz = llama
    out = tmp_path / "sparse.keras"
    result = _json(cli("prune", path, "-o", out, "--method", "obs", "--two-four", "--data",
                       f"npz:{npz}", "--json"))
    assert not result["pass"].get("two_four_left_dense")
    pruned = io.load_model(out)
    attention = pruned.get_layer("transformer_layer_1")._self_attention_layer
    for dense in (attention._key_dense, attention._value_dense):
        kernel = np.asarray(dense.kernel)  # (hidden, kv_heads, head_dim)
        assert kernel.shape == (32, 2, 8)
        groups = (kernel.reshape(32, -1).T.reshape(-1, 8, 4) != 0).sum(-1)
        assert (groups == 2).all()  # 2 of every 4 consecutive inputs, per output column


def test_a_layer_left_dense_by_two_four_is_named_in_the_text_output(cli, tmp_path):
    inp = keras.Input((6,))  # 6 inputs: no 2:4 pattern fits the first layer
    out = keras.layers.Dense(4)(keras.layers.Dense(8, name="wide")(inp))
    model = keras.Model(inp, out)
    model.save(tmp_path / "m.keras")
    result = cli("prune", tmp_path / "m.keras", "-o", tmp_path / "p.keras", "--two-four")
    assert result.exit_code == 0, result.output
    assert "two_four_left_dense: wide/kernel" in result.output


def test_kmeans_clusters_the_token_table(cli, llama, tmp_path):
    _, path, npz = llama
    out = tmp_path / "shared.keras"
    result = _json(cli("share", path, "-o", out, "--method", "kmeans", "--data",
                       f"npz:{npz}", "--json"))
    assert "token_embedding/embeddings" not in str(result["pass"].get("not_reached"))
    table = np.asarray(io.load_model(out).get_layer("token_embedding").embeddings)
    assert len(np.unique(table)) <= 16


def test_distill_on_token_ids_alone_trains_a_narrower_backbone(cli, llama, tmp_path):
    model, path, npz = llama
    out = tmp_path / "student.keras"
    with warnings.catch_warnings(record=True) as shown:  # what would reach the terminal
        warnings.simplefilter("always")
        run = cli("distill", path, "-o", out, "--width", "0.5", "--epochs", "1",
                  "--data", f"npz:{npz}")
    assert run.exit_code == 0, run.output
    text = " ".join(run.output.split())
    assert "baseline: skipped: the data has no labels" in text
    assert "loss: MSE to the teacher's outputs (no labels: the teacher's outputs alone)" in text
    assert "alpha=" not in text  # the label term's weight: no labels, no such term
    # its score: error against the teacher (no accuracy); Keras's notice that the untied
    # output projection, which no output uses, gets no gradient is not shown
    assert "relative L2 error vs original" in text and "accuracy" not in text
    assert not [w for w in shown if "Gradients do not exist" in str(w.message)]
    student = io.load_model(out)
    assert student.output.shape[-1] == 32  # the hidden width kept; the feed-forward halved
    assert student.count_params() < model.count_params()


def test_llama_converts_to_builtin_tflite_and_int8_without_flex(cli, llama, tmp_path):
    _, path, npz = llama
    result = _json(cli("export", path, "-o", tmp_path / "f.tflite", "--data", f"npz:{npz}",
                       "--json"))
    assert result["max_abs_diff"] < 1e-4
    assert "fixed batch" not in json.dumps(result)  # a free batch, builtin kernels
    result = _json(cli("quantize", path, "-o", tmp_path / "q.tflite", "--data", f"npz:{npz}",
                       "--no-latency", "--json"))
    assert result["verified"] and result["sqnr_db"] > 20


def test_the_unknown_size_note_names_each_input_once(cli, llama, tmp_path):
    _, path, _ = llama
    result = _json(cli("export", path, "-o", tmp_path / "f.onnx", "--json"))
    assert result["input_size_note"] == (
        "input size unknown: checked and timed on random inputs of 'padding_mask' (None, "
        "None), 'token_ids' (None, None) at 1 on the unknown axes, a weak check of a "
        "sequence model; pass --data for the real size")


def test_gptq_of_a_llama_backbone_runs_keras_gptq_on_its_blocks(cli, llama, tmp_path):
    model, path, npz = llama
    out = tmp_path / "gptq.keras"
    result = _json(cli("quantize", path, "-o", out, "--mode", "gptq", "--data", f"npz:{npz}",
                       "--calibration-samples", "16", "--no-latency", "--json"))
    modes = result["quantized_layers"]
    assert any(k.endswith("feedforward_gate_dense") for k in modes) and \
        all(v.startswith("gptq/4") for v in modes.values())
    assert result["agreement_samples"] > 0
    assert result["exports"]["tflite"].startswith("works")
    loaded = io.load_model(out)  # Keras's own file loads back
    x = _ids(4)
    assert _predict(loaded, x).shape == _predict(model, x).shape


def test_gptq_calibrates_a_language_model_on_its_real_tokens_not_its_padding(llama):
    """Keras cuts the calibration sequences into windows of their length: the padding of
    short sequences (token 0, masked out) must not be among them."""
    from keras.src.quantizers.gptq_core import get_dataloader

    from compress.quantization.keras_modes import _calibration_config

    model, _, _ = llama
    x = _ids(8)
    x["padding_mask"][:, 10:] = 0  # each sequence: 10 tokens, then 6 of padding
    x["token_ids"][:, 10:] = 0
    config = _calibration_config(model, "gptq", x)
    windows = get_dataloader(config.tokenizer, config.sequence_length, config.dataset,
                             num_samples=config.num_samples)
    assert windows.shape == (8, 1, 16)
    assert (windows != 0).all()  # real tokens only
    assert set(np.unique(windows)) <= set(np.unique(x["token_ids"][:, :10]))
    x["padding_mask"][:] = 0
    with pytest.raises(CompressError, match="masks every token"):
        _calibration_config(model, "gptq", x)


def test_debug_layers_names_the_sublayers_of_a_decoder_block(llama):
    """TFLite's per-op debugger: an op inside a decoder is named by its innermost layer
    (a name --keep-float takes), with the block around it, not by the backbone."""
    from compress.quantization.debug import layer_sqnr

    model, _, _ = llama
    x = {k: v.astype("float32") for k, v in _ids(16).items()}
    rows = layer_sqnr(model, x, samples=4)["layers"]
    inner = {la.name for la in model.get_layer("transformer_layer_0")._flatten_layers()}
    attention = [r for r in rows if r["op"] == "BATCH_MATMUL"]
    assert attention and all(r["layer"] == "self_attention" for r in attention)
    assert {r["path"].split("/")[-2] for r in attention} == {"transformer_layer_0",
                                                             "transformer_layer_1"}
    named = [r for r in rows if r["layer"] in inner]
    assert len(named) > len(rows) // 2 and not any(r["layer"] == model.name for r in rows)


def test_bloom_int8_onnx_keeps_the_layer_norms_onnxruntime_refuses_float(cli, tmp_path):
    model = keras_hub.models.BloomBackbone(**SMALL, num_heads=4)
    model.save(tmp_path / "bloom.keras")
    x = _ids(64)
    np.savez(tmp_path / "t.npz", **{f"x_train/{k}": v for k, v in x.items()})
    result = _json(cli("quantize", tmp_path / "bloom.keras", "-o", tmp_path / "b.onnx",
                       "--data", f"npz:{tmp_path / 't.npz'}", "--no-latency", "--json"))
    assert "kept float" in result["kept_float"] and "moments/mean" in result["kept_float"]
    # it runs and is measured; random weights leave it flagged or not, and it says which
    assert np.isfinite(result["sqnr_db"]) and result["verified"] == (result["sqnr_db"] >= 20)


def test_structured_pruning_halves_a_llama_feed_forward_and_computes_it_exactly(cli, llama,
                                                                              tmp_path):
    """The gated feed-forward of each decoder loses half its units (the intermediate and
    gate columns, the output rows); the pruned model computes the original with those
    units' output rows zeroed. The file reloads as KerasHub's own decoder class."""
    from compress.pruning.structured import prune_units

    model, path, npz = llama
    pruned, info = prune_units(model, 0.5)
    assert info["ffn_units"] == {"transformer_layer_0": [64, 32], "transformer_layer_1": [64, 32]}
    twin = io.load_model(path)
    for i in range(2):
        old, new = twin.get_layer(f"transformer_layer_{i}"), pruned.get_layer(
            f"transformer_layer_{i}")
        assert type(new).__name__ == "LlamaTransformerDecoder" and new.intermediate_dim == 32
        gate = np.asarray(old._feedforward_gate_dense.kernel)
        kept = [u for u in range(64) if any(np.array_equal(gate[:, u], c) for c in
                                            np.asarray(new._feedforward_gate_dense.kernel).T)]
        assert len(kept) == 32
        second = old._feedforward_output_dense.kernel
        second.assign(np.where(np.isin(np.arange(64), kept)[:, None], second, 0.0))
    x = _ids(4)
    np.testing.assert_allclose(_predict(pruned, x), _predict(twin, x), atol=1e-5)
    out = tmp_path / "small.keras"
    result = _json(cli("prune", path, "-o", out, "--structured", "--sparsity", "0.5",
                       "--data", f"npz:{npz}", "--json"))
    assert result["pass"]["ffn_units"]["transformer_layer_1"] == [64, 32]
    assert io.load_model(out).count_params() == pruned.count_params() < model.count_params()


def test_qat_and_a_layer_subset_of_structured_pruning_name_what_they_leave(cli, llama, tmp_path):
    """QAT's graph rebuild read the decoder's broken config ("no attribute
    'rope_scaling_factor'"); now it gives its own refusal: the backbone has no top-level
    layer QAT fake-quantizes. Structured pruning of one selected block keeps the other
    whole (its config read back, not its own)."""
    _, path, npz = llama
    result = cli("quantize", path, "-o", tmp_path / "q.tflite", "--qat", "--epochs", "1",
                 "--data", f"npz:{npz}")
    assert result.exit_code == 1 and "rope_scaling_factor" not in result.output
    assert "QAT fake-quantizes" in result.output
    out = tmp_path / "one.keras"
    result = _json(cli("prune", path, "-o", out, "--structured", "--sparsity", "0.5",
                       "--layers", "transformer_layer_0", "--data", f"npz:{npz}", "--json"))
    assert result["pass"]["ffn_units"] == {"transformer_layer_0": [64, 32]}
    assert io.load_model(out).get_layer("transformer_layer_1").intermediate_dim == 64


def test_gptq_rounding_reaches_the_decoders_kernels_per_output_channel(cli, llama, tmp_path):
    """``--rounding gptq`` rounded only top-level layers: a Llama's 14 kernels, all inside
    its decoders, were rounded to nearest and reported as GPTQ-rounded (identical
    artifacts for both roundings). A multi-axis kernel's output channels are its
    ``heads * head_dim`` columns, as the converters see it."""
    from compress.quantization.gptq import channel_scales, output_axes

    model, path, npz = llama
    query = model.get_layer("transformer_layer_0")._self_attention_layer._query_dense
    assert output_axes(query, query.kernel) == 2
    assert channel_scales(np.asarray(query.kernel), 7, depthwise=2).shape == (1, 4, 8)
    runs = {}
    for rounding in ("nearest", "gptq"):
        runs[rounding] = _json(cli("quantize", path, "-o", tmp_path / f"{rounding}.onnx",
                                   "--mode", "int4", "--rounding", rounding, "--no-latency",
                                   "--data", f"npz:{npz}", "--json"))
    info = runs["gptq"]["rounding"]
    assert len(info["layers"]) == 14 and not info["other_kernels"]
    assert runs["gptq"]["sqnr_db"] > runs["nearest"]["sqnr_db"]


def test_a_structurally_pruned_causal_lm_file_loads_back(cli, tmp_path):
    """The rebuilt CausalLM is a plain functional model whose head reuses the nested
    backbone's token embedding: Keras saved the layer once and loaded the head's use as a
    second, empty layer, so the written file did not load ("expected 2 variables, but
    received 0"). It is now saved as one flat graph."""
    lm = keras_hub.models.LlamaCausalLM(
        keras_hub.models.LlamaBackbone(**SMALL, num_query_heads=4, num_key_value_heads=2),
        preprocessor=None)
    lm.save(tmp_path / "lm.keras")
    x = _ids(48)
    np.savez(tmp_path / "t.npz", **{f"x_train/{k}": v for k, v in x.items()},
             y_train=x["token_ids"])
    out = tmp_path / "small.keras"
    result = _json(cli("prune", tmp_path / "lm.keras", "-o", out, "--structured",
                       "--sparsity", "0.5", "--data", f"npz:{tmp_path / 't.npz'}", "--json"))
    assert result["pass"]["ffn_units"]["transformer_layer_0"] == [64, 32]
    loaded = io.load_model(out)
    assert len(loaded.weights) == len(lm.weights)
    # no optimizer state in it: smaller than the float file (it was 1.9x once compiled)
    assert out.stat().st_size < (tmp_path / "lm.keras").stat().st_size
    assert _predict(loaded, _ids(2)).shape == (2, 16, 100)


def _float_ops(path) -> int:
    """Operators of a .tflite file whose first output is float32."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
    graph = model.subgraphs[0]
    return sum(graph.tensors[op.outputs[0]].type == 0 for op in graph.operators)


def test_onnx_keep_float_reaches_the_nodes_tf2onnx_made_from_the_attention(cli, llama,
                                                                          tmp_path):
    """tf2onnx rewrites an einsum into nodes named after their kind (``Gemm__1906``):
    before they took the scopes of the named nodes around them, ``--keep-float
    self_attention`` left the attention's projections int8 (a trained Llama stayed at
    17 dB; 26.8 dB now). Kept float, only the feed-forward kernels (hidden 32 <-> 64)
    and the token table stay int8."""
    import onnx

    _, path, npz = llama

    def int8_kernels(name, *extra):
        out = tmp_path / name
        _json(cli("quantize", path, "-o", out, "--data", f"npz:{npz}", "--json",
                  "--no-latency", *extra))
        return sorted(tuple(i.dims) for i in onnx.load(str(out)).graph.initializer
                      if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2)

    plain = int8_kernels("plain.onnx")
    kept = int8_kernels("kept.onnx", "--keep-float", "self_attention")
    feed_forward = [(32, 64)] * 4 + [(64, 32)] * 2
    assert [d for d in plain if d in feed_forward] == feed_forward
    assert (32, 32) in plain  # the query and output projections: int8 when not kept
    assert kept == sorted(feed_forward + [(100, 32)])


def test_keep_float_leaves_the_named_sublayers_float_in_the_int8_artifact(cli, llama,
                                                                          tmp_path):
    """A trained language model's full-integer int8 lost most of its accuracy in its
    attention (BENCHMARKS.md, decoder-lm: SQNR 4 dB; 26.5 dB with the attention float).
    ``--keep-float self_attention`` (a sublayer inside KerasHub's decoders) keeps those
    ops float; a name that matches nothing, or an int8 interface, is one line."""
    _, path, npz = llama
    plain = tmp_path / "plain.tflite"
    _json(cli("quantize", path, "-o", plain, "--data", f"npz:{npz}", "--json",
              "--no-latency"))
    kept = tmp_path / "kept.tflite"
    result = _json(cli("quantize", path, "-o", kept, "--data", f"npz:{npz}", "--json",
                       "--no-latency", "--keep-float", "self_attention"))
    assert result["kept_float_layers"] == ["self_attention"]
    assert _float_ops(kept) > _float_ops(plain)
    refused = ("--keep-float 'nosuch': matches no layer of model 'llama_backbone")
    for extra, words in ((["--keep-float", "nosuch"], refused),
                         (["--keep-float", "self_attention", "--interface", "int8"],
                          "--keep-float leaves layers float")):
        result = cli("quantize", path, "-o", tmp_path / "x.tflite", "--data", f"npz:{npz}",
                     *extra)
        assert result.exit_code == 1 and words in result.output
        assert len(result.output.strip().splitlines()) == 1
        assert not (tmp_path / "x.tflite").exists()
