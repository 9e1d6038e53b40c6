"""HashedNets beyond Dense and Conv2D (``sharing-hash-layers``): a hashed vocabulary and
hashed 1-D convolutions, on two models trained here from offline data:

- a token classifier: every mnist5k digit cut into 49 patches of 4x4 pixels, each
  patch binarised into a 16-bit token id (a 65,536-word vocabulary, of which about
  3,100 occur: a long-tailed vocabulary, as text has), through ``Embedding(65536, 16)``,
  ``Dense(100)``, ``Dense(10)``; the embedding holds 93% of the parameters;
- the causal, dilated Conv1D forecaster (TCN) of the ``sequences`` section.

Before this round hashing replaced Dense and Conv2D layers only: on the token model it
reached 7% of the weights. The baseline of equal storage for the vocabulary is the
hashing trick on ids (Weinberger et al. 2009): a dense ``Embedding(V', 16)`` with ids
taken modulo ``V'``, ``V'`` chosen to store as many values as the hashed table, trained
from scratch for as many epochs in all; the hashed one shares values element by element
with random signs (Chen et al. 2015). No issue sets a target here: the section reports.
"""

from __future__ import annotations

import numpy as np

from bench.harness import Section, table

VOCAB, WIDTH = 2 ** 16, 16


def patch_tokens(x: np.ndarray) -> np.ndarray:
    """``(n, 49)`` int32 ids: each 4x4 patch of a 28x28 image, binarised at 0.5, read as
    16 bits."""
    patches = x.reshape(-1, 7, 4, 7, 4).transpose(0, 1, 3, 2, 4).reshape(-1, 49, 16)
    return ((patches > 0.5).astype(np.int64) @ (1 << np.arange(16))).astype("int32")


def _token_model(vocab: int, epochs: int, ds, modulo: int | None = None):
    import keras

    keras.utils.set_random_seed(0)
    L = keras.layers
    model = keras.Sequential([keras.Input((49,), dtype="int32", name="tokens"),
                              L.Embedding(vocab, WIDTH, name="embed"), L.Flatten(),
                              L.Dense(100, activation="relu", name="fc"),
                              L.Dense(10, activation="softmax", name="out")], name="tokens")
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    wrap = (lambda ids: ids % modulo) if modulo else (lambda ids: ids)
    model.fit(wrap(ds.x_train), ds.y_train, epochs=epochs, batch_size=64, verbose=0,
              validation_data=(wrap(ds.x_val), ds.y_val))
    accuracy = float(np.mean(np.argmax(model.predict(wrap(ds.x_test), batch_size=256,
                                                     verbose=0), -1) == ds.y_test))
    return model, accuracy


def _tokens(ctx):
    from compress.data import Dataset, load_data

    mnist = load_data("mnist5k", seed=0)
    return Dataset(name="mnist5k patch tokens", x_train=patch_tokens(mnist.x_train),
                   y_train=mnist.y_train, x_val=patch_tokens(mnist.x_val), y_val=mnist.y_val,
                   x_test=patch_tokens(mnist.x_test), y_test=mnist.y_test, num_classes=10)


def _exported(model, ds, ctx, name):
    from compress import export

    path = ctx.work_dir / f"hash_layers_{name}.tflite"
    result = export.export(model, path, fmt="tflite", x=ds.x_test[:64], force=True)
    return result["bytes"], result["max_abs_diff"]


def _tuned_further(model, ds, epochs: int, learning_rate: float):
    """A copy of ``model`` trained ``epochs`` more on its own loss, keeping the best
    validation loss (as the hashed models' fine-tuning does): the reference that separates
    what hashing costs from what the extra epochs give."""
    import keras

    keras.utils.set_random_seed(0)
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    copy.compile(keras.optimizers.Adam(learning_rate), model.loss)
    copy.fit(ds.x_train, ds.y_train, epochs=epochs, batch_size=64, verbose=0,
             validation_data=(ds.x_val, ds.y_val),
             callbacks=[keras.callbacks.EarlyStopping(patience=5, restore_best_weights=True)])
    return copy


