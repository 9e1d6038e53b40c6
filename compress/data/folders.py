"""Image folders: listed and checked without TensorFlow, then streamed with ``tf.data``.

Layout, as ``keras.utils.image_dataset_from_directory`` reads it: one sub-folder per
class (labels are the sub-folders in sorted order), or a flat folder of images (no labels).
Files ending in .png, .jpg, .jpeg, .bmp or .gif are images; every one is opened with
Pillow when the folder is listed (its header and, for PNG, its checksums), and those that
cannot be read are skipped and counted in one note. Images of any size are resized to the
model's input (bilinear); grey or colour images are decoded with the model's number of
channels.

:func:`scan` lists the files (no TensorFlow import, so a bad folder is refused at once);
:meth:`ImageFolder.stream` gives a :class:`compress.data.streaming.StreamDataset` for a model:
decoding, resizing and preprocessing run in a ``tf.data`` pipeline (parallel map,
prefetch), batch by batch, so the images never need to fit in memory.

Example:

>>> from compress.data.folders import scan
>>> folder = scan("photos/", preprocess="mobilenet_v2", val_split=0.2)   # doctest: +SKIP
>>> folder.class_names                                                   # doctest: +SKIP
['cats', 'dogs']
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from compress.errors import CompressError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")

# Preprocessing by name. Each maps float RGB (or grey) pixels in [0, 255] to the model's
# input range. The keras.applications families use the mode of their preprocess_input.
MODES = {
    "scale01": "[0, 1] (pixels / 255)",
    "tf": "[-1, 1] (pixels / 127.5 - 1)",
    "caffe": "BGR, ImageNet channel means subtracted",
    "torch": "[0, 1], then ImageNet mean and standard deviation per channel",
    "raw": "[0, 255] unchanged (models that rescale inside)",
}
FAMILIES = {
    "mobilenet": "tf", "mobilenet_v2": "tf", "inception_v3": "tf",
    "inception_resnet_v2": "tf", "xception": "tf", "nasnet": "tf", "resnet_v2": "tf",
    "resnet": "caffe", "resnet50": "caffe", "vgg16": "caffe", "vgg19": "caffe",
    "densenet": "torch",
    "efficientnet": "raw", "efficientnet_v2": "raw", "convnext": "raw",
    "mobilenet_v3": "raw",
}
PREPROCESSING = tuple(MODES) + tuple(FAMILIES)
DEFAULT_PREPROCESS = "scale01"
DEFAULT_VAL_SPLIT = 0.1


def preprocess_mode(name: str | None) -> str:
    """The mode (``scale01``, ``tf``, ``caffe``, ``torch``, ``raw``) of a preprocessing name.

    >>> preprocess_mode("resnet50"), preprocess_mode(None)
    ('caffe', 'scale01')
    """
    name = DEFAULT_PREPROCESS if name is None else name
    if name in MODES:
        return name
    if name in FAMILIES:
        return FAMILIES[name]
    raise CompressError(f"--preprocess '{name}': unknown (use one of "
                        f"{', '.join(PREPROCESSING)})")


_CAFFE_MEAN = np.array([103.939, 116.779, 123.68], "float32")  # BGR
_TORCH_MEAN = np.array([0.485, 0.456, 0.406], "float32")
_TORCH_STD = np.array([0.229, 0.224, 0.225], "float32")


def _preprocess(x, mode: str, flip_channels):
    """One preprocessing mode on float pixels in [0, 255], channels last; the arithmetic
    works on NumPy arrays and TensorFlow tensors alike (``flip_channels`` reverses the
    last axis in the array's own library)."""
    if mode == "scale01":
        return x / 255.0
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "raw":
        return x
    if mode == "caffe":
        return flip_channels(x) - _CAFFE_MEAN
    return (x / 255.0 - _TORCH_MEAN) / _TORCH_STD


def preprocess_numpy(x: np.ndarray, mode: str) -> np.ndarray:
    """Apply a preprocessing mode to float pixels in [0, 255], channels last (NumPy)."""
    x = np.asarray(x, dtype="float32")
    if mode not in ("scale01", "tf", "raw") and x.shape[-1] != 3:
        raise CompressError(f"--preprocess {mode}: needs colour (3-channel) images; the model "
                            f"takes {x.shape[-1]} channel(s)")
    return _preprocess(x, mode, lambda a: a[..., ::-1])


def _preprocess_tf(x, mode: str):
    import tensorflow as tf

    return _preprocess(x, mode, lambda t: tf.reverse(t, axis=[-1]))


@dataclasses.dataclass
class ImageFolder:
    """The checked file list of an image folder (and its validation part); nothing decoded.

    ``labels`` are class indices (None for a flat folder); ``val_*`` the validation files,
    from ``val_data`` or split off with ``val_split``. The test split is the validation
    split (reports measure on it). ``sample_shape`` is the first image's ``(H, W, C)``.
    """

    name: str
    train_files: list
    train_labels: list | None
    val_files: list
    val_labels: list | None
    class_names: list
    preprocess: str
    sample_shape: tuple
    skipped: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)

    streaming = True

    @property
    def labelled(self) -> bool:
        return self.train_labels is not None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def count(self) -> int:
        return len(self.train_files)

    def take(self, n_train: int | None = None, n_test: int | None = None,
             seed: int = 0) -> ImageFolder:
        """A smaller copy, for quick runs and tests: ``n`` files of each split drawn at
        random (seeded), kept in their order. The lists are in class order, so their first
        files were all of the first class: a recipe's ``subset`` trained on one class."""
        def pick(n, count):
            if n is None or n >= count:
                return None
            return np.sort(np.random.default_rng(seed).permutation(count)[:n])

        def cut(a, chosen):
            return a if a is None or chosen is None else [a[i] for i in chosen]

        train = pick(n_train, len(self.train_files))
        val = pick(n_test, len(self.val_files))
        return dataclasses.replace(
            self, train_files=cut(self.train_files, train),
            train_labels=cut(self.train_labels, train),
            val_files=cut(self.val_files, val), val_labels=cut(self.val_labels, val))

    def image_shape(self, model) -> tuple:
        """``(H, W, C)`` the images are decoded to for ``model`` (its input), or refused."""
        shape = tuple(model.inputs[0].shape[1:])
        if len(model.inputs) != 1:
            raise CompressError(f"{self.name}: an image folder feeds one input; model "
                                f"'{model.name}' has {len(model.inputs)}")
        if len(shape) == 3 and shape[-1] in (1, 3):
            h, w, c = shape
            return (h or self.sample_shape[0], w or self.sample_shape[1], c)
        if len(shape) == 2 and None not in shape:  # (H, W): grey images
            return (shape[0], shape[1], 1)
        if len(shape) == 1 and shape[0] is not None:  # a flat input: square grey images
            side = round(shape[0] ** 0.5)
            if side * side == shape[0]:
                return (side, side, 1)
        raise CompressError(f"{self.name}: model '{model.name}' input {shape} is not an image "
                            "(height, width, 1 or 3 channels); an image folder cannot feed it")

    def stream(self, model, seed: int = 0):
        """A :class:`~compress.data.streaming.StreamDataset` decoding the images for ``model``.

        Without ``--preprocess``, a model that scales pixels itself (a ``Rescaling`` or an
        ``Normalization`` to pixel statistics before its first trained layer, as in the
        keras.io image classification examples and EfficientNet) gets them in [0, 255]
        (``raw``), said in a note; any other model gets [0, 1] (``scale01``).
        """
        import tensorflow as tf

        from compress.data.streaming import StreamDataset

        h, w, c = self.image_shape(model)
        notes = list(self.notes)
        preprocess = self.preprocess
        if preprocess is None:
            inside = rescales_inside(model)
            integer = integer_input(model)
            preprocess = "raw" if inside or integer else DEFAULT_PREPROCESS
            if inside or integer:
                why = f"scales pixels itself ({inside})" if inside else \
                    f"takes {integer} pixels"
                notes.append(f"data {self.name}: model '{model.name}' {why}: images are "
                             "given in [0, 255] (--preprocess raw); pass --preprocess to "
                             "choose")
        units = _class_units(model)
        if self.labelled and units and units > self.num_classes:
            shown = ", ".join(self.class_names[:3]) + (", ..." if self.num_classes > 3
                                                       else "")
            notes.append(f"warning: data {self.name}: {self.num_classes} class folder"
                         f"{'s' if self.num_classes > 1 else ''} ({shown}) for model "
                         f"'{model.name}''s {units} classes: a folder's label is its "
                         "position in sorted order, so if a class folder is missing the "
                         "labels after it are wrong; add it (empty is fine)")
        mode = preprocess_mode(preprocess)
        if mode in ("caffe", "torch") and c != 3:
            raise CompressError(f"--preprocess {preprocess}: needs colour (3-channel) "
                                f"images; model '{model.name}' takes {c} channel(s)")
        target = tuple(model.inputs[0].shape[1:])
        target = tuple(d if d is not None else s for d, s in zip(target, (h, w, c)))
        dtype = model.inputs[0].dtype or "float32"

        def decode(path):
            image = tf.io.decode_image(tf.io.read_file(path), channels=c,
                                       expand_animations=False)
            image = tf.cast(image, tf.float32)
            same = tf.reduce_all(tf.shape(image)[:2] == tf.constant([h, w]))
            image = tf.cond(same, lambda: image, lambda: tf.image.resize(image, (h, w)))
            image = _preprocess_tf(image, mode)
            if not tf.as_dtype(dtype).is_floating:  # resized pixels: round, not truncate
                image = tf.round(image)
            return tf.cast(tf.reshape(image, target), dtype)

        def source(files, labels):
            def make(shuffle_now=False):
                paths = tf.constant([str(f) for f in files])
                ds = (tf.data.Dataset.from_tensor_slices(paths) if labels is None else
                      tf.data.Dataset.from_tensor_slices((paths, tf.constant(labels, "int64"))))
                if shuffle_now:  # file names only: shuffling costs no image memory
                    ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
                if labels is None:
                    return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
                return ds.map(lambda p, y: (decode(p), y), num_parallel_calls=tf.data.AUTOTUNE)
            return make

        splits = {"train": (source(self.train_files, self.train_labels), len(self.train_files)),
                  "val": (source(self.val_files, self.val_labels), len(self.val_files))}
        splits["test"] = splits["val"]
        labels = None if not self.labelled else {
            "train": np.asarray(self.train_labels, "int64"),
            "val": np.asarray(self.val_labels, "int64"),
            "test": np.asarray(self.val_labels, "int64")}
        return StreamDataset(self.name, splits, num_classes=self.num_classes,
                             labelled=self.labelled, notes=notes, labels=labels)


