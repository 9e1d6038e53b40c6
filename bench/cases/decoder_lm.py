"""A decoder language model trained here: KerasHub's ``LlamaCausalLM`` (2 blocks, hidden
64, 4 query heads sharing 2 key/value heads, a gated feed-forward of 192, rotary
positions, RMS norms) learning the next character of English text (the docstrings of
eight modules of the Python standard library this interpreter ships, so nothing is
downloaded), then every compression a user of such a model reaches for, from the CLI on
the saved file: one-shot unstructured pruning by magnitude and by OBS (SparseGPT's
column-wise compensation, sequential calibration) at 50% and 70% and in the 2:4 pattern,
structured pruning of the feed-forward units, 4-bit weights rounded to nearest or by
GPTQ (the toolkit's int4 ONNX artifact and Keras's own ``keras-int4`` / ``gptq``), and
full-integer int8, all of it and with the attention kept float (``--keep-float``).

Each written file is loaded back and scored on the held-out sequences: next-character
accuracy and perplexity (``exp`` of the mean cross-entropy). The issue's bars for
MobileNetV2 and LeNet (OBS's drop at most a third of magnitude's, 2:4 at most half,
GPTQ's 4-bit drop at most half of round-to-nearest's) are set beside the measurements for
comparison; they are not targets of this model.
"""

from __future__ import annotations

import json
import re
import sysconfig
from pathlib import Path

import numpy as np

from bench.harness import Section, table

#: The modules whose docstrings make the corpus (about 135,000 characters).
MODULES = ("textwrap.py", "argparse.py", "difflib.py", "shutil.py", "inspect.py",
           "typing.py", "tarfile.py", "subprocess.py")
LENGTH = 64  # characters per sequence


