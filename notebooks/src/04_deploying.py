# %% [markdown]
# # Deploying: the same model as TFLite int8 and ONNX int8
#
# A small CNN with BatchNorm trained on Animal-MNIST silhouettes, quantized two ways:
# full-integer TFLite for phones and microcontrollers (LiteRT), and static QDQ int8 ONNX
# for servers and GPUs (onnxruntime, TensorRT). Every number is measured in the runtime
# that will run the file.

# %% parameters
QUICK = False

# %%
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from compress.quiet import import_tensorflow

import_tensorflow()  # without the CUDA-probe lines TensorFlow prints at import
import matplotlib.pyplot as plt

import compress
from compress import export, io, runtime, training
from compress.data import prepare
from compress.models import build
from compress.quantization import format_for, quantize
from compress.report import zipped_size

training.set_seed(0)
work = Path(tempfile.mkdtemp(prefix="compress-deploy-"))
model = build("small-cnn")
data = prepare(model, compress.load_data("animals", seed=0))
if QUICK:
    data = data.take(800, 400)
from compress.callbacks import EarlyStopping

training.compile_classifier(model, learning_rate=2e-3)
training.fit(model, data, epochs=1 if QUICK else 15, verbose=0,
             callbacks=[EarlyStopping(patience=4)])  # best validation weights restored

# %%
artifacts = {
    "TFLite float32": (work / "float.tflite", None),
    "TFLite int8": (work / "int8.tflite", "int8"),
    "ONNX float32": (work / "float.onnx", None),
    "ONNX int8 (QDQ)": (work / "int8.onnx", "int8"),
}
for name, (path, mode) in artifacts.items():
    if mode is None:
        export.export(model, path, x=data.x_test[:256])
    else:
        content, _ = quantize(model, data, mode=mode, format=format_for(path, {"mode": mode}))
        io.write_bytes(path, content)

rows = []
for name, (path, _) in artifacts.items():
    acc = runtime.artifact_accuracy(path, data.x_test, data.y_test)
    lat1 = runtime.runtime_latency_ms(path, data.sample_shape, batch=1, threads=1)
    lat2 = runtime.runtime_latency_ms(path, data.sample_shape, batch=1, threads=2)
    rows.append((name, acc, zipped_size(path), lat1, lat2))
    print(f"{name:18s} acc {acc:.2%}  zipped {zipped_size(path) / 1024:6.1f} KB  "
          f"b=1 latency {lat1:.3f} ms (1 thread) {lat2:.3f} ms (2 threads)")

# %%
fig, ax = plt.subplots(1, 2, figsize=(11, 3.5))
names = [r[0] for r in rows]
ax[0].barh(names, [r[2] / 1024 for r in rows])
ax[0].set_xlabel("zipped size (KB)")
ax[1].barh(names, [r[3] for r in rows], label="1 thread")
ax[1].set_xlabel("batch-1 latency (ms, 1 thread)")
for a in ax:
    a.invert_yaxis()
plt.tight_layout()
plt.show()
