"""One door for every kind of data: :func:`as_dataset`, and streamed splits.

Every pass, the CLI, recipes and the Python API take their data through
:func:`as_dataset` (the passes call it first), which accepts:

- a :class:`~compress.data.arrays.Dataset` (arrays, three splits), or a dataset name
  (``digits``, ``npz:PATH``, ``PATH.npy``, ``PATH.csv``, an image folder:
  :func:`compress.data.load_data`);
- a ``tf.data.Dataset``, batched or not, of ``x``, ``(x, y)`` or ``(x, y, sample_weight)``;
- a ``keras.utils.PyDataset`` (batches of the same forms);
- NumPy arrays: ``x``, or an ``(x, y)`` tuple; ``x`` and ``y`` may be dicts or lists of
  arrays for a model with several inputs or outputs.

Arrays stay a :class:`~compress.data.arrays.Dataset`. Streams become a
:class:`StreamDataset`: training, calibration, saliency and evaluation read it batch by
batch (:meth:`StreamDataset.batches`, :meth:`StreamDataset.head`); a pass that still
needs arrays reads a split through the ``x_*``/``y_*`` attributes, which materialise
that split (once) and say so in ``notes``.

Without ``validation=`` the validation and test splits of a stream or of arrays are the
training data itself (reports then measure on the data the model was tuned on; give
``validation=`` for held-out numbers).

Example:

>>> import tensorflow as tf                                          # doctest: +SKIP
>>> ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)        # doctest: +SKIP
>>> pruned, info = compress.prune(model, ds, sparsity=0.8, epochs=2)  # doctest: +SKIP
>>> data = as_dataset((x, y), model, validation=(x_val, y_val))      # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses

import numpy as np

from compress.data.arrays import (
    SPLITS,
    Columns,
    Dataset,
    check_labels,
    check_targets,
    fit_to_model,
    leaves,
    length,
    map_structure,
    model_inputs,
)
from compress.data.streaming import CHECK_SAMPLES, StreamDataset, _spec_leaves
from compress.errors import CompressError


# --------------------------------------------------------------------------------------
def as_dataset(data, model=None, *, validation=None, name: str | None = None, seed: int = 0):
    """Turn any supported data into a Dataset or StreamDataset fitted to ``model``.

    Example:

    >>> data = as_dataset(tf_dataset, model)                 # doctest: +SKIP
    >>> data = as_dataset((x_train, y_train), model, validation=(x_val, y_val))  # doctest: +SKIP
    >>> data = as_dataset("images/", model)                  # an image folder   # doctest: +SKIP

    Args:
        data: see the module docstring; None gives None.
        model: keras.Model or None. The inputs are fitted to it and the targets checked
            against its outputs (one line on a mismatch).
        validation: the same kinds of data, or None: the validation and test splits.
        name: str or None. How messages name the data.
        seed: int, default 0. Split seed of named datasets.

    Raises:
        CompressError: an unsupported type, an empty dataset, inputs or targets that do
            not match the model.
    """
    if data is None:
        return None
    if isinstance(data, (Dataset, StreamDataset)) and validation is None:
        return prepare(model, data) if model is not None else data
    if isinstance(data, str):  # the Python API's path or name: its warnings are raised
        from compress.data.named import load_data

        ds = as_dataset(load_data(data, seed), model, validation=validation, name=name)
        _warn(ds)
        return ds
    from compress.data.folders import ImageFolder

    if isinstance(data, ImageFolder):
        return prepare(model, data) if model is not None else data
    name = name or _describe(data)
    train = _part(data, name)
    val = _part(validation, f"{name} (validation)") if validation is not None else train
    if train[0] == "arrays" and val[0] == "arrays":
        (_, (x, y)), (_, (xv, yv)) = train, val
        if length(x) == 0:
            raise CompressError(f"{name}: empty dataset (no samples)")
        if (y is None) != (yv is None):
            raise CompressError(f"{name}: the training data is {'un' if y is None else ''}"
                                "labelled but the validation data is not")
        ds = Dataset(name, x, y, xv, yv, xv, yv, _classes(y, yv))
    else:
        splits, labelled = {}, None
        for split, part in (("train", train), ("val", val)):
            make, count, is_labelled, batched = _to_stream(part, model)
            if labelled is not None and is_labelled != labelled:
                raise CompressError(f"{name}: the training data is "
                                    f"{'' if labelled else 'un'}labelled but the validation "
                                    "data is not")
            labelled = is_labelled
            splits[split] = (make, count, batched)
        splits["test"] = splits["val"]
        ds = StreamDataset(name, splits, labelled=labelled)
        first = ds.head("train", CHECK_SAMPLES)
        if length(first[0]) == 0:
            raise CompressError(f"{name}: empty dataset (no samples)")
        ds.num_classes = _classes(first[1], None)
    return prepare(model, ds) if model is not None else ds


def _warn(dataset) -> None:
    """Raise the dataset's warning notes as Python warnings (the CLI and recipes print
    every note; a Python caller who passed a path would otherwise see none)."""
    import warnings

    for note in getattr(dataset, "notes", None) or []:
        if note.startswith("warning: "):
            warnings.warn(note[len("warning: "):], UserWarning, stacklevel=3)


def _describe(data) -> str:
    kind = type(data).__name__
    return {"tuple": "arrays", "list": "arrays", "ndarray": "arrays"}.get(kind, kind)


def _part(data, name: str):
    """``("arrays", (x, y))`` or ``("tf", tf.data.Dataset)`` or ``("py", PyDataset)``."""
    if isinstance(data, Dataset):
        return "arrays", (data.x_train, data.y_train)
    if isinstance(data, StreamDataset):
        return "tf", data.source("train")  # its training split, in a fixed order
    if isinstance(data, np.ndarray) or _is_array_dict(data):
        return "arrays", (data, None)
    if isinstance(data, tuple) and 1 <= len(data) <= 3 and all(
            v is None or isinstance(v, (np.ndarray, list, dict)) for v in data):
        if len(data) == 3:
            raise CompressError(f"{name}: sample weights are taken from a tf.data.Dataset; "
                                "give arrays as (x, y)")
        x, y = data[0], data[1] if len(data) > 1 else None
        x = map_structure(np.asarray, x)
        y = map_structure(np.asarray, y)
        if y is not None and length(y) != length(x):
            raise CompressError(f"{name}: {length(x)} samples but {length(y)} targets")
        return "arrays", (x, y)
    kind = type(data)
    module = getattr(kind, "__module__", "") or ""
    if module.startswith("tensorflow") and hasattr(data, "element_spec"):
        return "tf", data
    try:
        import keras

        if isinstance(data, keras.utils.PyDataset):
            return "py", data
    except ImportError:  # pragma: no cover - keras is a dependency
        pass
    raise CompressError(f"{name}: unsupported data of type {kind.__name__} (give a "
                        "tf.data.Dataset, a keras.utils.PyDataset, NumPy arrays, an (x, y) "
                        "tuple, a dataset name or an image folder)")


def _is_array_dict(data) -> bool:
    return isinstance(data, dict) and bool(data) and all(
        isinstance(v, np.ndarray) for v in data.values())


def _to_stream(part, model):
    """``(make, count, labelled, batched)`` for a part given as arrays, a
    ``tf.data.Dataset`` or a PyDataset. A batched pipeline keeps its batches."""
    import tensorflow as tf

    kind, value = part
    if kind == "arrays":
        x, y = value
        if isinstance(x, Columns) and model is not None:  # a CSV table's columns
            x = x.for_model(model)
        count = length(x)

        def make(shuffle=False, x=x, y=y):
            return tf.data.Dataset.from_tensor_slices(x if y is None else (x, y))
        return make, count, y is not None, False
    if kind == "py":
        value = _from_pydataset(value)
    spec = value.element_spec
    labelled = isinstance(spec, tuple) and len(spec) in (2, 3)
    x_spec = spec[0] if labelled else spec
    batched = _is_batched(x_spec, model)
    n = int(value.cardinality())
    count = None if batched or n < 0 else n
    ds = _fit_stream(value, model, labelled, batched) if model is not None else value

    def make(shuffle=False, ds=ds):
        return ds
    return make, count, labelled, batched


def _is_batched(x_spec, model) -> bool:
    """Whether samples of spec ``x_spec`` carry a batch dimension, judged against the
    model's input rank (or, without a model, by a None leading dimension)."""
    first = _spec_leaves(x_spec)[0]
    want = None
    if model is not None and getattr(model, "inputs", None):
        name, shape, _ = model_inputs(model)[0]
        want = len(shape)
        if isinstance(x_spec, dict) and name in x_spec:  # judge by that input's own spec
            first = _spec_leaves(x_spec[name])[0]
    rank = first.shape.rank
    if want is not None:
        if rank == want + 1:
            return True
        if rank == want:
            return False
    return rank is not None and rank >= 1 and first.shape[0] is None


