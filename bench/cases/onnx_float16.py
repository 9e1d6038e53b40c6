"""float16 ONNX (issue #21): file size and output error against the float32 export,
measured here in onnxruntime's CPU provider (the device check runs the same artifacts on
a lent GPU machine; neither number needs one)."""

from __future__ import annotations

import numpy as np

from bench.harness import Section, table


def _models(ctx):
    """LeNet-300-100 and the small CNN as trained by the baselines, and the device check's
    keras.applications MobileNetV2 (alpha 0.35, 96x96x3, random weights)."""
    from bench.baselines import trained
    from bench.device.prepare import random_mobilenetv2
    from compress import training

    yield "lenet300/mnist5k", *trained("lenet300", "mnist5k", ctx), True
    yield "small-cnn/animals", *trained("small-cnn", "animals", ctx), True
    training.set_seed(0)
    yield "mobilenetv2 0.35 96x96 (random weights)", *random_mobilenetv2(), False


def case_onnx_float16(ctx) -> Section:
    """float32 and float16 ONNX of three models: bytes, ratio, max relative output error."""
    from compress.export import export_artifact
    from compress.quantization import quantize
    from compress.runtime import run_onnx

    sec = Section("float16 ONNX: size and outputs against float32 (onnxruntime CPU)",
                  issue="#21")
    rows, ratios, errors = [], [], []
    for name, model, ds, trained in _models(ctx):
        fp32, _ = export_artifact(model, ds, format="onnx")
        fp16, _ = quantize(model, ds, mode="float16", format="onnx", latency=False)
        x = np.asarray(ds.x_test[:256], dtype=np.float32)
        ref, half = run_onnx(fp32, x), run_onnx(fp16, x)
        err = float(np.abs(half - ref).max() / max(np.abs(ref).max(), 1e-12))
        agree = float(np.mean(half.argmax(-1) == ref.argmax(-1)))
        ratio = len(fp16) / len(fp32)
        ratios.append(ratio)
        if trained:
            errors.append(err)
        rows.append([name, f"{len(fp32):,}", f"{len(fp16):,}", f"{ratio:.3f}x",
                     f"{err:.1e}", f"{agree:.2%}"])
    sec.add("`compress export --format onnx` (float32) and `compress quantize --mode float16 "
            "--format onnx` (onnxruntime's float16 converter, float32 inputs and outputs) of "
            "the same model, both run in onnxruntime's CPU provider on up to 256 test inputs. "
            "Relative error: the largest absolute output difference over the largest float32 "
            "output. The random-weight MobileNetV2 counts for size only.")
    sec.add(table(["model", "float32 bytes", "float16 bytes", "ratio", "max rel err",
                   "top-1 agreement"], rows))
    sec.target("fp16 ONNX file <= 0.52x float32 (every model)", f"{max(ratios):.3f}x",
               "0.52x", max(ratios) <= 0.52)
    sec.target("fp16 ONNX outputs within 1e-2 relative of float32 (trained models, "
               "onnxruntime CPU)", f"{max(errors):.1e}", "1e-2", max(errors) <= 1e-2)
    return sec


CASES = {"onnx-float16": case_onnx_float16}
