# %% [markdown]
# # Deep Cascade Learning
#
# Marquez, Hare and Niranjan (IEEE TNNLS 2018) train a deep network one layer at a time:
# for layer l, attach a temporary output block, train layer l (and the block) for
# `epochs + k*l` epochs with the learning rate divided by 10 on a validation plateau,
# freeze it, drop the block, and feed the next stage the frozen layers' outputs, computed
# once and cached. Later stages train only a small part of the network on small inputs,
# so their memory and time per epoch fall.

# %% parameters
QUICK = False

# %%
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from compress.quiet import import_tensorflow

import_tensorflow()  # without the CUDA-probe lines TensorFlow prints at import
import matplotlib.pyplot as plt

import compress
from compress import training
from compress.cascade import cascade_train
from compress.data import prepare
from compress.models import build

training.set_seed(0)
model = build("cnn4")
data = prepare(model, compress.load_data("animals", seed=0))
if QUICK:
    data = data.take(600, 300)
EPOCHS, K = (0, 0) if QUICK else (1, 1)
trained, info = cascade_train(model, data, epochs=EPOCHS, k=K,
                              fine_tune_epochs=0 if QUICK else 2)
print(f"cascade: {info['blocks']} stages, {info['total_epochs']} epochs in all, "
      f"test accuracy {info['test_accuracy']:.2%}")

# %% [markdown]
# ## What each stage cost

# %%
stages = info["stages"]
for i, s in enumerate(stages, 1):
    print(f"stage {i}: {s['epochs']} epochs, val acc {s['val_accuracy']:.2%}, "
          f"{s['seconds_per_epoch']:.2f} s/epoch, training memory "
          f"{s['train_memory_bytes'] / 2**20:.1f} MiB")
fig, ax = plt.subplots(1, 3, figsize=(13, 3.5))
names = [f"stage {i}" for i in range(1, len(stages) + 1)]
ax[0].bar(names, [100 * s["val_accuracy"] for s in stages])
ax[0].set_title("validation accuracy after each stage (%)")
ax[1].bar(names, [s["seconds_per_epoch"] for s in stages])
ax[1].set_title("seconds per epoch")
ax[2].bar(names, [s["train_memory_bytes"] / 2**20 for s in stages])
ax[2].axhline(info["end_to_end_train_memory_bytes"] / 2**20, color="k", ls="--",
              label="end-to-end")
ax[2].set_title("training memory (MiB, estimated)")
ax[2].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# The result is a plain Keras model: save it, prune it, quantize it like any other.

# %%
print(type(trained).__name__, f"{trained.count_params():,} parameters")
