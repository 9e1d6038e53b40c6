"""Transfer-learning models: a trained base used as a layer, through QAT, CLE and bias
correction, and hashing.

The form most Keras models users bring take (the Keras transfer-learning guide): a base
network called as one layer, ``base(x, training=False)``, under a new head. Here the base
is the second benchmark model (:mod:`bench.mobilenetv2`, MobileNetV2 alpha 0.35 trained
on animals) up to its last activation, called by an outer model that pools and applies
the trained classifier: the same function as the flat model, with every convolution one
level down. Each pass runs on the nested model and on the flat one; the passes that
rebuild a model's graph (QAT, hashing) reached only the head of the nested one before
this round (QAT then trained the base in float, hashing kept 97% of the parameters).

QAT is measured where it has something to recover: per-tensor int8 of the spread-range
copy of :mod:`bench.cases.mobilenetv2_quant` (the same function, channel ranges
spanning 1.5 decades, as ImageNet-trained MobileNets have), against post-training int8.
All accuracies are LiteRT's on the test split.
"""

from __future__ import annotations

from bench.harness import Section, table


def nested(flat, name: str = "features"):
    """``flat`` (a keras.applications classifier ending in pooling and a Dense) as a
    transfer model: its body up to the layer before the pooling as one nested model,
    called with ``training=False``, then the pooling and a copy of the classifier."""
    import keras

    pool = next(la for la in flat.layers if isinstance(la, keras.layers.GlobalAveragePooling2D))
    head = flat.layers[-1]
    body = keras.Model(flat.inputs, pool.input, name=name)
    inp = keras.Input(flat.inputs[0].shape[1:])
    h = keras.layers.GlobalAveragePooling2D(name="pool")(body(inp, training=False))
    out = keras.layers.Dense(head.units, activation=head.get_config()["activation"],
                             name="classifier")(h)
    model = keras.Model(inp, out, name="transfer")
    model.get_layer("classifier").set_weights(head.get_weights())
    from compress.training import copy_model

    return copy_model(model)  # its own layers: the flat model stays as it was