def _fit_stream(ds, model, labelled: bool, batched: bool):
    """Cast (and reshape, when the sizes agree) each sample of ``ds`` to the model's input."""
    import tensorflow as tf

    specs = model_inputs(model)
    element = ds.element_spec
    x_spec = element[0] if labelled else element
    if isinstance(x_spec, (dict, list, tuple)) or len(specs) != 1:
        return ds  # several inputs: given as the model takes them
    target, dtype = specs[0][1], specs[0][2] or "float32"
    have = tuple(x_spec.shape)[1:] if batched else tuple(x_spec.shape)
    if have != target and None not in have and None not in target and \
            int(np.prod(have)) != int(np.prod(target)):
        raise CompressError(f"data: samples of shape {have} ({int(np.prod(have))} values) do "
                            f"not fit model input {target} ({int(np.prod(target))} values)")
    reshape = have != target and None not in have and None not in target
    shape = ((-1,) if batched else ()) + tuple(target)

    def fit(x):
        return tf.cast(tf.reshape(x, shape) if reshape else x, dtype)
    if labelled:
        return ds.map(lambda *e: (fit(e[0]),) + tuple(e[1:]))
    return ds.map(fit)


def _from_pydataset(py):
    """A ``tf.data.Dataset`` of the batches of a ``keras.utils.PyDataset``, re-read each
    epoch (its ``__getitem__`` runs lazily)."""
    import tensorflow as tf

    n = len(py)
    if n == 0:
        raise CompressError(f"{type(py).__name__}: empty dataset (no batches)")
    first = py[0]

    def spec(a):
        a = np.asarray(a)
        return tf.TensorSpec((None,) + a.shape[1:], tf.as_dtype(a.dtype))

    signature = (tuple(map_structure(spec, v) for v in first) if isinstance(first, tuple)
                 else map_structure(spec, first))

    def generate():
        for i in range(len(py)):
            batch = py[i]
            yield tuple(batch) if isinstance(batch, (tuple, list)) else batch
        py.on_epoch_end()

    ds = tf.data.Dataset.from_generator(generate, output_signature=signature)
    return ds.apply(tf.data.experimental.assert_cardinality(n))


