# %% [markdown]
# # Optimal Brain Damage vs magnitude pruning
#
# LeCun, Denker and Solla (1990) rank weights by saliency `s_k = h_kk * w_k^2 / 2`, with
# `h_kk` the diagonal of the Hessian of the training loss, instead of by `|w_k|`. Here we
# compute both saliencies for LeNet-300-100 trained on `mnist5k`, look at how they differ,
# and prune one-shot (no retraining) at increasing sparsity with each.

# %% parameters
QUICK = False

# %%
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from compress.quiet import import_tensorflow

import_tensorflow()  # without the CUDA-probe lines TensorFlow prints at import
import matplotlib.pyplot as plt
import numpy as np

import compress
from compress import training
from compress.data import prepare
from compress.models import build
from compress.pruning import magnitude_saliency, obd_saliency, prune

training.set_seed(0)
model = build("lenet300")
data = prepare(model, compress.load_data("mnist5k", seed=0))
if QUICK:
    data = data.take(600, 300)
training.compile_classifier(model)
training.fit(model, data, epochs=2 if QUICK else 15, verbose=0)
print(f"dense accuracy: {training.accuracy(model, data.x_test, data.y_test):.2%}")

# %% [markdown]
# ## Saliencies of the first layer's weights
# OBD uses the Gauss-Newton (Levenberg-Marquardt) diagonal, positive by construction,
# computed in a few gradient passes over the calibration data.

# %%
kernel = model.get_layer("fc1").kernel
calib = data.x_train[:512], data.y_train[:512]
obd = obd_saliency(model, *calib, variables=[kernel])[0]
mag = magnitude_saliency(np.asarray(kernel))
fig, ax = plt.subplots(1, 2, figsize=(11, 4))
ax[0].scatter(mag.ravel()[::20], obd.ravel()[::20], s=2, alpha=0.4)
ax[0].set_xscale("log")
ax[0].set_yscale("log")
ax[0].set_xlabel("|w|")
ax[0].set_ylabel("OBD saliency h w^2 / 2")
ax[0].set_title("fc1: OBD saliency vs magnitude")
ax[1].imshow(obd.sum(axis=1).reshape(28, 28), cmap="magma")
ax[1].set_title("OBD saliency summed per input pixel")
plt.show()
rank_corr = np.corrcoef(np.argsort(np.argsort(mag.ravel())),
                        np.argsort(np.argsort(obd.ravel())))[0, 1]
print(f"rank correlation between the two criteria: {rank_corr:.3f}")

# %% [markdown]
# ## One-shot pruning without retraining
# Deleting most weights at once breaks OBD's local quadratic model (the diagonal ignores
# how deleted weights interact), so OBD is run the way the paper prescribes: delete a few,
# re-estimate the saliencies, repeat (`steps=8`), still without any retraining. Magnitude
# gets no benefit from steps: its ranking never changes without training.

# %%
levels = [0.5, 0.7, 0.8, 0.9] if not QUICK else [0.5, 0.9]
curves = {"magnitude": [], "obd": []}
for method, accs in curves.items():
    for s in levels:
        steps = 8 if method == "obd" else 1
        pruned, info = prune(model, data, method=method, sparsity=s, schedule="oneshot",
                             steps=steps)
        accs.append(training.accuracy(pruned, data.x_test, data.y_test))
for method, accs in curves.items():
    plt.plot([100 * s for s in levels], [100 * a for a in accs], marker="o", label=method)
plt.xlabel("sparsity (%)")
plt.ylabel("test accuracy (%)")
plt.title("one-shot pruning, no retraining")
plt.legend()
plt.grid(alpha=0.3)
plt.show()
for s, m, o in zip(levels, curves["magnitude"], curves["obd"]):
    print(f"{s:.0%}: magnitude {m:.2%}   OBD {o:.2%}")
