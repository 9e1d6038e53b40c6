"""Streamed data: :class:`StreamDataset`, splits read batch by batch from ``tf.data``.

Training, calibration, saliency and evaluation read it with :meth:`StreamDataset.batches`
and :meth:`StreamDataset.head` (only the samples they need); a pass that still needs a
whole split as arrays reads the ``x_*``/``y_*`` attributes, which materialise that split
once and say so in ``notes``.

Example:

>>> ds.batches("train", 64, shuffle=True)   # a tf.data.Dataset of batches  # doctest: +SKIP
>>> x_cal, _ = ds.head("train", 256)        # 256 samples as arrays         # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np

from compress.data.arrays import SPLITS, leaves, length, map_structure
from compress.errors import CompressError

# Samples read from the head of a stream to check its labels against the model.
CHECK_SAMPLES = 256


class StreamDataset:
    """Splits read batch by batch from ``tf.data`` pipelines, never all in memory at once.

    Args:
        name: str. How messages name the data.
        splits: dict ``{"train"|"val"|"test": (make, count[, batched])}``:
            ``make(shuffle)`` returns a ``tf.data.Dataset`` of single samples (``x`` or
            ``(x, y[, w])``), or of batches when ``batched`` (a user's batched pipeline
            keeps its batches and its known length), in a fixed order unless ``shuffle``
            (an image folder shuffles its file list each epoch; a user's pipeline keeps
            its own order); ``count`` is the number of samples, or None when unknown.
        num_classes: int. 0 when unknown or unlabelled.
        labelled: bool. Whether the samples carry targets.
        notes: list of str. One-line remarks for the user (skipped files, materialised
            splits).

    Example:

    >>> ds.batches("train", 64, shuffle=True)   # a tf.data.Dataset of batches  # doctest: +SKIP
    >>> x_cal, _ = ds.head("train", 256)        # 256 samples as arrays         # doctest: +SKIP
    """

    streaming = True

    def __init__(self, name: str, splits: dict, num_classes: int = 0, labelled: bool = True,
                 notes: list | None = None, labels: dict | None = None):
        self.name = name
        self.splits = {k: (v[0], v[1], v[2] if len(v) > 2 else False)
                       for k, v in splits.items()}
        self.num_classes = int(num_classes or 0)
        self.labelled = bool(labelled)
        self.notes = list(notes or [])
        self._arrays: dict = {}
        self._labels: dict = dict(labels or {})  # split -> targets known without decoding

    def __repr__(self):
        sizes = ", ".join(f"{k}={self.size(k)}" for k in SPLITS)
        return f"StreamDataset({self.name!r}, {sizes}, labelled={self.labelled})"

    # -- streamed access -------------------------------------------------------------
    def source(self, name: str, shuffle: bool = False):
        """A ``tf.data.Dataset`` of the split's single samples."""
        if name not in SPLITS:
            raise CompressError(f"split '{name}': must be train, val or test")
        make, _, batched = self.splits[name]
        return make(shuffle).unbatch() if batched else make(shuffle)

    def size(self, name: str) -> int | None:
        """Number of samples in a split (None: unknown until read)."""
        return self.splits[name][1]

    @property
    def element_spec(self):
        return self.source("train").element_spec

    @property
    def sample_shape(self) -> tuple:
        spec = self.element_spec
        x = spec[0] if self.labelled else spec
        return tuple(leaves(_spec_leaves(x))[0].shape)

    def batches(self, name: str, batch_size: int = 64, shuffle: bool = False, seed: int = 0):
        """A ``tf.data.Dataset`` of batches of a split, prefetched. ``shuffle`` is the
        source's own (an image folder shuffles its file list each epoch); a user's
        ``tf.data`` pipeline keeps its own order."""
        import tensorflow as tf

        make, _, batched = self.splits[name]
        ds = make(shuffle) if batched else make(shuffle).batch(batch_size)
        return ds.prefetch(tf.data.AUTOTUNE)

    def head(self, name: str, n: int | None) -> tuple:
        """``(x, y)`` arrays of the first ``n`` samples of a split (``y`` None unlabelled);
        only those samples are read."""
        if n is None:
            return self.split(name)
        if name in self._arrays:
            x, y = self._arrays[name]
            return map_structure(lambda a: a[:n], x), map_structure(lambda a: a[:n], y)
        return _collect(self.source(name).take(n), self.labelled)

    def spread(self, name: str, n: int | None) -> tuple:
        """``(x, y)`` of ``n`` samples of a split for calibration (quantization, OBS/OBD,
        BatchNorm statistics): an image folder's drawn at random, seeded (its file list
        is in class order: the first 256 files of a folder of 500 per class were all of
        its first class); a user's pipeline's first ``n``, in its own order. Only those
        samples are read."""
        if n is None:
            return self.head(name, None)
        return _collect(self.source(name, shuffle=True).take(n), self.labelled)

    def representative(self, n: int = 256):
        """``n`` training samples for calibration (:meth:`spread`)."""
        return self.spread("train", n)[0]

    def fit_args(self, batch_size: int = 64, validation: bool = True) -> dict:
        """Keyword arguments of :func:`compress.training.fit_model`: batched streams."""
        has_val = validation and (self.size("val") is None or self.size("val") > 0)
        return {"x": self.batches("train", batch_size, shuffle=True), "y": None,
                "batch_size": None,
                "validation_data": self.batches("val", batch_size) if has_val else None}

    def take(self, n_train: int | None = None, n_test: int | None = None) -> StreamDataset:
        """A smaller copy (the first ``n`` samples of each split, in the stream's order;
        an image folder draws its files with :meth:`ImageFolder.take` before it is a
        stream), for quick runs and tests. The same samples at every pass; training
        shuffles them among themselves (it took a new draw of the whole split per epoch
        from a folder, while the test split and the known labels were its first ``n``)."""
        n_val = None if n_train is None else max(1, n_train // 9)
        cut = {"train": n_train, "val": n_val, "test": n_test}
        splits = {}

        def first(make, n, batched):
            def cut_make(shuffle=False):
                ds = (make(False).unbatch() if batched else make(False)).take(n)
                return ds.shuffle(n, seed=0, reshuffle_each_iteration=True) if shuffle \
                    else ds
            return cut_make
        for k, (make, count, batched) in self.splits.items():
            n = cut[k]
            splits[k] = (make, count, batched) if n is None else (
                first(make, n, batched), n if count is None else min(n, count), False)
        labels = {k: map_structure(lambda a, n=cut[k]: a[:n], v)
                  for k, v in self._labels.items()}
        return StreamDataset(self.name, splits, self.num_classes, self.labelled, self.notes,
                             labels)

    # -- materialised access (what still needs arrays) -------------------------------
    def split(self, name: str) -> tuple:
        """``(x, y)`` arrays of a whole split: read once, kept, and noted."""
        if name not in SPLITS:
            raise CompressError(f"split '{name}': must be train, val or test")
        if name not in self._arrays:
            x, y = _collect(self.source(name), self.labelled)
            if length(x) == 0:
                raise CompressError(f"{self.name}: the {name} split is empty")
            self._arrays[name] = (x, y)
            self.notes.append(f"data {self.name}: the {name} split ({length(x)} samples) was "
                              "read into memory")
        return self._arrays[name]

    def targets(self, name: str):
        """The targets of a whole split (None unlabelled), without keeping its inputs:
        an image folder knows them from its file list; a stream is read once for them."""
        if not self.labelled:
            return None
        if name in self._arrays:
            return self._arrays[name][1]
        if name not in self._labels:
            self._labels[name] = _collect(self.source(name).map(lambda *e: e[1]), False)[0]
        return self._labels[name]

    x_train = property(lambda self: self.split("train")[0])
    y_train = property(lambda self: self.targets("train"))
    x_val = property(lambda self: self.split("val")[0])
    y_val = property(lambda self: self.targets("val"))
    x_test = property(lambda self: self.split("test")[0])
    y_test = property(lambda self: self.targets("test"))


def has_samples(data, split: str = "test") -> bool:
    """Whether ``data`` (arrays or a stream) has samples in ``split``; a stream of unknown
    length is taken to have some."""
    from compress.data.arrays import length

    if isinstance(data, StreamDataset):
        return split in data.splits and data.size(split) != 0
    x = getattr(data, f"x_{split}", None)
    return x is not None and length(x) > 0


def iter_batches(data, split: str, batch_size: int = 256):
    """``(x, y)`` NumPy batches of a split of ``data`` (``y`` None unlabelled), in order:
    arrays are sliced, a stream is read batch by batch (never all of it at once).

    Example:

    >>> import numpy as np
    >>> from compress.data.arrays import Dataset
    >>> ds = Dataset("d", np.zeros((5, 2)), None, None, None, np.zeros((5, 2)), None, 0)
    >>> [len(x) for x, _ in iter_batches(ds, "test", 2)]
    [2, 2, 1]
    """
    if getattr(data, "streaming", False):
        for element in data.batches(split, batch_size).as_numpy_iterator():
            if data.labelled:
                yield element[0], element[1]
            else:
                yield element, None
        return
    x, y = data.split(split)
    for start in range(0, length(x), batch_size):
        def cut(a, start=start):
            return a[start:start + batch_size]
        yield map_structure(cut, x), map_structure(cut, y)


def _spec_leaves(spec):
    if isinstance(spec, dict):
        return [s for k in spec for s in _spec_leaves(spec[k])]
    if isinstance(spec, (list, tuple)):
        return [s for v in spec for s in _spec_leaves(v)]
    return [spec]


def _collect(ds, labelled: bool) -> tuple:
    """Arrays ``(x, y)`` of a dataset of single samples (``y`` None unlabelled)."""
    xs, ys = [], []
    for element in ds.as_numpy_iterator():
        if labelled:
            xs.append(element[0])
            ys.append(element[1])
        else:
            xs.append(element)
    if not xs:
        return None, None
    return _stack(xs), (_stack(ys) if labelled else None)


def _stack(items):
    first = items[0]
    if isinstance(first, dict):
        return {k: _stack([i[k] for i in items]) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(_stack([i[j] for i in items]) for j in range(len(first)))
    return np.stack(items)