def scan(path: str, seed: int = 0, preprocess: str | None = None, val_data: str | None = None,
         val_split: float | None = None) -> ImageFolder:
    """List and check an image folder (and its validation folder or split); no decoding.

    Raises:
        CompressError: no such folder, no image in it, no readable image, images both at
            the top and in class folders, an unknown ``preprocess``, a bad ``val_split``.
    """
    preprocess_mode(preprocess)  # an unknown name is refused before any file is read
    if val_data is not None and val_split is not None:
        raise CompressError("--val-data and --val-split both give the validation images; "
                            "choose one")
    if val_split is not None and not 0.0 < val_split < 1.0:
        raise CompressError(f"--val-split {val_split:g}: must be between 0 and 1 (exclusive)")
    files, labels, classes, skipped, first = _list(Path(path))
    # before any split: a class whose images all went to validation is not empty
    notes = _class_notes(path, classes, labels) if labels is not None else []
    if val_data is not None:
        v_files, v_labels, v_classes, v_skipped, _ = _list(Path(val_data))
        if (v_labels is None) != (labels is None):
            raise CompressError(f"{val_data}: the validation folder is "
                                f"{'flat (no labels)' if v_labels is None else 'in class folders'}"
                                f" but {path} is {'flat' if labels is None else 'not'}")
        if labels is not None and v_classes != classes:
            extra = sorted(set(v_classes) - set(classes))
            if extra:
                raise CompressError(f"{val_data}: class folder '{extra[0]}' is not a class of "
                                    f"{path} (classes: {', '.join(classes)})")
            v_labels = [classes.index(v_classes[i]) for i in v_labels]
        # the same folder given twice (--val-data DIR for DIR) lists its bad files once
        seen = {os.path.realpath(str(f)) for f in skipped}
        skipped += [f for f in v_skipped if os.path.realpath(str(f)) not in seen]
    else:
        fraction = DEFAULT_VAL_SPLIT if val_split is None else val_split
        order = np.random.default_rng(seed).permutation(len(files))
        n_val = max(1, round(len(files) * fraction))
        if len(files) - n_val < 1:
            raise CompressError(
                f"{path}: only {len(files)} readable image(s); need at least 2 to hold some "
                "out for validation (or give --val-data)" if len(files) < 2 else
                f"{path}: --val-split {fraction:g} holds out all {len(files)} images and "
                "leaves none to train on; give a smaller fraction")
        val_idx, train_idx = sorted(order[:n_val]), sorted(order[n_val:])
        v_files = [files[i] for i in val_idx]
        v_labels = None if labels is None else [labels[i] for i in val_idx]
        files = [files[i] for i in train_idx]
        labels = None if labels is None else [labels[i] for i in train_idx]
    if skipped:
        # named from the folder given (apple/0.jpg): two classes may both hold a bad 0.jpg
        shown = ", ".join(_relative(s, path, val_data) for s in skipped[:3])
        more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        notes.append(f"data {path}: skipped {len(skipped)} unreadable image file"
                     f"{'s' if len(skipped) > 1 else ''} ({shown}{more})")
    return ImageFolder(str(path), files, labels, v_files, v_labels, classes,
                       preprocess, first, skipped, notes)


