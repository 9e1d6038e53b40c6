"""Models with preprocessing layers inside: an end-to-end text classifier (sentences in,
``TextVectorization``), a tabular classifier (a string column through ``StringLookup``,
numeric columns through an adapted ``Normalization``) and a tabular regressor (eight raw
columns of very different ranges through one ``Normalization``), the shapes of the
keras.io text and structured-data guides.

Such layers keep state outside the weights (vocabularies; the adapted mean and variance
are turned into constants when the layer is adapted or loaded). Before this round every
copy a pass made lost it: a text model's copies failed ("Table not initialized") and a
tabular model's copies normalized with mean 0 and variance 1, so its reports and
fine-tuning saw raw columns (a k-means copy reported at 48.5% while the file it wrote
scored 100%). Here each pass's reported test accuracy is set beside the accuracy of the
file it wrote, loaded back. Then the artifacts: TFLite/ONNX int8 from the lookups'
outputs (``--without-lookups``), with the input normalization kept float where one int8
scale cannot hold the raw columns, against the same artifact with everything int8.
"""

from __future__ import annotations

import json

import numpy as np

from bench.harness import Section, table


def _regressor(work, seed: int):
    """Eight raw columns (scales 0.1 to 1,000 around 50) through one adapted
    ``Normalization``, a Dense layer, one linear unit; its npz."""
    import keras

    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    scales = np.array([1, 10, 100, 0.1, 5, 3, 2, 1000], "float32")
    x = (rng.normal(size=(1000, 8)).astype("float32") * scales + 50).astype("float32")
    y = ((x[:, 0] - 50) * 0.5 + (x[:, 3] - 50) * 20 + (x[:, 7] - 50) * 0.002).astype("float32")
    norm = keras.layers.Normalization(name="norm")
    norm.adapt(x)
    inp = keras.Input((8,), name="columns")
    h = keras.layers.Dense(32, activation="relu", name="hidden")(norm(inp))
    model = keras.Model(inp, keras.layers.Dense(1, name="value")(h), name="tab_regressor")
    model.compile("adam", "mse", metrics=["mae"])
    model.fit(x[:800], y[:800], epochs=40, verbose=0)
    npz = work / "tab_regressor.npz"
    np.savez(npz, x_train=x[:800], y_train=y[:800], x_test=x[800:], y_test=y[800:])
    return model, npz


def _file_accuracy(path, npz) -> float:
    """Test accuracy of the file at ``path``, loaded back, on the npz's test split (the
    split every report here uses: the npz files give no test split, so it is the seeded
    one :func:`compress.data.load_data` takes, reproduced here)."""
    import keras
    import tensorflow as tf

    from compress.data import load_data
    from compress.layers import register_layers

    register_layers()
    model = keras.models.load_model(path)
    x, y = load_data(f"npz:{npz}", 0).split("test")
    x = {k: tf.constant(v) for k, v in x.items()} if isinstance(x, dict) else tf.constant(x)
    return float(np.mean(np.argmax(np.asarray(model(x)), -1) == y))


