"""8-bit quantization: full-integer TFLite, ONNX int8, QAT, and pruned + int8 (issue #5)."""

from __future__ import annotations

import numpy as np

from bench.harness import Section, table


def _pts(x: float) -> str:
    return f"{100 * x:+.2f} pts"


def case_quantization(ctx) -> Section:
    """PTQ on LeNet-300-100/mnist5k and the small CNN/animals, QAT, pruning + int8."""
    from bench.baselines import trained
    from compress.quantization import quantize

    sec = Section("Quantization: int8 TFLite, ONNX int8, QAT, pruned + int8", issue="#5")
    work = ctx.work_dir / "quantization"
    work.mkdir(parents=True, exist_ok=True)
    runs = {"lenet300/mnist5k": trained("lenet300", "mnist5k", ctx),
            "small-cnn/animals": trained("small-cnn", "animals", ctx)}
    rows, infos = [], {}
    for name, (model, ds) in runs.items():
        stem = name.split("/")[0]
        variants = [("tflite", "int8", {}), ("tflite", "dynamic", {}),
                    ("tflite", "float16", {}), ("onnx", "int8", {}),
                    ("onnx", "int8", {"calibration": "entropy"}), ("onnx", "dynamic", {})]
        if stem == "small-cnn":
            variants.insert(1, ("tflite", "int8", {"interface": "int8"}))
        for fmt, mode, extra in variants:
            label = f"{fmt} {mode}" + "".join(f" {v}" for v in extra.values())
            path = work / f"{stem}-{label.replace(' ', '-')}.{fmt}"
            info = quantize(model, path, ds, mode=mode, force=True, **extra)
            infos[(name, label)] = info
            lat = info["latency_ratio"]
            rows.append([name, label, f"{info['float_accuracy']:.2%}", f"{info['accuracy']:.2%}",
                         f"{info['bytes'] / 1024:.1f} KB", f"{info['size_ratio']:.3f}x",
                         (f"{info['zipped_bytes'] / 1024:.1f} KB "
                         f"({info['zipped_bytes'] / info['float_zipped_bytes']:.3f}x)"),
                         f"{info['float_latency_ms']['1']:.3f} / {info['latency_ms']['1']:.3f}",
                         f"{lat['1']:.2f}x / {lat['2']:.2f}x"])
    sec.add("Every artifact runs in its runtime (LiteRT or onnxruntime) on the whole test split, "
            "next to the float export of the same model in the same runtime. Latency: batch 1, "
            "median of 100 calls, best of two rounds; ratios are quantized / float, "
            "1 thread / 2 threads.")
    sec.add(table(["model/data", "artifact", "float acc", "quantized acc", "file", "vs float",
                   "zipped", "latency 1t ms (float / q)", "latency ratio 1t / 2t"], rows))

    for name in runs:
        info = infos[(name, "tflite int8")]
        drop = info["float_accuracy"] - info["accuracy"]
        sec.target(f"{name} full-int8 TFLite accuracy >= float - 0.3 pts",
                   f"{info['accuracy']:.2%} vs {info['float_accuracy']:.2%} ({_pts(-drop)})",
                   "-0.30 pts", drop <= 0.003 + 1e-9)
        sec.target(f"{name} full-int8 TFLite file <= 0.27x float TFLite",
                   f"{info['size_ratio']:.3f}x", "0.27x", info["size_ratio"] <= 0.27)
        onnx = infos[(name, "onnx int8")]
        drop = onnx["float_accuracy"] - onnx["accuracy"]
        sec.target(f"{name} ONNX static int8 (QDQ, MinMax) accuracy >= float - 0.5 pts",
                   f"{onnx['accuracy']:.2%} vs {onnx['float_accuracy']:.2%} ({_pts(-drop)})",
                   "-0.50 pts", drop <= 0.005 + 1e-9)
    cnn = infos[("small-cnn/animals", "tflite int8")]
    for threads in ("1", "2"):
        ratio = cnn["latency_ratio"][threads]
        sec.target(f"small-cnn int8 LiteRT batch-1 latency <= 0.4x float, {threads} thread(s)",
                   f"{ratio:.2f}x ({cnn['latency_ms'][threads]:.3f} vs "
                   f"{cnn['float_latency_ms'][threads]:.3f} ms)", "0.4x", ratio <= 0.4)
    onnx = infos[("small-cnn/animals", "onnx int8")]
    ratio = onnx["latency_ratio"]["1"]
    sec.target("small-cnn ONNX static int8 latency <= 0.7x float ONNX (1 thread)",
               f"{ratio:.2f}x ({onnx['latency_ms']['1']:.3f} vs "
               f"{onnx['float_latency_ms']['1']:.3f} ms)", "0.7x", ratio <= 0.7)

    _qat(ctx, sec, work)
    _pruned(ctx, sec, work, *runs["lenet300/mnist5k"])
    return sec


