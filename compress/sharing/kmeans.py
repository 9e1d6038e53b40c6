"""Weight sharing by k-means (Deep Compression, Han et al. 2016), for Keras 3.

Each chosen weight matrix (those pruning acts on: Dense, EinsumDense, every convolution,
embeddings, recurrent cells) is clustered into ``clusters`` centroids (1-D k-means with
k-means++ seeding, per matrix); every weight is replaced by its centroid, so the kernel
can be stored as ``log2(clusters)``-bit indices plus a tiny codebook. Fine-tuning trains
the centroids only: the gradient of a centroid is the sum of its members' gradients
(biases and unclustered layers train normally), in a Keras ``fit`` that obeys the
training context (``--checkpoint-dir`` resumes it). Exact zeros of a pruned kernel stay zero
(Deep Compression clusters the surviving weights only). The result is a plain Keras model whose
kernels hold ``clusters`` distinct values (which DEFLATE compresses well).

Example:

>>> from compress.sharing import cluster_model
>>> clustered, info = cluster_model(model, ds, clusters=16, epochs=2)  # doctest: +SKIP
>>> info["index_bits"]                                                 # doctest: +SKIP
4
"""

from __future__ import annotations

import math
import types

import keras
import numpy as np

from compress.data import as_dataset
from compress.errors import CompressError
from compress.sharing.share_options import KMEANS_OPTIONS