def _classes(y, y_val) -> int:
    """Number of classes implied by integer labels (0 for other targets or none)."""
    arrays = leaves(y) + leaves(y_val)
    if not arrays or any(isinstance(v, (dict, list, tuple)) for v in (y,)):
        return 0
    a = np.asarray(arrays[0])
    if a.ndim > 1 and a.shape[1:] != (1,):
        return 0
    whole = [np.asarray(v) for v in arrays]
    if not all(np.issubdtype(v.dtype, np.integer) or (
            np.issubdtype(v.dtype, np.floating) and np.all(v == np.round(v))) for v in whole):
        return 0
    top = max(int(v.max()) for v in whole if v.size)
    return top + 1 if top >= 0 else 0


# --------------------------------------------------------------------------------------
def prepare(model, dataset):
    """``dataset`` fitted to ``model``: inputs reshaped, targets checked, or refused.

    A :class:`~compress.data.arrays.Dataset` has every split reshaped (arrays); an
    :class:`~compress.data.folders.ImageFolder` becomes a :class:`StreamDataset` decoded
    at the model's input size; a :class:`StreamDataset`'s first samples are checked.

    Example:

    >>> ds = prepare(model, load_data("digits"))      # doctest: +SKIP
    """
    from compress.data.folders import ImageFolder

    if isinstance(dataset, ImageFolder):
        if dataset.labelled:
            _check_classes(model, dataset.num_classes, dataset.name)
        return dataset.stream(model)
    if isinstance(dataset, StreamDataset):
        dataset = _fit_stream_dataset(dataset, model)
        if dataset.labelled:
            y = dataset.head("train", CHECK_SAMPLES)[1]
            if _single_output_classes(model, y):
                _check_classes(model, max(dataset.num_classes, _classes(y, None)),
                               dataset.name)
            else:
                check_targets(model, y, dataset.name)
        return dataset
    if not isinstance(dataset, Dataset):
        return as_dataset(dataset, model)
    dataset = _regression_numbers(_class_numbers(dataset, model), model)
    if isinstance(dataset.x_train, Columns) and getattr(model, "inputs", None):  # a table
        dataset = dataclasses.replace(dataset, notes=[*dataset.notes, _table_note(dataset,
                                                                                 model)])
    if dataset.labelled:
        if _single_output_classes(model, dataset.y_train):
            _check_classes(model, dataset.num_classes, dataset.name)
        else:
            for split in SPLITS:
                check_targets(model, dataset.split(split)[1], f"{dataset.name} ({split})")
    dataset = _pixel_range(dataset, model)
    return dataclasses.replace(
        dataset,
        x_train=fit_to_model(dataset.x_train, model, dataset.name),
        x_val=fit_to_model(dataset.x_val, model, dataset.name),
        x_test=fit_to_model(dataset.x_test, model, dataset.name))