def _qat(ctx, sec: Section, work) -> None:
    """A narrow CNN quantized per-tensor, where PTQ loses: does QAT win it back?"""
    from compress import training
    from compress.data import load_data, prepare
    from compress.models import build
    from compress.quantization import quantize

    training.set_seed(ctx.seed)
    model = build("small-cnn", width=0.25)
    ds = prepare(model, load_data("animals", ctx.seed))
    if ctx.quick:
        ds = ds.take(600, 300)
    training.compile_classifier(model, learning_rate=3e-3)
    training.fit(model, ds, epochs=ctx.size(1, 8), verbose=0)
    common = {"per_channel": False, "force": True, "latency": False}
    ptq = quantize(model, work / "narrow-ptq.tflite", ds, **common)
    training.set_seed(ctx.seed)
    qat = quantize(model, work / "narrow-qat.tflite", ds, qat=True, epochs=ctx.size(1, 3),
                   learning_rate=3e-4, **common)
    float_acc = ptq["float_accuracy"]
    loss = float_acc - ptq["accuracy"]
    recovered = (qat["accuracy"] - ptq["accuracy"]) / loss if loss > 0 else float("nan")
    sec.add("**QAT case.** A narrow small-CNN (width 0.25: 8/16/16 filters) on animals, "
            "quantized with per-tensor weight scales (the scheme of integer accelerators "
            "without per-channel support); folding BatchNorm gives its channels very different "
            "ranges, which one scale per tensor serves badly. QAT: BatchNorm folded, "
            f"{qat['qat']['epochs']} epochs with fake-quantized weights and activations, then "
            "the same converter.")
    sec.add(table(["", "accuracy (LiteRT, test)"], [
        ["float TFLite", f"{float_acc:.2%}"], ["PTQ int8 per-tensor", f"{ptq['accuracy']:.2%}"],
        ["QAT int8 per-tensor", f"{qat['accuracy']:.2%}"]]))
    sec.target("QAT case: PTQ loses >= 1 pt", _pts(-loss), "-1.00 pts", loss >= 0.01)
    sec.target("QAT recovers >= half of the PTQ loss",
               f"{recovered:.0%} ({qat['accuracy']:.2%} vs PTQ {ptq['accuracy']:.2%})",
               "50%", loss >= 0.01 and recovered >= 0.5)


def _pruned(ctx, sec: Section, work, model, ds) -> None:
    """Pruned 90% (gradual magnitude) + full-int8 LeNet-300-100 against the dense .h5."""
    from compress import training
    from compress.quantization import quantize
    from compress.report import zipped_size

    dense_h5 = work / "lenet300-dense.h5"
    model.save(dense_h5)
    dense_acc = training.accuracy(model, ds.x_test, ds.y_test)
    try:
        from compress.pruning import prune

        pruned, _ = prune(model, ds, method="magnitude", sparsity=0.9, schedule="gradual",
                              epochs=ctx.size(1, 8), frequency=ctx.size(2, 50))
        how = f"compress.pruning.prune (magnitude, gradual, {ctx.size(1, 8)} epochs)"
    except ImportError:
        pruned, how = _numpy_prune(model, ds, ctx), "numpy magnitude + masked fine-tune"
    info = quantize(pruned, work / "lenet300-pruned-int8.tflite", ds, force=True, latency=False)
    h5 = dense_h5.stat().st_size
    ratio = h5 / info["zipped_bytes"]
    sec.add(f"**Pruned 90% + int8 LeNet-300-100** ({how}): dense float32 .h5 "
            f"{h5 / 1024:.0f} KB (zipped {zipped_size(dense_h5) / 1024:.0f} KB); pruned int8 "
            f".tflite {info['bytes'] / 1024:.0f} KB, zipped {info['zipped_bytes'] / 1024:.1f} KB; "
            f"zero weights {info['weight_zeros']['model']:.1%} in the pruned model, "
            f"{info['weight_zeros']['artifact']:.1%} in the int8 file (zeros kept).")
    sec.target("pruned 90% + int8 LeNet zipped .tflite >= 30x smaller than dense float32 .h5",
               f"{ratio:.1f}x", "30x", ratio >= 30)
    drop = dense_acc - info["accuracy"]
    sec.target("pruned 90% + int8 LeNet accuracy >= dense - 1 pt",
               f"{info['accuracy']:.2%} vs {dense_acc:.2%} ({_pts(-drop)})", "-1.00 pts",
               drop <= 0.01 + 1e-9)
    sec.target("quantizing the pruned model keeps its zeros",
               f"{info['weight_zeros']['artifact']:.1%} zeros in the file vs "
               f"{info['weight_zeros']['model']:.1%} in the model", ">= model",
               info["weight_zeros"]["artifact"] >= info["weight_zeros"]["model"] - 1e-9)


def _numpy_prune(model, ds, ctx):
    """Fallback when the pruning pass is absent: magnitude masks and a masked fine-tune."""
    import keras

    from compress import training

    pruned = training.copy_model(model)
    masks = {}
    for layer in pruned.layers:
        if isinstance(layer, keras.layers.Dense):
            kernel = layer.kernel.numpy()
            masks[layer.name] = np.abs(kernel) > np.quantile(np.abs(kernel), 0.9)
            layer.kernel.assign(kernel * masks[layer.name])

    class Mask(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            for name, mask in masks.items():
                k = pruned.get_layer(name).kernel
                k.assign(k * mask)

    training.compile_classifier(pruned, learning_rate=3e-4)
    training.fit(pruned, ds, epochs=ctx.size(1, 5), callbacks=[Mask()], verbose=0)
    return pruned


CASES = {"quantization": case_quantization}
