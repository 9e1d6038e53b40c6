"""All callbacks under tf.distribute.MirroredStrategy with two logical CPU devices.

Logical devices must be configured before TensorFlow initialises, so the run happens in a
fresh subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = r'''
import json
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
import keras
import numpy as np
from compress.callbacks import CosineSchedule, EarlyStopping, PlateauSchedule

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.normal(size=(256, 8)).astype("float32")
y = (x[:, 0] > 0).astype("int32")
with strategy.scope():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
rates = []
rec = keras.callbacks.LambdaCallback(on_train_batch_begin=lambda b, logs: rates.append(
    float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))))
stop = EarlyStopping(patience=100)
cosine = CosineSchedule(peak_lr=0.1, warmup_epochs=1)
plateau = PlateauSchedule(monitor="loss", patience=1, min_delta=10.0)
hist = model.fit(x[:224], y[:224], validation_data=(x[224:], y[224:]), batch_size=32,
                 epochs=4, callbacks=[stop, cosine, plateau, rec], verbose=0)
expected = cosine.schedule(np.arange(28), 7, 28, 0.1)
print(json.dumps({
    "replicas": strategy.num_replicas_in_sync,
    "rates": rates, "expected": expected.tolist(),
    "reductions": [e for e, _ in plateau.reductions],
    "best_epoch": stop.best_epoch, "best_step": stop.best_step,
    "val_loss": hist.history["val_loss"],
    "val_loss_now": float(model.evaluate(x[224:], y[224:], verbose=0)[0]),
    "lr_logged": hist.history["learning_rate"],
}))
'''


def test_callbacks_under_mirrored_strategy_with_two_cpu_replicas():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    import numpy as np

    scale = np.repeat([1.0, 1.0, 1.0, 1.0], 7)
    scale[14:] = 0.1  # epoch 0 best; patience 1 -> reductions after epochs 1, 2 (and 3)
    scale[21:] = 0.01
    assert out["reductions"] == [1, 2, 3]  # the last one comes after the last step
    np.testing.assert_allclose(out["rates"], np.array(out["expected"]) * scale, rtol=1e-5,
                               atol=1e-9)
    best = int(np.argmin(out["val_loss"]))
    assert out["best_epoch"] == best and out["best_step"] == 7 * (best + 1)
    assert out["val_loss_now"] == __import__("pytest").approx(out["val_loss"][best], rel=1e-4)
    assert len(out["lr_logged"]) == 4