def _relative(file, path, val_data) -> str:
    """``file`` named from the folder it was found in (``apple/0.jpg``), else its path."""
    for root in (path, val_data):
        if root is None:
            continue
        try:
            return str(Path(file).relative_to(Path(root)))
        except ValueError:
            continue
    return str(file)


def _class_notes(path, classes: list, labels: list) -> list:
    """What a user must know about how the class folders became labels: empty folders
    (a class without images keeps its label), and numbered folders whose sorted order is
    not their numeric order (Keras's order: '10' is label 2 of 0..10)."""
    notes = []
    present = set(labels)
    empty = [f"'{c}' (label {i})" for i, c in enumerate(classes) if i not in present]
    if empty:
        many = len(empty) > 1
        notes.append(f"data {path}: class folder{'s' if many else ''} "
                     f"{', '.join(empty[:3])}{' ...' if len(empty) > 3 else ''} "
                     f"hold{'' if many else 's'} no image; kept as "
                     f"{'classes' if many else 'a class'} so that the labels after "
                     f"{'them' if many else 'it'} stay in place")
    if all(c.isdigit() for c in classes) and classes != sorted(classes, key=int):
        moved = next(c for i, c in enumerate(classes) if int(c) != i)
        notes.append(f"data {path}: the class folders are numbers, and labels follow their "
                     f"names in sorted order, as Keras's image_dataset_from_directory "
                     f"gives them: folder '{moved}' is label {classes.index(moved)}")
    return notes