def _table_note(dataset: Dataset, model) -> str:
    """One line on a CSV table given to ``model``: rows, columns, labels, and how the
    columns reach the inputs (said once the data fits, so that a refusal stays one line).
    """
    x = dataset.x_train
    rows = sum(dataset.size(s) for s in SPLITS)
    kinds = f"{len(x.numeric)} number" + (f", {len(x.text)} text" if x.text else "")
    if not dataset.labelled:
        labels = "no labels (name the label column with --label-column)"
    elif dataset.num_classes:
        labels = f"class numbers 0 to {dataset.num_classes - 1}"
    else:
        labels = "regression targets"
    return (f"data {dataset.name}: {rows} rows; {len(x)} input column{'s' * (len(x) != 1)} "
            f"({kinds}); {labels}; {x.mapping(model)}")


def _regression_numbers(dataset: Dataset, model) -> Dataset:
    """``dataset`` with whole-number targets made float targets when ``model`` is a
    one-output regressor (its compiled loss, else its output: one linear unit...): a price
    in dollars or a count is a whole number that a file (a CSV above all) cannot mark as
    not a class number; the model can. Anything else is returned as it is.

    Example:

    >>> ds = _regression_numbers(load_data("houses.csv", label_column="price"), model)  # doctest: +SKIP
    >>> ds.num_classes, ds.y_train.dtype                                                 # doctest: +SKIP
    (0, dtype('float32'))
    """
    from compress import task

    if not dataset.labelled or dataset.num_classes == 0 or len(model.outputs) != 1 or \
            not isinstance(dataset.y_train, np.ndarray):
        return dataset
    try:  # the model's own task, without the targets (checked later, with their messages)
        if task.resolve(model).kind != task.REGRESSION:
            return dataset
    except CompressError:
        return dataset
    floats = {f"y_{s}": None if getattr(dataset, f"y_{s}") is None else
              np.asarray(getattr(dataset, f"y_{s}"), "float32") for s in SPLITS}
    return dataclasses.replace(dataset, num_classes=0, **floats)


def _class_numbers(dataset: Dataset, model) -> Dataset:
    """``dataset`` with one-hot label rows made class numbers (their argmax), said in a
    note, when ``model`` is a single-output classifier as wide as the rows (softmax or
    logits; per position too): ``keras.utils.to_categorical`` labels, as keras.io's MNIST
    convnet saves them. A sigmoid output's rows are multi-label targets and stay."""
    import dataclasses

    from compress.task import output_activation

    outputs = getattr(model, "outputs", None) or []
    if not dataset.labelled or len(outputs) != 1:
        return dataset
    shape = tuple(outputs[0].shape)
    if len(shape) < 2 or not shape[-1] or shape[-1] < 2 or output_activation(model) == "sigmoid":
        return dataset
    ys = [dataset.split(s)[1] for s in SPLITS]
    if not all(isinstance(y, np.ndarray) and y.ndim == len(shape) and y.shape[-1] == shape[-1]
               and _all_one_hot(y) for y in ys):
        return dataset
    note = (f"data {dataset.name}: labels are one-hot rows of {shape[-1]} classes: read as "
            "class numbers (their argmax)")
    return dataclasses.replace(
        dataset, num_classes=shape[-1], notes=[*dataset.notes, note],
        **{f"y_{s}": np.argmax(y, axis=-1).astype("int64") for s, y in zip(SPLITS, ys)})


