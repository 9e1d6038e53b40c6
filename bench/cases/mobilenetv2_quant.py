"""Per-tensor int8 of MobileNetV2 with cross-layer equalization and bias correction (issue 20).

The second benchmark model (:mod:`bench.mobilenetv2`: keras.applications MobileNetV2,
alpha 0.35, 32x32x3, trained on animals) converted to full-integer int8 TFLite with
per-channel weight scales (the default) and with per-tensor ones (the fast path of many
NPUs/DSPs), the latter without and with the Data-Free Quantization aids (Nagel et al.
2019): cross-layer equalization (CLE) and empirical bias correction, applied by the
quantize pass to a copy of the model. Per-layer SQNR (``--debug-layers``) names the
layers that lose most. All accuracies are measured in LiteRT on the test split.
"""

from __future__ import annotations

import numpy as np

from bench.harness import Section, table

DECADES = 1.5  # spread of the stress variant's channel scales (as the QAT case uses)


def _pts(x: float) -> str:
    return f"{100 * x:+.2f} pts"


def _spread_ranges(model, seed: int = 0):
    """``(relu, spread)``: a copy with every ReLU6 made ReLU (what CLE does too), and a
    copy of that one whose per-channel ranges span ``DECADES`` decades, same function.

    For each BatchNorm -> ReLU -> DepthwiseConv2D / 1x1 Conv2D chain
    channel ``c`` is multiplied by ``s_c`` (gamma and beta) and the next kernel's input
    channel divided by it: ReLU is positively homogeneous, so the outputs do not change,
    but a few channels now dominate each per-tensor range, as in ImageNet-trained
    MobileNets (Nagel et al. 2019, Fig. 2: depthwise ranges spanning orders of magnitude).
    """
    import keras

    from compress.training import copy_model

    relu = copy_model(model)
    for layer in relu.layers:
        if isinstance(layer, keras.layers.ReLU) and layer.max_value is not None:
            layer.max_value = None
    new = copy_model(relu)
    rng = np.random.default_rng(seed)
    by_name = {layer.name: layer for layer in new.layers}
    config = new.get_config()["layers"]
    reads = {}
    for entry in config:
        for node in entry.get("inbound_nodes") or []:
            for arg in node["args"]:
                if isinstance(arg, dict) and arg.get("class_name") == "__keras_tensor__":
                    reads.setdefault(arg["config"]["keras_history"][0], []).append(
                        entry["name"])
    for layer in new.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        nxt = reads.get(layer.name, [])
        if len(nxt) != 1 or not isinstance(by_name[nxt[0]], keras.layers.ReLU):
            continue
        after = reads.get(nxt[0], [])
        if len(after) != 1:
            continue
        conv = by_name[after[0]]
        if isinstance(conv, keras.layers.ZeroPadding2D):
            following = reads.get(conv.name, [])
            conv = by_name[following[0]] if len(following) == 1 else None
        if not isinstance(conv, (keras.layers.DepthwiseConv2D, keras.layers.Conv2D)):
            continue
        n = layer.gamma.shape[0]
        s = rng.permutation(np.logspace(-DECADES / 2, DECADES / 2, n)).astype("float32")
        layer.gamma.assign(layer.gamma.numpy() * s)
        layer.beta.assign(layer.beta.numpy() * s)
        k = conv.kernel.numpy()
        conv.kernel.assign(k / s[None, None, :, None])
    return relu, new


def _quantize(model, ds, **options) -> dict:
    from compress.quantization import quantize

    _, info = quantize(model, ds, mode="int8", latency=False, **options)
    return info