def integer_input(model) -> str | None:
    """The integer dtype of ``model``'s single image input (``uint8`` pixels, as TFLite
    and many exported models take them), else None: such a model is given [0, 255]
    pixels, since [0, 1] values cast to an integer become 0 (or 1).

    >>> import keras
    >>> integer_input(keras.Sequential([keras.Input((8, 8, 3), dtype="uint8"),
    ...                                 keras.layers.Rescaling(1 / 255)]))
    'uint8'
    """
    inputs = getattr(model, "inputs", None) or []
    if len(inputs) != 1 or len(inputs[0].shape) not in (3, 4):
        return None
    dtype = str(getattr(inputs[0], "dtype", None) or "float32")
    return dtype if dtype.startswith(("uint", "int")) else None


def rescales_inside(model) -> str | None:
    """How ``model`` scales [0, 255] pixels itself before its first trained layer: a
    ``Rescaling`` by at most 1/100, or a ``Normalization`` whose means are pixel-sized
    (above 2); None when it does not (it then expects inputs already scaled).

    >>> import keras
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Rescaling(1 / 255),
    ...                       keras.layers.Conv2D(4, 3)])
    >>> rescales_inside(m)
    'Rescaling 0.003922'
    >>> rescales_inside(keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3)]))
    """
    from compress.models import _leaves

    for layer in _leaves(model):
        kind = type(layer).__name__
        if kind == "Rescaling":
            scale = float(np.max(np.abs(np.asarray(layer.scale, "float64"))))
            return f"Rescaling {scale:.4g}" if scale <= 0.01 else None
        if kind == "Normalization" and getattr(layer, "mean", None) is not None:
            mean = float(np.max(np.abs(np.asarray(layer.mean, "float64"))))
            return f"Normalization, mean up to {mean:.4g}" if mean > 2 else None
        if layer.trainable_weights:
            return None
    return None