def case_sharing_hash_layers(ctx) -> Section:
    from bench.cases.sequences import _score, _shown, tcn_case
    from compress.sharing import share

    sec = Section("HashedNets beyond Dense and Conv2D: hashed embeddings and 1-D "
                  "convolutions", issue="#20")
    epochs = ctx.size(1, 8)  # quick: the harness checked
    ds = _tokens(ctx)
    dense, dense_acc = _token_model(VOCAB, epochs, ds)
    dense_bytes, _ = _exported(dense, ds, ctx, "dense")
    longer = _score(_tuned_further(dense, ds, epochs, 3e-3), ds, "accuracy")

    def pts(acc):
        return f"{(acc - dense_acc) * 100:+.2f}"

    rows = [["dense `Embedding(65536, 16)`", f"{dense.count_params():,}",
             f"{dense_acc:.2%}", "", f"{dense_bytes / 1024:.0f} KiB", ""],
            [f"dense, trained {epochs} epochs more", f"{dense.count_params():,}",
             f"{longer:.2%}", pts(longer), "", ""]]
    for factor in (1 / 64,) if ctx.quick else (1 / 64, 1 / 256):
        hashed, info = share(dense, ds, method="hash", factor=factor, layers=["embed"],
                             epochs=epochs, learning_rate=3e-3)
        size, diff = _exported(hashed, ds, ctx, f"h{round(1 / factor)}")
        buckets = info["layers"][0]["buckets"]
        label = (f"hashed embedding, factor 1/{round(1 / factor)} ({buckets:,} buckets), "
                 f"converted, fine-tuned {epochs} epochs")
        rows.append([label, f"{info['stored_params']:,}", f"{info['accuracy']:.2%}",
                     pts(info["accuracy"]), f"{size / 1024:.0f} KiB", f"{diff:.0e}"])
        rows_v = buckets // WIDTH  # the same storage as whole rows: ids modulo rows_v
        small, small_acc = _token_model(rows_v, 2 * epochs, ds, modulo=rows_v)
        label = (f"same storage: `Embedding({rows_v:,}, 16)` on ids mod {rows_v:,}, "
                 f"trained {2 * epochs} epochs")
        rows.append([label, f"{small.count_params():,}", f"{small_acc:.2%}",
                     pts(small_acc), "", ""])
    from compress.pruning import prune

    thin, info = prune(dense, ds, sparsity=0.5, structured=True, epochs=epochs,
                       learning_rate=3e-3)
    size, diff = _exported(thin, ds, ctx, "structured")
    widths = info["units"]
    label = (f"for comparison: structured pruning 50% (embedding {widths['embed'][0]} -> "
             f"{widths['embed'][1]} dimensions, fc {widths['fc'][0]} -> {widths['fc'][1]} "
             f"units), fine-tuned {epochs} epochs")
    acc = _score(thin, ds, "accuracy")
    rows.append([label, f"{thin.count_params():,}", f"{acc:.2%}", pts(acc),
                 f"{size / 1024:.0f} KiB", f"{diff:.0e}"])
    sec.add(f"Token classifier on mnist5k (49 patch tokens per digit, "
            f"{len(np.unique(ds.x_train)):,} distinct ids in training, vocabulary 65,536). "
            f"The dense model trains {epochs} epochs (Adam 3e-3, batch 64); each hashed "
            f"model starts from its table's bucket means and fine-tunes {epochs} epochs "
            "(keeping the best validation loss), so the references get as many epochs in "
            "all: the dense model trained further, and the baseline of equal storage "
            "trained from scratch. The TFLite files are the Keras models exported and "
            "checked against them in LiteRT (max abs diff).")
    sec.add(table(["model", "parameters", "test accuracy", "vs dense (pts)", "TFLite",
                   "LiteRT vs Keras"], rows))

    tcn, series, metric = tcn_case(ctx)
    base = _score(tcn, series, metric)
    tuned = _score(_tuned_further(tcn, series, 2 * epochs, 3e-3), series, metric)
    trows = [[f"dense, trained {2 * epochs} epochs more", f"{tcn.count_params():,}",
              _shown(base, metric), _shown(tuned, metric), f"{tuned / base:.2f}x", ""]]
    for factor in (1 / 2,) if ctx.quick else (1 / 2, 1 / 4):
        hashed, info = share(tcn, series, method="hash", factor=factor, epochs=2 * epochs,
                             learning_rate=3e-3)
        got = _score(hashed, series, metric)
        kinds = sorted({r["type"] for r in info["layers"]})
        label = (f"every layer hashed, factor 1/{round(1 / factor)}, fine-tuned "
                 f"{2 * epochs} epochs")
        trows.append([label, f"{info['stored_params']:,}",
                      _shown(base, metric), _shown(got, metric), f"{got / base:.2f}x",
                      ", ".join(kinds)])
    sec.add(f"The TCN forecaster of the `sequences` section (three causal Conv1D, dilations "
            "1, 2, 4, then Dense(16) and Dense(1); test MSE): every layer hashed, started "
            f"from the bucket means and fine-tuned {2 * epochs} epochs (Adam 3e-3), beside "
            "the dense model trained as many epochs more:")
    sec.add(table(["model", "parameters", "dense MSE", "after", "vs dense", "layers"],
                  trows))
    sec.add("Reading it: the hashed vocabulary keeps the classifier's accuracy at 1/64 "
            "of its table's storage, converted from the trained model, and the file "
            "shrinks with it (the table is never stored: each looked-up id's vector is "
            "hashed in the graph). On this vocabulary the hashing trick on ids (whole rows "
            "shared, ids modulo a smaller table, trained from scratch as long) does as well "
            "(within 0.2 pts at both sizes): with about 3,100 ids in use, 1,024 or 256 rows "
            "leave few harmful collisions; element-wise hashing does not beat it here. "
            "Structured pruning, which now removes embedding dimensions, halves the table "
            "and the file and loses 1 pt; hashing stores 5.7x less than it at no loss. The "
            "TCN's layers are small (48 to 768 weights each): at 1/2 the hashed model "
            "forecasts better than the dense one it started from, but not as well as the "
            "dense model trained as long (0.87x vs 0.68x its MSE); at 1/4 it loses.")
    return sec


CASES = {"sharing-hash-layers": case_sharing_hash_layers}