def case_mobilenetv2_per_tensor(ctx) -> Section:
    from bench.mobilenetv2 import trained_mobilenetv2
    from compress import training

    sec = Section("Quantization: per-tensor int8 of MobileNetV2 with cross-layer "
                  "equalization and bias correction", issue="#20")
    model, ds = trained_mobilenetv2(quick=ctx.quick)
    if ctx.quick:
        ds = ds.take(300, 100)
    keras_acc = training.accuracy(model, ds.x_test, ds.y_test)
    variants = [("per-channel int8 (default)", {}),
                ("per-tensor int8", {"per_channel": False}),
                ("per-tensor + bias correction", {"per_channel": False,
                                                  "bias_correction": True}),
                ("per-tensor + CLE", {"per_channel": False, "equalize": True}),
                ("per-tensor + CLE + bias correction",
                 {"per_channel": False, "equalize": True, "bias_correction": True})]
    if ctx.quick:  # one conversion of MobileNetV2 is ~30 s here: quick runs check the code
        variants = [variants[-1]]
    rows, acc = [], {}
    float_acc = None
    for label, options in variants:
        info = _quantize(model, ds, **options)
        float_acc = info["float_accuracy"]
        acc[label] = info["accuracy"]
        eq = info.get("equalization") or {}
        ratio = eq.get("channel_range_ratio") or {}
        rows.append([label, f"{info['accuracy']:.2%}", _pts(info["accuracy"] - float_acc),
                     f"{info['top1_agreement']:.1%}" if "top1_agreement" in info else "",
                     f"{eq['float_scores']['accuracy']:.2%}" if "float_scores" in eq else "",
                     f"{eq['float_max_abs_diff']:.1e}" if "float_max_abs_diff" in eq else "",
                     f"{ratio['before']:.1f} -> {ratio['after']:.1f}" if ratio else ""])
    sec.add(f"MobileNetV2 (alpha 0.35, 32x32x3, {model.count_params():,} parameters) "
            f"trained on animals (`bench/mobilenetv2.py`): Keras test accuracy "
            f"{keras_acc:.2%}, float TFLite {float_acc:.2%}. Full-integer int8 TFLite, "
            "calibrated on 256 training samples, accuracy in LiteRT on the "
            f"{len(ds.y_test)} test images. CLE and bias correction run on a copy (BatchNorm "
            "folded into the convolutions, every ReLU6 between equalized layers made a ReLU, "
            "as AIMET does); 'copy float' is that copy's own float accuracy in Keras, 'max "
            "diff' its largest output difference from the model on the calibration data "
            "(before bias correction, which changes the float model on purpose), 'range "
            "ratio' the median over equalized kernels of the largest over the smallest "
            "output-channel range.")
    sec.add(table(["int8 TFLite", "accuracy", "vs float", "top-1 agreement", "copy float",
                   "max diff", "range ratio"], rows))
    aided = acc["per-tensor + CLE + bias correction"]
    plain = acc.get("per-tensor int8", aided)
    sec.target("MobileNetV2 per-tensor int8 with CLE + bias correction: drop <= 1 pt",
               _pts(aided - float_acc), "-1.00 pts", float_acc - aided <= 0.01)
    sec.target("MobileNetV2 per-tensor int8: drop with CLE + bias correction < without",
               f"{_pts(aided - float_acc)} vs {_pts(plain - float_acc)}", "smaller",
               float_acc - aided < float_acc - plain)

    # The stress variant: the same function with spread channel ranges.
    if not ctx.quick:
        relu, spread = _spread_ranges(model, ctx.seed)
        x = ds.representative(256)
        diff = float(np.max(np.abs(training.predict(spread, x) - training.predict(relu, x))))
        srows, sacc = [], {}
        for label, options in (variants[1], variants[3], variants[4]):
            info = _quantize(spread, ds, **options)
            sacc[label] = info["accuracy"]
            srows.append([label, f"{info['accuracy']:.2%}",
                          _pts(info["accuracy"] - info["float_accuracy"])])
        spread_float = info["float_accuracy"]
        sec.add("**Stress variant.** The trained model's channel ranges are even (range ratio "
                "above), so per-tensor int8 has little to lose. ImageNet-trained MobileNets "
                "are not (Nagel et al. 2019, Fig. 2). The same network with ReLU6 made ReLU "
                f"and each BatchNorm -> ReLU -> conv channel scaled by factors spanning "
                f"{DECADES} decades (gamma, beta x s; next kernel / s): the float function is "
                f"unchanged (max diff {diff:.1e} from the ReLU copy, float TFLite accuracy "
                f"{spread_float:.2%}), its per-tensor ranges are not.")
        sec.add(table(["int8 TFLite (spread ranges)", "accuracy", "vs float"], srows))
        s_plain = sacc["per-tensor int8"]
        s_aided = sacc["per-tensor + CLE + bias correction"]
        sec.target("Spread-range MobileNetV2 per-tensor int8, CLE + bias correction: drop "
                   "<= 1 pt and < without", f"{_pts(s_aided - spread_float)} vs "
                   f"{_pts(s_plain - spread_float)}", "-1.00 pts, smaller",
                   spread_float - s_aided <= 0.01 and s_aided > s_plain)

    from compress.quantization.debug import layer_sqnr

    x_cal = ds.representative(ctx.size(32, 256))
    for label, per_channel in (("per-tensor", False), ("per-channel", True))[
            :ctx.size(0, 2)]:  # quick: the debugger's code is tests/test_equalize.py's
        report = layer_sqnr(model, x_cal, per_channel=per_channel,
                            samples=ctx.size(8, 64))
        worst = report["layers"][:5]
        sec.add(f"Per-layer SQNR (`--debug-layers`), {label} int8, {report['samples']} "
                "calibration samples, each int8 op against its float copy on the same "
                "dequantized inputs; the five lowest of "
                f"{len(report['layers'])} ops: "
                + ", ".join(f"`{r['layer']}` ({r['op']}) {r['sqnr_db']:.1f} dB"
                            for r in worst) + ".")
    return sec


CASES = {"quantization-mobilenetv2-per-tensor": case_mobilenetv2_per_tensor}
