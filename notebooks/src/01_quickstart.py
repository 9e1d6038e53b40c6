# %% [markdown]
# # Quickstart: callbacks in your own `fit`, then prune, quantize, export, verify
#
# keras-compress works on the Keras models you already have. This notebook trains
# LeNet-300-100 on the offline `mnist5k` digits with two of the toolkit's callbacks
# dropped into a plain `model.fit`, prunes it to 90% sparsity with the `Pruning`
# callback, quantizes it to a full-integer TFLite file, exports ONNX, and checks each
# artifact in its real runtime (LiteRT, onnxruntime).

# %% parameters
QUICK = False  # the test suite sets QUICK = True for a fast smoke run

# %%
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from compress.quiet import import_tensorflow

import_tensorflow()  # without the CUDA-probe lines TensorFlow prints at import
import keras
import matplotlib.pyplot as plt

import compress
from compress import export, io, runtime, training
from compress.callbacks import CosineSchedule, EarlyStopping, Pruning
from compress.data import prepare
from compress.models import build
from compress.report import markdown_table, model_report

training.set_seed(0)
work = Path(tempfile.mkdtemp(prefix="compress-quickstart-"))
EPOCHS = 2 if QUICK else 20

# %% [markdown]
# ## 1. Your model, your `fit`, our callbacks
# `EarlyStopping` follows Goodfellow et al.'s Algorithm 7.1 (best weights restored, best
# step `i*` recorded); `CosineSchedule` warms up, then decays the learning rate every step.

# %%
model = build("lenet300")
data = prepare(model, compress.load_data("mnist5k", seed=0))
if QUICK:
    data = data.take(600, 300)
model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
              metrics=["accuracy"])
stop = EarlyStopping(patience=4)
history = model.fit(data.x_train, data.y_train, epochs=EPOCHS, batch_size=64, verbose=0,
                    validation_data=(data.x_val, data.y_val),
                    callbacks=[stop, CosineSchedule(warmup_epochs=1)])
print(f"best epoch i* = {stop.best_epoch}, best val_loss = {stop.best:.4f}")
dense = model_report(model, data, name="dense")

fig, ax = plt.subplots(1, 2, figsize=(10, 3))
ax[0].plot(history.history["loss"], label="train")
ax[0].plot(history.history["val_loss"], label="val")
ax[0].set_title("loss")
ax[0].legend()
ax[1].plot(history.history["learning_rate"])
ax[1].set_title("learning rate (per epoch end)")
plt.show()

# %% [markdown]
# ## 2. Prune during fine-tuning with the `Pruning` callback
# Masks are variable constraints applied inside the compiled train step, so pruned weights
# stay exactly zero with Adam; at the end the model is a plain Keras model.

# %%
pruned = training.copy_model(model)
pruned.compile(keras.optimizers.Adam(5e-4), "sparse_categorical_crossentropy",
               metrics=["accuracy"])
pruned.fit(data.x_train, data.y_train, epochs=max(1, EPOCHS // 2), batch_size=64, verbose=0,
           callbacks=[Pruning(sparsity=0.9, frequency=20)])
after = model_report(pruned, data, name="pruned 90%")
pruned_path = work / "pruned.keras"
compress.save_model(pruned, pruned_path)
print(markdown_table([dense, after]))
print("loads with plain Keras:", type(keras.models.load_model(pruned_path)).__name__)

# %% [markdown]
# ## 3. Quantize to full-integer TFLite and export ONNX, verified in the runtimes

# %%
from compress.quantization import quantize

content, q = quantize(pruned, data, mode="int8")  # the artifact's bytes and its report
tfl = io.write_bytes(work / "pruned-int8.tflite", content)
onnx_check = export.export_onnx(pruned, work / "pruned.onnx", x=data.x_test[:256])
rows = [
    ("Keras (pruned)", after["accuracy"], after["zipped_bytes"]),
    ("TFLite int8 (LiteRT)", runtime.artifact_accuracy(tfl, data.x_test, data.y_test),
     compress.report.zipped_size(tfl)),
    ("ONNX float (onnxruntime)", runtime.artifact_accuracy(work / "pruned.onnx", data.x_test,
                                                           data.y_test),
     compress.report.zipped_size(work / "pruned.onnx")),
]
for name, acc, size in rows:
    print(f"{name:28s} accuracy {acc:.2%}   zipped {size / 1024:7.1f} KB")
print(f"ONNX parity: max abs diff {onnx_check['max_abs_diff']:.1e}, "
      f"top-1 agreement {onnx_check['top1_agreement']:.0%}")