def _all_one_hot(y: np.ndarray) -> bool:
    """Whether every row of ``y`` along its last axis is one-hot (a single 1, else 0)."""
    return bool(np.isin(y, (0, 1)).all()) and bool((y.sum(axis=-1) == 1).all())


def _pixel_range(dataset: Dataset, model) -> Dataset:
    """A named image dataset (pixels in [0, 1]) given in [0, 255] to a model that scales
    pixels itself (:func:`compress.data.folders.rescales_inside`) or takes integer pixels
    (:func:`~compress.data.folders.integer_input`), with a note; the user's own arrays
    are kept as they are, with a warning when they look like [0, 1] pixels for such a
    model (an integer input would cut them to 0)."""
    import dataclasses

    from compress.data.folders import integer_input, rescales_inside
    from compress.data.named import NAMES

    x = dataset.x_train
    if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.floating) or \
            x.size == 0 or float(np.max(x)) > 1.0 or float(np.min(x)) < 0.0:
        return dataset
    inside = rescales_inside(model)
    integer = integer_input(model)
    if not inside and not (integer and not np.all(x == np.round(x))):
        return dataset  # [0, 1] floats for a float model; 0/1 values for an integer one
    why = f"scales pixels itself ({inside})" if inside else f"takes {integer} pixels"
    if dataset.name in NAMES:
        note = f"data {dataset.name}: model '{model.name}' {why}: the images are given in [0, 255]"

        def scaled(a):
            a = a * np.float32(255)
            return np.round(a) if integer else a
        return dataclasses.replace(
            dataset, notes=[*dataset.notes, note],
            **{k: scaled(getattr(dataset, k)) for k in ("x_train", "x_val", "x_test")})
    effect = "cast to integers they become 0 or 1" if integer else "the scores may be wrong"
    note = (f"warning: data {dataset.name}: inputs are in [0, 1] but model '{model.name}' "
            f"{why}, which expects [0, 255]: {effect}")
    return dataclasses.replace(dataset, notes=[*dataset.notes, note])


def _fit_stream_dataset(dataset: StreamDataset, model) -> StreamDataset:
    """The stream with its samples reshaped to the model's input when they differ (a
    stream made without the model); refused in one line when the sizes differ."""
    specs = model_inputs(model)
    if len(specs) != 1 or None in specs[0][1]:
        return dataset
    shape = dataset.sample_shape
    if shape == specs[0][1] or isinstance(dataset.element_spec, dict):
        return dataset
    splits = {k: ((lambda shuffle, m=make, b=batched:
                   _fit_stream(m(shuffle), model, dataset.labelled, b)), count, batched)
              for k, (make, count, batched) in dataset.splits.items()}
    _fit_stream(dataset.splits["train"][0](False), model, dataset.labelled,
                dataset.splits["train"][2])  # refuses a size mismatch now, not mid-fit
    return StreamDataset(dataset.name, splits, dataset.num_classes, dataset.labelled,
                         dataset.notes, dataset._labels)


def _single_output_classes(model, y) -> bool:
    """Whether ``y`` are integer class labels for a single-output model (the classic
    case, checked by :func:`check_labels` with its messages)."""
    if len(model.outputs) != 1 or isinstance(y, (dict, list, tuple)) or y is None:
        return len(model.outputs) == 1 and not isinstance(y, (dict, list, tuple))
    a = np.asarray(y)
    return a.ndim == 1 or a.shape[1:] == (1,)


def _check_classes(model, num_classes: int, name: str) -> None:
    check_labels(model, num_classes, name)
