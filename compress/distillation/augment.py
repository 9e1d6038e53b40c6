"""Augmented training batches for consistent teaching (Beyer et al. 2022).

``keras.distillation.Distiller`` runs the teacher inside its train step on the very batch
the student trains on. Feeding it randomly shifted images therefore gives "consistent
teaching" (function matching): teacher and student see the same view, and every epoch
brings new views, so the small transfer set acts like a much larger one. The same batches
train a student alone on hard labels, the fair baseline for it.

Example:

>>> from compress.distillation.augment import augmented_batches
>>> batches = augmented_batches(ds, None, "shift", shift=2,  # doctest: +SKIP
...                             batch_size=128, seed=0)
"""

from __future__ import annotations

import numpy as np

from compress.distillation.options import DISTILL_OPTIONS
from compress.errors import CompressError


def check_augment(augment: str, shift: int, input_shape) -> None:
    """Refuse an augmentation the inputs cannot take, before any training.

    Args:
        augment: str. ``"none"`` or ``"shift"``.
        shift: int. Largest shift in pixels (>= 1).
        input_shape: tuple. One sample's shape, without the batch axis.

    Raises:
        CompressError: an unknown augmentation, a shift below 1, or ``"shift"`` on inputs
            that are not images (``(H, W)`` or ``(H, W, C)``), or images not larger than
            the shift.
    """
    augment = DISTILL_OPTIONS.options["augment"].check(augment, "augment")
    if augment == "none":
        return
    shift = DISTILL_OPTIONS.options["shift"].check(shift, "shift")
    shape = tuple(input_shape)
    if len(shape) not in (2, 3) or any(d is None for d in shape[:2]):
        raise CompressError(f"augment 'shift' needs image inputs (H, W) or (H, W, C); the "
                            f"model takes {shape}")
    if min(shape[:2]) <= int(shift):
        raise CompressError(f"shift {shift}: images of {shape[0]}x{shape[1]} pixels are too "
                            "small for it")


def augmented_batches(x, y=None, augment: str = "shift", shift: int = 2,
                      batch_size: int = 64, seed: int | None = None):
    """A ``tf.data.Dataset`` of shuffled ``(x, y)`` (or ``x``) batches, each image randomly
    shifted.

    Each image moves by a whole number of pixels drawn uniformly in ``[-shift, shift]`` on
    each axis, the uncovered border filled with zeros (Hinton et al.'s "jitter"). New
    shifts and a new order are drawn every epoch; with a ``seed`` the sequence repeats
    from run to run. The shift is a ``tf.data`` map: given a
    :class:`compress.data.Dataset` or a streamed one, its training split is read batch by
    batch (a stream is never held in memory; its order is its own).

    Example:

    >>> batches = augmented_batches(data, None, "shift", shift=2, batch_size=128)  # doctest: +SKIP
    >>> batches = augmented_batches(x, y, "shift", shift=2, batch_size=128)  # doctest: +SKIP
    >>> model.fit(batches, epochs=10)                                         # doctest: +SKIP

    Args:
        x: np.ndarray of images, ``(N, H, W)`` or ``(N, H, W, C)``; or a
            :class:`compress.data.Dataset` / streamed dataset (then ``y`` is not given:
            its training split's targets, or none when it has no labels).
        y: np.ndarray or None. Labels, ``(N, ...)``; None for images only.
        augment: str, default ``"shift"``. ``"shift"``, or ``"none"`` for plain shuffled
            batches.
        shift: int, default 2. Largest shift in pixels.
        batch_size: int, default 64.
        seed: int, default None. Seeds the order and the shifts (None: TensorFlow's
            global seed, see ``compress.training.set_seed``).

    Raises:
        CompressError: see :func:`check_augment`.
    """
    import tensorflow as tf

    if hasattr(x, "batches"):  # a compress dataset: its training split, streamed
        data = x
        check_augment(augment, shift, data.sample_shape)
        samples = data.batches("train", batch_size, shuffle=True, seed=seed).unbatch()
        labelled = data.labelled
        shape = tuple(data.sample_shape)
        count = None if getattr(data, "streaming", True) else data.size("train")
    else:
        check_augment(augment, shift, np.shape(x)[1:])
        x = np.asarray(x, dtype="float32")
        samples = tf.data.Dataset.from_tensor_slices(x if y is None else (x, y)).shuffle(
            len(x), seed=seed, reshuffle_each_iteration=True)
        labelled = y is not None
        shape = tuple(x.shape[1:])
        count = len(x)
    if augment == "shift":
        p = int(shift)
        pad = [[p, p], [p, p]] + [[0, 0]] * (len(shape) - 2)
        size = tf.constant(shape, dtype=tf.int32)

        def move(image, crop_seed):
            padded = tf.pad(tf.cast(image, "float32"), pad)
            return tf.image.stateless_random_crop(padded, size, seed=crop_seed)

        def shifted(element, crop_seed):
            if labelled:
                return (move(element[0], crop_seed),) + tuple(element[1:])
            return move(element, crop_seed)

        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        samples = tf.data.Dataset.zip((samples, seeds)).map(
            shifted, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    batches = samples.batch(batch_size)
    if count:  # in memory: a known number of batches. Keras takes the end of a first epoch
        # of unknown length for an interruption ("Your input ran out of data"), a false alarm
        batches = batches.apply(tf.data.experimental.assert_cardinality(-(-count // batch_size)))
    return batches.prefetch(tf.data.AUTOTUNE)