def corpus() -> str:
    """The docstrings of :data:`MODULES`, whitespace folded to single spaces."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    text = " ".join(" ".join(re.findall(r'"""(.*?)"""', (lib / name).read_text(),
                                              re.DOTALL))
                    for name in MODULES)
    return re.sub(r"\s+", " ", text)


def language_model(work: Path, seed: int, epochs: int, sequences: int | None = None):
    """``(path, npz, vocabulary)``: the trained CausalLM saved, its data (``x_SPLIT/
    token_ids``, ``padding_mask``, next characters as ``y_SPLIT``; a tenth held out)."""
    import keras
    import keras_hub

    text = corpus()
    chars = sorted(set(text))
    ids = np.array([chars.index(c) + 1 for c in text], "int32")  # 0: padding
    n = len(ids) // (LENGTH + 1)
    seq = ids[: n * (LENGTH + 1)].reshape(n, LENGTH + 1)
    np.random.default_rng(seed).shuffle(seq)
    seq = seq[:sequences] if sequences else seq
    x, y = seq[:, :-1], seq[:, 1:]
    test = len(seq) // 10
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=len(chars) + 1, num_layers=2, num_query_heads=4,
        num_key_value_heads=2, hidden_dim=64, intermediate_dim=192,
        max_sequence_length=LENGTH)
    lm = keras_hub.models.LlamaCausalLM(backbone, preprocessor=None)
    lm.compile(optimizer=keras.optimizers.Adam(2e-3),
               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
               metrics=["accuracy"])
    mask = np.ones_like(x)
    lm.fit({"token_ids": x[test:], "padding_mask": mask[test:]}, y[test:], batch_size=32,
           epochs=epochs, verbose=0)
    path = work / "lm.keras"
    lm.save(path)
    npz = work / "lm.npz"
    np.savez(npz, **{"x_train/token_ids": x[test:], "x_train/padding_mask": mask[test:],
                     "y_train": y[test:], "x_test/token_ids": x[:test],
                     "x_test/padding_mask": mask[:test], "y_test": y[:test]})
    return path, npz, len(chars) + 1


def scores(path: Path, npz: Path) -> tuple[float, float]:
    """``(accuracy, perplexity)`` of the file at ``path`` (``.keras`` loaded back in safe
    mode, ``.onnx`` run in onnxruntime) on the test sequences."""
    data = np.load(npz)
    x = {"token_ids": data["x_test/token_ids"], "padding_mask": data["x_test/padding_mask"]}
    y = data["y_test"]
    if path.suffix == ".onnx":
        from compress.runtime import run_artifact

        logits = np.asarray(run_artifact(path.read_bytes(), x, fmt="onnx"))
    else:
        from compress import io

        logits = np.asarray(io.load_model(path).predict(x, verbose=0, batch_size=64))
    logits = logits.astype("float64")
    logits -= logits.max(-1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_p, y[..., None], -1).mean()
    return float(np.mean(logits.argmax(-1) == y)), float(np.exp(nll))


def case_decoder_lm(ctx) -> Section:
    from click.testing import CliRunner

    from compress.cli import main

    sec = Section("Decoder language model: OBS, structured and GPTQ on a trained Llama "
                  "(KerasHub)", issue="#20")
    work = ctx.work_dir / "decoder-lm"
    work.mkdir(parents=True, exist_ok=True)
    blocks = ["--layers", "transformer_layer_.*"]  # the decoders; embeddings stay dense
    runs = {
        "magnitude 50%": ("keras", ["prune", "--sparsity", "0.5", *blocks]),
        "OBS 50%": ("keras", ["prune", "--method", "obs", "--sparsity", "0.5", *blocks]),
        "magnitude 70%": ("keras", ["prune", "--sparsity", "0.7", *blocks]),
        "OBS 70%": ("keras", ["prune", "--method", "obs", "--sparsity", "0.7", *blocks]),
        "magnitude 2:4": ("keras", ["prune", "--two-four", *blocks]),
        "OBS 2:4": ("keras", ["prune", "--method", "obs", "--two-four", *blocks]),
        "structured: half the feed-forward units": (
            "keras", ["prune", "--structured", "--sparsity", "0.5"]),
        "int4 weights, nearest (ONNX)": (
            "onnx", ["quantize", "--mode", "int4", "--rounding", "nearest"]),
        "int4 weights, GPTQ (ONNX)": (
            "onnx", ["quantize", "--mode", "int4", "--rounding", "gptq"]),
        "Keras keras-int4 (nearest)": ("keras", ["quantize", "--mode", "keras-int4"]),
        "Keras gptq (4-bit, groups of 128)": ("keras", ["quantize", "--mode", "gptq"]),
        "int8 full-integer (TFLite)": ("tflite", ["quantize"]),
        "int8, attention float (TFLite, --keep-float self_attention)": (
            "tflite", ["quantize", "--keep-float", "self_attention"]),
        "int8 full-integer (ONNX)": ("onnx", ["quantize"]),
        "int8, attention float (ONNX, --keep-float self_attention)": (
            "onnx", ["quantize", "--keep-float", "self_attention"]),
        "int8, --keep-float auto (TFLite)": ("tflite", ["quantize", "--keep-float", "auto"]),
        "int8, --keep-float auto (ONNX)": ("onnx", ["quantize", "--keep-float", "auto"]),
    }
    if ctx.quick:  # the harness checked: a short training, the 50% pair
        runs = {k: runs[k] for k in ("magnitude 50%", "OBS 50%")}
        path, npz, vocab = language_model(work, ctx.seed, epochs=1, sequences=400)
    else:
        path, npz, vocab = language_model(work, ctx.seed, epochs=12)
    base_acc, base_ppl = scores(path, npz)
    from compress import io

    plain = work / "lm-float.keras"  # the float model without the optimizer state it was saved with
    io.save_model(io.load_model(path), plain, force=True)
    rows = [["float (trained)", f"{base_acc:.2%}", f"{base_ppl:.2f}", "-",
             f"{plain.stat().st_size / 1024:,.0f} KB", "the file without its optimizer state"]]
    drops, notes = {}, []
    for name, (fmt, (command, *options)) in runs.items():
        out = work / (re.sub(r"\W+", "-", name).strip("-") + "." + fmt)
        result = CliRunner().invoke(main, [command, str(path), "-o", str(out), "--data",
                                           f"npz:{npz}", "--json", "--force", *options])
        if result.exit_code != 0:
            last = result.output.strip().splitlines()[-1] if result.output.strip() else ""
            rows.append([name, "failed", last[-100:], "", "", ""])
            continue
        info = json.loads(result.output[result.output.index("{"):])
        if fmt == "tflite":  # LiteRT's own scores, from the report (no Keras file)
            acc, ppl = info["accuracy"], float("nan")
        else:
            acc, ppl = scores(out, npz)
        drops[name] = base_acc - acc
        size = out.stat().st_size / 1024
        flag = "" if info.get("verified", True) else " (flagged: " + \
            str(info.get("agreement", "")).split(":")[0] + ")"
        rows.append([name, f"{acc:.2%}{flag}", "-" if np.isnan(ppl) else f"{ppl:.2f}",
                     f"{-100 * drops[name]:+.2f}", f"{size:,.0f} KB", _detail(info, command)])
    sec.add(f"The model: {vocab - 1} characters (+ padding), sequences of {LENGTH}, "
            f"{'1 epoch on 400 sequences (quick)' if ctx.quick else '12 epochs'}; "
            "`bench/cases/decoder_lm.py`. Each row is one CLI command on the saved file "
            "with `--data npz:lm.npz` (its training split calibrates; nothing is "
            "fine-tuned), then the written file scored on the held-out tenth. Pruning acts "
            "on the decoder blocks (`--layers 'transformer_layer_.*'`); the token "
            "embedding and the language-model head stay dense. `drop`: points of "
            "next-character accuracy lost. The int8 row's accuracy is LiteRT's, from the "
            "report. File sizes are raw (the `.keras` files of unstructured pruning are as large "
            "as the float one; zipped, and as 2:4 or sparse kernels, they shrink); the "
            "`int4` ONNX artifact stores its 4-bit grid values as float32 (`--mode int4`), "
            "Keras's `keras-int4` and `gptq` files pack them.")
    sec.add(table(["model", "next-char accuracy", "perplexity", "drop (pts)",
                   "file", "what the command did"], rows))
    pairs = [("50%", "magnitude 50%", "OBS 50%", 1 / 3), ("70%", "magnitude 70%", "OBS 70%", 1 / 3),
             ("2:4", "magnitude 2:4", "OBS 2:4", 1 / 2),
             ("int4", "int4 weights, nearest (ONNX)", "int4 weights, GPTQ (ONNX)", 1 / 2)]
    for label, plain, second, bar in pairs:
        if plain in drops and second in drops and drops[plain] > 0:
            ratio = drops[second] / drops[plain]
            notes.append(f"{label}: {100 * drops[second]:.2f} vs {100 * drops[plain]:.2f} "
                         f"pts, ratio {ratio:.2f} (the issue's bar for its models: "
                         f"<= {bar:.2f}, {'within' if ratio <= bar else 'not within'} it)")
    if notes:
        sec.add("Second-order against first-order, accuracy drops (OBS or GPTQ vs "
                "magnitude or nearest): " + "; ".join(notes) + ".")
    return sec


def _detail(info: dict, command: str) -> str:
    """One short phrase of what the command reported doing."""
    if command == "prune":
        p = info.get("pass", {})
        if p.get("ffn_units"):
            units = next(iter(p["ffn_units"].values()))
            return f"feed-forward {units[0]} -> {units[1]} units per block, params " \
                   f"{p['params_after'] / p['params_before']:.0%}"
        return f"sparsity {p.get('sparsity_reached', 0):.0%} of the blocks' kernels"
    if "rounding" in info and isinstance(info["rounding"], dict):
        r = info["rounding"]
        return f"{len(r.get('layers', []))} kernels rounded by {r['rounding']}" \
            if r["rounding"] == "gptq" else f"kernels rounded to nearest, SQNR " \
            f"{info.get('sqnr_db', float('nan')):.1f} dB"
    auto = info.get("keep_float_auto")
    if auto:
        return (f"kept float: {', '.join(auto['layers']) or 'nothing'} "
                f"({auto['conversions']} conversions), SQNR "
                f"{info.get('sqnr_db', float('nan')):.1f} dB")
    if "quantized_layers" in info:
        return f"{len(info['quantized_layers'])} layers {next(iter(info['quantized_layers'].values()), '')}"
    return f"SQNR {info.get('sqnr_db', float('nan')):.1f} dB against the float model"


CASES = {"decoder-lm": case_decoder_lm}