def _class_units(model) -> int | None:
    """The width of ``model``'s single class-vector output ``(batch, classes)`` with more
    than one class, else None (a one-unit binary head holds 2 classes: nothing to warn)."""
    outputs = getattr(model, "outputs", None) or []
    if len(outputs) != 1:
        return None
    shape = tuple(outputs[0].shape)
    return shape[-1] if len(shape) == 2 and shape[-1] and shape[-1] > 1 else None


def _list(root: Path):
    """``(files, labels or None, class names, skipped files, first image's (H, W, C))``."""
    if not root.exists():
        raise CompressError(f"{root}: no such folder")
    if not root.is_dir():
        raise CompressError(f"{root}: not a folder")
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise CompressError(f"{root}: cannot read the folder ({exc.strerror})") from None
    top = [Path(e.path) for e in entries if e.is_file() and _is_image_name(e.name)]
    subdirs = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
    # Every sub-folder is a class, an empty one too, as in Keras's
    # image_dataset_from_directory: a label is the folder's position in sorted order, so
    # an empty folder keeps the labels of the classes after it where they belong.
    per_class = {}
    for d in subdirs:
        per_class[d.name] = sorted(p for p in Path(d.path).rglob("*")
                                   if _is_image_name(p.name) and p.is_file())
    if top and any(per_class.values()):
        raise CompressError(f"{root}: has images at its top and in class folders "
                            f"({', '.join(c for c in per_class if per_class[c])[:60]}); use "
                            "one layout (class folders = labelled, a flat folder = unlabelled)")
    if not top and not any(per_class.values()):
        raise CompressError(f"{root}: no images (files ending in {', '.join(IMAGE_SUFFIXES)}) "
                            "in it or in its class folders")
    classes = sorted(per_class)
    candidates = [(p, None) for p in top] if top else [
        (p, i) for i, c in enumerate(classes) for p in per_class[c]]
    files, labels, skipped, first = [], [], [], None
    for p, label in candidates:
        shape = _image_shape(p)
        if shape is None:
            skipped.append(p)
            continue
        first = first or shape
        files.append(str(p))
        labels.append(label)
    if not files:
        raise CompressError(f"{root}: none of its {len(candidates)} image files could be read")
    if top:
        return files, None, [], skipped, first
    present = set(labels)
    unreadable = [c for i, c in enumerate(classes) if i not in present and per_class[c]]
    if unreadable:
        raise CompressError(f"{root}: class folder '{unreadable[0]}' has no readable image")
    return files, labels, classes, skipped, first


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def _jpeg_ends(path: Path) -> bool:
    """Whether a JPEG file has its end-of-image marker (FFD9) near its end: a truncated
    file (a download cut short) has not, and TensorFlow's decoder stops the whole stream
    on it. Reading the tail costs one seek, not a decode."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 64))
            return b"\xff\xd9" in f.read()
    except OSError:
        return False


def _image_shape(path: Path) -> tuple | None:
    """``(H, W, C)`` of a readable image, None when Pillow cannot read it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            size, mode, kind = image.size, image.mode, image.format
            image.verify()  # PNG: chunk checksums; catches truncated and damaged files
    except Exception:  # noqa: BLE001 - any failure means: not a readable image
        return None
    if kind == "JPEG" and not _jpeg_ends(path):
        return None  # verify() does not decode JPEG data: TensorFlow's decoder then failed
    channels = 1 if mode in ("L", "1", "I", "I;16", "F") else 3
    return (size[1], size[0], channels)