def case_transfer(ctx) -> Section:
    import numpy as np

    from bench.cases.mobilenetv2_quant import _quantize, _spread_ranges
    from bench.mobilenetv2 import trained_mobilenetv2
    from compress import training

    sec = Section("Transfer-learning models: a base used as a layer (QAT, hashing)",
                  issue="#19")
    model, ds = trained_mobilenetv2(quick=ctx.quick)
    if ctx.quick:
        ds = ds.take(300, 100)
    _, spread = _spread_ranges(model, ctx.seed)
    pair = {"flat": spread, "nested": nested(spread)}
    if ctx.quick:  # one conversion of MobileNetV2 is ~30 s here: quick runs check the
        # code that reaches the nested base (QAT's fine-tune), not the converter
        from compress.data import as_dataset
        from compress.quantization.qat import qat_finetune

        nested_model = pair["nested"]
        _, info = qat_finetune(nested_model, as_dataset(ds, nested_model), epochs=1,
                               per_channel=False)
        sec.add(f"Quick run (untrained model): nested QAT fake-quantized "
                f"{info['fake_quantized_layers']} layers.")
        return sec
    x = ds.representative(64)
    diff = float(np.max(np.abs(training.predict(pair["nested"], x)
                               - training.predict(spread, x))))
    epochs, seeds = 2, (0, 1)
    rows, layers, qat_acc, fidelity = [], {}, {}, {}
    for form, m in pair.items():
        ptq = _quantize(m, ds, per_channel=False)
        aided = _quantize(m, ds, per_channel=False, equalize=True, bias_correction=True)
        eq = aided["equalization"]
        runs = [_quantize(m, ds, per_channel=False, qat=True, epochs=epochs,
                          learning_rate=1e-4, seed=seed) for seed in seeds]
        q = runs[0]["qat"]
        layers[form] = (q["fake_quantized_layers"], q["folded_batchnorm"])
        qat_acc[form] = [r["accuracy"] for r in runs]
        fidelity[form] = [r["qat"]["test_accuracy"] - r["accuracy"] for r in runs]
        rows.append([form, f"{ptq['float_accuracy']:.2%}", f"{ptq['accuracy']:.2%}",
                     (f"{aided['accuracy']:.2%} ({eq['pairs']} pairs, "
                      f"{eq['bias_corrected']} biases)"),
                     " / ".join(f"{r['accuracy']:.2%}" for r in runs),
                     " / ".join(f"{r['qat']['test_accuracy']:.2%}" for r in runs),
                     f"{layers[form][0]} / {layers[form][1]}"])
    sec.add(f"MobileNetV2 0.35 trained on animals with spread channel ranges (see the "
            "per-tensor section), as one flat model and as a transfer model: its body a "
            "nested model called with `training=False`, then pooling and the trained "
            f"classifier (largest output difference from the flat model {diff:.1e}). "
            f"Per-tensor full-integer int8 TFLite; QAT {epochs} epochs, Adam 1e-4, "
            f"per-tensor weights, seeds {seeds[0]} and {seeds[1]} (the order of the "
            "batches); accuracy in LiteRT on the "
            f"{len(ds.y_test)} test images, and the fake-quantized Keras model's. Before this "
            "round QAT fake-quantized one layer of the nested model (its classifier) and "
            "trained the body in float, and bias correction corrected its classifier only; "
            "and QAT with per-tensor weights wrote per-channel weights (the quantizer that "
            "applies the learned ranges was left at its default), so the int8 file was not the "
            "model trained: 81.30% at seed 1 against its fake-quantized model's 87.55%. "
            "Cross-layer equalization works inside each model graph: the pair of the body's "
            "last convolution and the classifier crosses the nesting and is not equalized.")
    sec.add(table(["model", "float", "post-training int8", "with CLE + bias correction",
                   "QAT int8 (seeds)", "QAT fake-quantized Keras (seeds)",
                   "fake-quantized layers / BatchNorms folded"], rows))
    sec.target("Transfer model (nested base): QAT fake-quantizes and folds as many layers "
               "as in the flat model", f"{layers['nested'][0]} / {layers['nested'][1]} vs "
               f"{layers['flat'][0]} / {layers['flat'][1]}", "equal",
               layers["nested"] == layers["flat"])
    gaps = [abs(g) for g in fidelity["nested"] + fidelity["flat"]]
    sec.target("Per-tensor QAT: the int8 file within 1 pt of its fake-quantized Keras model "
               "(each seed, both forms)", f"largest gap {max(gaps) * 100:.2f} pts", "1.00 pts",
               max(gaps) <= 0.01)
    sec.target("Transfer model (nested base): QAT int8 accuracy equals the flat model's at "
               "each seed", " / ".join(f"{a:.2%} vs {b:.2%}" for a, b in
                                       zip(qat_acc["nested"], qat_acc["flat"])),
               "equal", qat_acc["nested"] == qat_acc["flat"])

    from compress.sharing import hash_model

    hrows, hashed = [], {}
    for form, m in (("flat", model), ("nested", nested(model))):
        _, info = hash_model(m, ds, factor=0.25, epochs=0)
        hashed[form] = (len(info["layers"]), info["stored_params"])
        hrows.append([form, str(len(info["layers"])), f"{info['dense_params']:,}",
                      f"{info['stored_params']:,}",
                      f"{info['stored_params'] / info['dense_params']:.0%}"])
    sec.add("Hashing (1/4 of the buckets, conversion only: no fine-tuning) of the trained "
            "model, flat and nested (before this round the nested model had its classifier "
            "hashed, 97% of its parameters kept).")
    sec.add(table(["model", "layers hashed", "parameters", "stored", "kept"], hrows))
    sec.target("Transfer model (nested base): hashing replaces as many layers and stores as "
               "many parameters as in the flat model",
               f"{hashed['nested'][0]} layers, {hashed['nested'][1]:,} vs "
               f"{hashed['flat'][0]}, {hashed['flat'][1]:,}", "equal",
               hashed["nested"] == hashed["flat"])
    return sec


CASES = {"transfer": case_transfer}