def case_preprocessing(ctx) -> Section:
    from click.testing import CliRunner

    from bench.zoo_models import tabular, text_vectorize
    from compress.cli import main

    sec = Section("Models with preprocessing layers: text and tabular (state outside the "
                  "weights)", issue="#18")
    work = ctx.work_dir / "preprocessing"
    work.mkdir(parents=True, exist_ok=True)
    runs = {"prune 50% (1 epoch)": ["prune", "--sparsity", "0.5", "--epochs", "1"],
            "k-means 16": ["share", "--method", "kmeans", "--clusters", "16"],
            "hash 1/2 (3 epochs)": ["share", "--method", "hash", "--factor", "0.5",
                                    "--epochs", "3"],
            "cascade": ["cascade"],
            "keras-int8": ["quantize", "--mode", "keras-int8"]}
    builds = [("text (TextVectorization)", text_vectorize),
              ("tabular (StringLookup, Normalization)", tabular)]
    if ctx.quick:  # the harness checked on one model, one pass, one artifact
        runs, builds = {"k-means 16": runs["k-means 16"]}, builds[1:]
    rows, same = [], []
    for label, build in builds:
        model, npz, _ = build(work, ctx.seed)
        path = work / f"{model.name}.keras"
        model.save(path)
        for name, (command, *options) in runs.items():
            out = work / f"{model.name}-{command}.keras"
            result = CliRunner().invoke(main, [command, str(path), "-o", str(out), "--data",
                                               f"npz:{npz}", "--json", "--force", *options])
            last = result.output.strip().splitlines()[-1] if result.output.strip() else ""
            if result.exit_code == 1 and last.startswith("error: ") and "unexpected" not in last:
                rows.append([label, name, "refused in one line", last[7:110], "-", "-"])
                continue  # a pass that does not apply (cascade: a chain of layers only)
            if result.exit_code != 0:
                rows.append([label, name, "failed", last[-120:], "", "**no**"])
                same.append(False)
                continue
            info = json.loads(result.output)
            reported = info["after"]["accuracy"] if "after" in info else info["accuracy"]
            before = info["before"]["accuracy"] if "before" in info else \
                info.get("float_accuracy")
            loaded = _file_accuracy(out, npz)
            same.append(abs(reported - loaded) < 1e-9)
            rows.append([label, name, "-" if before is None else f"{before:.2%}",
                         f"{reported:.2%}", f"{loaded:.2%}",
                         "yes" if same[-1] else "**no**"])
    sec.add("Each pass from the CLI on the model as saved (seeded synthetic data, the "
            "zoo's TextVectorize and Tabular cases, bench/zoo_models.py): the test accuracy "
            "its report gives for the model it wrote, and the accuracy of that file loaded "
            "back with plain Keras. Before this round the text model's passes failed and the "
            "tabular model's copies normalized with mean 0, variance 1 (k-means reported "
            "48.5% for a file that scores 100%).")
    sec.add(table(["model", "pass", "input model", "reported", "file loaded back",
                   "same"], rows))
    sec.target("every pass's reported accuracy is its written file's (text and tabular "
               "models)", f"{sum(same)} of {len(same)}", "all", all(same))

    from compress.data import load_data, prepare
    from compress.quantization import quantize

    art_rows = []
    models = [("tabular classifier", tabular(work, ctx.seed)[:2], True)]
    if not ctx.quick:
        models.append(("tabular regressor (8 columns, scales 0.1-1000)",
                       _regressor(work, ctx.seed), False))
    for label, (model, npz), lookups in models:
        ds = prepare(model, load_data(f"npz:{npz}", ctx.seed))
        for fmt in ("tflite",) if ctx.quick else ("tflite", "onnx"):
            cells = []
            for keep in (True,) if ctx.quick else (False, True):  # quick: no ablation
                from compress.quantization import float_front

                original = float_front.MIN_LEVELS
                if not keep:  # the ablation: nothing kept float, as before this round
                    float_front.MIN_LEVELS = 0
                try:
                    _, info = quantize(model, ds, format=fmt, latency=False,
                                       without_lookups=lookups)
                finally:
                    float_front.MIN_LEVELS = original
                score = (f"{info['accuracy']:.2%}" if "accuracy" in info
                         else f"MSE {info['mse']:.3g}")
                cells.append((info, score))
            if ctx.quick:  # the ablation is left out: its cells say so
                cells.insert(0, ({"sqnr_db": float("nan"), "top1_agreement": float("nan")},
                                 "not run (quick)"))
            (plain, plain_score), (front, front_score) = cells
            float_score = (f"{front['float_accuracy']:.2%}" if "float_accuracy" in front
                           else f"MSE {front['float_mse']:.3g}")
            art_rows.append([label, fmt, float_score, plain_score,
                             f"{plain['sqnr_db']:.1f} dB", front_score,
                             f"{front['sqnr_db']:.1f} dB"])
            if fmt == "tflite" and lookups:
                sec.target("tabular classifier int8 TFLite (--without-lookups), input "
                           "normalization kept float: top-1 agreement with the float model",
                           f"{front['top1_agreement']:.2%} (all int8: "
                           f"{plain['top1_agreement']:.2%})", ">= 99%",
                           front["top1_agreement"] >= 0.99)
            if fmt == "tflite" and not lookups:
                sec.target("tabular regressor int8 TFLite, input normalization kept float: "
                           "SQNR against the float model", f"{front['sqnr_db']:.1f} dB (all "
                           f"int8: {plain['sqnr_db']:.1f} dB)", ">= 30 dB",
                           front["sqnr_db"] >= 30)
    sec.add("Full-integer int8 (per-channel weights, float interface) from the CLI's "
            "defaults; the classifier with `--without-lookups` (its StringLookup runs in the "
            "input pipeline, the artifact takes its one-hot rows). `all int8`: the input "
            "tensor of raw columns quantized with one scale, as every int8 artifact was "
            "before this round; `normalization float`: the Normalization's ops kept float, "
            "the graph quantized after it (chosen when some raw column would get fewer than "
            "64 of the input scale's 256 levels on the calibration data). SQNR: against "
            "the float model's outputs on the check inputs.")
    sec.add(table(["model", "format", "float", "all int8", "SQNR", "normalization float",
                   "SQNR"], art_rows))
    return sec


CASES = {"preprocessing": case_preprocessing}