def kmeans_1d(values: np.ndarray, clusters: int, seed: int = 0, iterations: int = 30
              ) -> tuple[np.ndarray, np.ndarray]:
    """Cluster scalar ``values`` into ``clusters`` centroids.

    k-means++ seeding (each new centre drawn with probability proportional to the squared
    distance to the nearest chosen one), then Lloyd iterations; assignment uses the sorted
    centroids' midpoints, so each iteration is ``O(n log k)``.

    Example:

    >>> c, a = kmeans_1d(np.array([0.0, 0.1, 5.0, 5.1]), 2)
    >>> sorted(round(float(v), 2) for v in c), len(set(a.tolist()))
    ([0.05, 5.05], 2)

    Args:
        values: 1-D float array.
        clusters: int, number of centroids (2 to ``len(values)``).
        seed: int, default 0.
        iterations: int, default 30. Lloyd iterations at most.

    Returns:
        ``(centroids, assignment)``: sorted float32 centroids and an int32 index per value.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if not 2 <= clusters <= x.size:
        raise CompressError(f"clusters: must be in [2, {x.size}] for {x.size} weights, "
                            f"got {clusters}")
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(x.size)]]
    dist = (x - centres[0]) ** 2
    for _ in range(1, clusters):
        total = dist.sum()
        pick = rng.choice(x.size, p=dist / total) if total > 0 else rng.integers(x.size)
        centres.append(x[pick])
        dist = np.minimum(dist, (x - x[pick]) ** 2)
    centroids = np.sort(np.asarray(centres))
    assign = _nearest(x, centroids)
    for _ in range(iterations):
        sums = np.bincount(assign, weights=x, minlength=clusters)
        counts = np.bincount(assign, minlength=clusters)
        # an empty cluster keeps its centre (rare with k-means++ seeding)
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        order = np.argsort(updated)
        updated = updated[order]
        new_assign = _nearest(x, updated)
        if np.array_equal(new_assign, assign) and np.allclose(updated, centroids):
            centroids = updated
            break
        centroids, assign = updated, new_assign
    return centroids.astype(np.float32), assign.astype(np.int32)


def _nearest(x: np.ndarray, sorted_centroids: np.ndarray) -> np.ndarray:
    mids = (sorted_centroids[1:] + sorted_centroids[:-1]) / 2.0
    return np.searchsorted(mids, x).astype(np.int64)


def cluster_model(model, data=None, *, verbose=0, **options):
    """Share each chosen layer's weights among ``clusters`` k-means centroids.

    The input model is not modified; the result is a plain Keras model.

    Example:

    >>> clustered, info = cluster_model(model, ds, clusters=16, epochs=2)  # doctest: +SKIP

    Args:
        model: a Keras model.
        data: a :class:`compress.data.Dataset` prepared for the model; needed when
            ``epochs > 0``.
        verbose: Keras ``fit`` verbosity of the fine-tuning, default 0.
        **options: checked by :data:`~compress.sharing.share_options.KMEANS_OPTIONS`:
            ``clusters`` (16, centroids per weight matrix, 2 to its weight count),
            ``layers`` (None: every matrix of :func:`clusterable_weights`; else a list
            of names, class names or regular expressions matching the whole name),
            ``epochs`` (0, fine-tuning epochs of the centroids), ``seed`` (0, k-means++
            and training seed),
            ``learning_rate`` (None: 1e-4, Adam), ``batch_size`` (64).

    Returns:
        ``(new_model, info)``; ``info`` has the index bits, bits per weight (indices plus
        codebook) and per-layer rows.
    """
    from compress import training

    opts = KMEANS_OPTIONS.validate(options)
    from compress.io import ensure_signature

    model = ensure_signature(model, data)  # a subclassed model: wrapped, with an input
    data = as_dataset(data, model)  # a tf.data.Dataset, arrays, (x, y), a name: one form
    clusters, epochs, seed = opts["clusters"], opts["epochs"], opts["seed"]
    from compress.task import resolve, sample_targets

    task = resolve(model, opts["loss"], opts["metrics"], y=sample_targets(data))
    new = training.copy_model(model)
    from compress.pruning.masks import layer_path, weight_key

    pairs, small = clusterable_weights(new, opts["layers"], clusters)
    training.set_seed(seed)
    state = []
    for k, (layer, variable) in enumerate(pairs):
        centroids, assign = _cluster_kernel(np.asarray(variable), clusters, seed + k)
        variable.assign(centroids[assign].reshape(variable.shape))
        state.append((layer, variable, centroids, assign))
    if epochs > 0:
        if data is None:
            raise CompressError("fine-tuning (epochs > 0) needs data (--data NAME)")
        state = _finetune_centroids(new, state, data, epochs, opts["learning_rate"] or 1e-4,
                                    opts["batch_size"], seed, verbose, clusters, task,
                                    teacher=model)
    # the widest index any layer stores (a pruned kernel's fixed zero is one slot more:
    # 4 clusters and a zero take 3 bits, not 2)
    index_bits = max(math.ceil(math.log2(len(c))) for _, _, c, _ in state)
    rows, total_bits, total_weights = [], 0, 0
    for layer, variable, centroids, _ in state:
        size = int(np.prod(variable.shape))
        slots = len(centroids)  # clusters, plus one fixed zero for a pruned kernel
        bits = size * math.ceil(math.log2(slots)) + 32 * slots
        total_bits += bits
        total_weights += size
        rows.append({"layer": layer_path(layer), "weight": weight_key(layer, variable),
                     "type": type(layer).__name__, "weights": size, "clusters": clusters,
                     "distinct": int(np.unique(np.asarray(variable)).size),
                     "bits_per_weight": bits / size})
    info = {"method": "kmeans", "clusters": clusters, "index_bits": index_bits,
            "layers": rows, "clustered_weights": total_weights,
            "bits_per_weight": total_bits / total_weights, "epochs": epochs,
            "stored_params": int(sum(int(np.prod(w.shape)) for w in new.weights))}
    if small:
        from compress.pruning.masks import listed

        info["left_float"] = (f"{listed(small)}: no more values than --clusters "
                              f"{clusters}; they keep their float weights")
    if not opts["layers"]:
        from compress.sharing.layer_selection import coverage

        info.update(coverage(new, list({id(la): la for la, *_ in state}.values()),
                             total_weights, "clustered", why=CLUSTERABLE_ONLY))
    if data is not None and data.labelled:  # the task's own: accuracy, or MSE+MAE
        info.update(task.evaluate_data(new, data, "test"))  # batch by batch
    return new, info


#: Why k-means leaves a weight matrix in float (``not_reached``).
CLUSTERABLE_ONLY = ("k-means reaches the weights of the layer kinds pruning does (Dense, "
                    "EinsumDense, convolutions, embeddings, recurrent cells)")


def clusterable_weights(model, layers, clusters: int) -> tuple[list, list]:
    """``(pairs, small)``: the ``(layer, variable)`` pairs k-means clusters, in model
    order: every weight matrix pruning acts on (:data:`compress.pruning.masks.PRUNABLE`:
    Dense, EinsumDense, every convolution, depthwise and pointwise kernels, embeddings,
    the input and recurrent kernels of LSTM/GRU/SimpleRNN/ConvLSTM cells), inside nested
    models and custom layers too, chosen by ``layers`` as in every pass; and ``small``,
    ``[(weight key, size)]`` of those with no more values than ``clusters``, left in
    float (a matrix the user named with ``layers`` is refused instead).

    Example:

    >>> pairs, small = clusterable_weights(model, None, 16)   # doctest: +SKIP
    >>> [v.path for _, v in pairs]                             # doctest: +SKIP
    ['conv1d/kernel', 'lstm/lstm_cell/kernel', 'lstm/lstm_cell/recurrent_kernel', ...]
    """
    from compress.pruning.masks import layer_path, prunable_weights, weight_key

    pairs, small = [], []
    for layer, variable in prunable_weights(model, layers, what="clusterable"):
        size, key = int(np.prod(variable.shape)), weight_key(layer, variable)
        if size > clusters or (layers and size == clusters):
            pairs.append((layer, variable))
        elif layers:
            name = f"layer '{layer_path(layer)}'" if key == f"{layer_path(layer)}/kernel" \
                else f"'{key}'"
            raise CompressError(f"{KMEANS_OPTIONS.name}.clusters: must be at most the {size} "
                                f"weights of {name}, got {clusters}")
        else:
            small.append((key, size))
    if not pairs:
        key, size = max(small, key=lambda s: s[1])
        raise CompressError(f"{KMEANS_OPTIONS.name}.clusters: must be below the {size} weights "
                            f"of the largest matrix '{key}', got {clusters}")
    return pairs, small


def _cluster_kernel(kernel: np.ndarray, clusters: int, seed: int):
    """k-means of one kernel. Exact zeros (a pruned kernel) stay zero: the nonzero weights
    get the ``clusters`` centroids and the zeros an extra centroid fixed at 0 (last)."""
    flat = kernel.ravel()
    nonzero = flat != 0
    if nonzero.all() or nonzero.sum() < clusters:
        return kmeans_1d(flat, clusters, seed=seed)
    centroids, assign_nz = kmeans_1d(flat[nonzero], clusters, seed=seed)
    assign = np.full(flat.size, clusters, dtype=np.int32)
    assign[nonzero] = assign_nz
    return np.append(centroids, np.float32(0.0)), assign


def _finetune_centroids(model, state, data, epochs, learning_rate, batch_size, seed, verbose,
                        clusters, task, teacher=None):
    """Train centroids (gradient = sum over members), biases and unclustered weights.

    A Keras fit of a :class:`CentroidTrainer` through :func:`compress.training.fit_model`,
    so the training context applies: ``--checkpoint-dir`` backups (the centroids and the
    optimizer state are the trainer's weights), the NaN stop and ``--keep-last-good`` (of
    the clustered model), Ctrl-C. Data without labels trains on ``teacher``'s outputs
    (the original model) with the task's fidelity loss, as the other passes' label-free
    fine-tuning does.
    """
    from compress import training

    loss = task.loss
    args = data.fit_args(batch_size, validation=False)  # arrays, or streamed batches
    if not getattr(data, "labelled", True):
        if teacher is None:
            raise CompressError("k-means fine-tuning without labels needs the original model")
        loss, targets = task.fidelity_loss()
        args["x"], args["y"] = _teacher_targets(teacher, args["x"], targets, args["batch_size"])
    trainer = CentroidTrainer(model, [(v, c, a) for _, v, c, a in state], clusters)
    trainer.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss,
                    jit_compile=False)
    # Built on exactly the variables it updates (not on every trainable weight, as fit and
    # a restored backup would build it), so that a backup's optimizer state loads back.
    trainer.optimizer.build(trainer.updated_variables)
    training.set_seed(seed)
    training.fit_model(trainer, args["x"], args["y"], epochs=epochs,
                       batch_size=args["batch_size"], verbose=verbose,
                       shuffle=args["batch_size"] is not None, target=model,
                       advice="lower the learning rate")
    return [(layer, v, np.asarray(c), a)
            for (layer, v, _, a), c in zip(state, trainer.centroids, strict=True)]


def _teacher_targets(teacher, x, targets, batch_size):
    """``(x, y)`` for label-free training: ``y`` is ``targets`` of the teacher's outputs,
    computed once for arrays, batch by batch inside the pipeline for a stream."""
    from compress import training

    if batch_size is not None:  # arrays
        return x, targets(training.predict(teacher, x))
    frozen = training.copy_model(teacher)
    return x.map(lambda xb: (xb, targets(frozen(xb, training=False)))), None


class CentroidTrainer(keras.Model):
    """Fine-tunes a clustered model's centroids with ``fit``: every kernel stays its
    centroids gathered by a fixed assignment.

    Each step takes the loss gradient of every clustered kernel, sums it per centroid
    (Han et al.'s shared-weight gradient), updates the centroids (a trailing zero
    centroid of a pruned kernel never moves) and the model's other trainable weights with
    the optimizer, then writes the gathered centroids back into the kernels. The
    centroids are this model's weights, so a backup holds them.

    Example:

    >>> trainer = CentroidTrainer(model, [(layer.kernel, centroids, assign)], 16)  # doctest: +SKIP
    >>> trainer.compile(optimizer="adam", loss="sparse_categorical_crossentropy")   # doctest: +SKIP

    Args:
        model: keras.Model whose kernels are already clustered; trained in place.
        clustered: list of ``(kernel variable, centroids, assignment)``; the assignment
            indexes the centroids for every kernel entry (flattened).
        clusters: int. Trainable centroids per kernel; any after them stay fixed (zero).
    """

    def __init__(self, model, clustered, clusters: int):
        import tensorflow as tf

        super().__init__(name=f"{model.name}_centroids")
        self.clustered_model = model  # tracked: its weights are in this model's backups
        self.centroids = [
            self.add_weight(shape=(len(c),), initializer=keras.initializers.Constant(c),
                            name=f"centroids_{k}", trainable=True)
            for k, (_, c, _) in enumerate(clustered)]
        kernels = [kernel for kernel, _, _ in clustered]
        kernel_ids = {id(k) for k in kernels}
        # A plain namespace, which Keras does not track: these variables are the clustered
        # model's, and must not be counted (and saved) a second time as this model's own.
        self._fixed = types.SimpleNamespace(
            kernels=kernels,
            others=[v for v in model.trainable_variables if id(v) not in kernel_ids],
            assigns=[tf.constant(np.asarray(a).reshape(-1), tf.int32) for _, _, a in clustered],
            movable=[tf.constant(np.arange(len(c)) < clusters, tf.float32)
                     for _, c, _ in clustered])
        self._loss_mean = keras.metrics.Mean(name="loss")
        self.built = True  # every part is built: the clustered model and the centroids

    @property
    def updated_variables(self) -> list:
        """What the optimizer updates: the centroids, then the other trainable weights."""
        return list(self.centroids) + list(self._fixed.others)

    @property
    def metrics(self):
        return [self._loss_mean]

    def call(self, x, training=False):
        return self.clustered_model(x, training=training)

    def train_step(self, data):
        import tensorflow as tf

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight)
        fixed = self._fixed
        grads = tape.gradient(loss, fixed.kernels + fixed.others)
        n = len(fixed.kernels)
        centroid_grads = [
            tf.math.unsorted_segment_sum(tf.reshape(g, [-1]), a, c.shape[0]) * movable
            for g, a, c, movable in zip(grads[:n], fixed.assigns, self.centroids,
                                        fixed.movable, strict=True)]
        self.optimizer.apply(centroid_grads + list(grads[n:]), self.updated_variables)
        for kernel, c, a in zip(fixed.kernels, self.centroids, fixed.assigns, strict=True):
            kernel.assign(tf.reshape(tf.gather(c, a), kernel.shape))
        self._loss_mean.update_state(loss)
        return {"loss": self._loss_mean.result()}
