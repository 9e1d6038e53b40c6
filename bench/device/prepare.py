"""Build the artifacts the device check measures (runs here, with TensorFlow).

``python -m bench.device.prepare [--out .device] [--quick]`` trains the two benchmark
models briefly (LeNet-300-100 on mnist5k, the small CNN on animals) and builds a
keras.applications MobileNetV2 (alpha 0.35, 96x96x3, ``weights=None``, random weights),
then writes for each one, through the toolkit's own passes:

- ``NAME.keras``: the Keras model (training throughput on the device, Keras on JAX);
- ``NAME.fp32.onnx`` / ``NAME.fp16.onnx`` / ``NAME.int8.onnx``: ONNX float32, float16
  weights and compute with float32 inputs and outputs (``compress quantize --mode
  float16 -o NAME.onnx``), and static int8 QDQ (``compress quantize --format onnx``);
- ``NAME.fp32.tflite`` / ``NAME.int8.tflite``: float and full-integer int8 TFLite;
- ``NAME.x.npy``: 64 inputs from the test split (random for MobileNetV2), so the device
  measures on the same inputs;
- ``manifest.json``: what was written, with the accuracies measured here.

Nothing here needs a GPU; the device machine has no TensorFlow, so the artifacts travel.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def _write(path: Path, content: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(content)
    os.replace(tmp, path)


def random_mobilenetv2():
    """The device check's keras.applications MobileNetV2 (alpha 0.35, 96x96x3, random
    weights, 10 classes) and a seeded random dataset for it (320 images)."""
    import keras
    import numpy as np

    from compress.data import Dataset

    model = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35,
                                           weights=None, classes=10)
    rng = np.random.default_rng(0)
    x = rng.random((320, 96, 96, 3), dtype=np.float32)
    y = rng.integers(0, 10, 320)
    return model, Dataset(name="random", x_train=x[:256], y_train=y[:256], x_val=x[:64],
                          y_val=y[:64], x_test=x[256:], y_test=y[256:], num_classes=10)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.device.prepare")
    parser.add_argument("--out", default=".device")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np

    from compress import training
    from compress.data import load_data, prepare
    from compress.export import export_artifact
    from compress.models import build
    from compress.quantization import quantize

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {}
    cases = [("lenet300", "mnist5k"), ("small-cnn", "animals"), ("mobilenetv2", None)]
    for name, data in cases:
        training.set_seed(0)
        if data is None:
            model, ds = random_mobilenetv2()
        else:
            model = build(name)
            ds = prepare(model, load_data(data, 0))
            if args.quick:
                ds = ds.take(600, 300)
            training.compile_classifier(model, learning_rate=2e-3)
            training.fit(model, ds, epochs=1 if args.quick else 3, verbose=0)
        entry = {"data": data or "random", "params": int(model.count_params())}
        model.save(out / f"{name}.keras")
        fp32, check = export_artifact(model, ds, format="onnx")
        _write(out / f"{name}.fp32.onnx", fp32)
        fp16, _ = quantize(model, ds, mode="float16", format="onnx", latency=False)
        _write(out / f"{name}.fp16.onnx", fp16)
        entry["onnx_max_abs_diff"] = check.get("max_abs_diff")
        for fmt, suffix in (("onnx", "int8.onnx"), ("tflite", "int8.tflite")):
            content, info = quantize(model, ds, mode="int8", format=fmt, latency=False)
            _write(out / f"{name}.{suffix}", content)
            entry[f"{suffix}_accuracy"] = info.get("accuracy")
            entry[f"{suffix}_float_accuracy"] = info.get("float_accuracy")
            entry[f"{suffix}_top1_agreement"] = info.get("top1_agreement")
        tfl, _ = export_artifact(model, ds, format="tflite")
        _write(out / f"{name}.fp32.tflite", tfl)
        np.save(out / f"{name}.x.npy", np.asarray(ds.x_test[:64], dtype=np.float32),
                allow_pickle=False)
        entry["bytes"] = {f: (out / f"{name}.{f}").stat().st_size
                          for f in ("fp32.onnx", "fp16.onnx", "int8.onnx", "fp32.tflite",
                                    "int8.tflite")}
        manifest[name] = entry
        print(name, json.dumps(entry), flush=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
