"""In-memory data: :class:`Dataset` (arrays split three ways) and fitting it to a model.

Inputs may be one array, or a dict / list of arrays for a model with several inputs;
targets likewise one array, a dict / list for several outputs, or None (unlabelled data).

Example:

>>> import numpy as np
>>> ds = Dataset("mine", np.zeros((8, 4)), np.zeros(8, int), np.zeros((2, 4)),
...              np.zeros(2, int), np.zeros((2, 4)), np.zeros(2, int), num_classes=3)
>>> ds.head("train", 3)[0].shape, ds.labelled
((3, 4), True)
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from compress.errors import CompressError

SPLITS = ("train", "val", "test")


def map_structure(fn, value):
    """``fn`` applied to every array of ``value`` (an array, a dict, a list/tuple, or None)."""
    if value is None:
        return None
    if isinstance(value, dict):
        out = {k: map_structure(fn, v) for k, v in value.items()}
        return value.copy_with(out) if isinstance(value, Columns) else out
    if isinstance(value, (list, tuple)):
        return type(value)(map_structure(fn, v) for v in value)
    return fn(value)


def leaves(value) -> list:
    """The arrays of ``value`` in order (dict values in key order)."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [a for k in value for a in leaves(value[k])]
    if isinstance(value, (list, tuple)):
        return [a for v in value for a in leaves(v)]
    return [value]


def length(value) -> int:
    """Number of samples of ``value`` (its first array's length; 0 for None)."""
    arrays = leaves(value)
    return len(arrays[0]) if arrays else 0


@dataclasses.dataclass
class Dataset:
    """Arrays of one dataset, split three ways, in memory.

    ``x_*`` are arrays (or dicts / lists of arrays for several inputs); ``y_*`` are integer
    class labels (or targets shaped like the model's output; dicts / lists for several
    outputs), or None when the data has no labels. ``num_classes`` is 0 without labels.
    """

    name: str
    x_train: object
    y_train: object
    x_val: object
    y_val: object
    x_test: object
    y_test: object
    num_classes: int
    notes: list = dataclasses.field(default_factory=list)  # one-line remarks for the user

    streaming = False  # the splits are arrays (see compress.data.streams.StreamDataset)

    @property
    def labelled(self) -> bool:
        return self.y_train is not None

    @property
    def sample_shape(self) -> tuple:
        """Shape of one sample of the (first) input; a table's: ``(number of columns,)``."""
        if isinstance(self.x_train, Columns):
            return (len(self.x_train),)
        return tuple(leaves(self.x_train)[0].shape[1:])

    def split(self, name: str) -> tuple:
        """Return ``(x, y)`` for ``train``, ``val`` or ``test`` (``y`` None if unlabelled)."""
        if name not in SPLITS:
            raise CompressError(f"split '{name}': must be train, val or test")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def size(self, name: str) -> int:
        """Number of samples in a split."""
        return length(self.split(name)[0])

    def head(self, name: str, n: int | None) -> tuple:
        """``(x, y)``: the first ``n`` samples of a split (all of it for None)."""
        x, y = self.split(name)
        cut = (lambda a: a) if n is None else (lambda a: a[:n])
        return map_structure(cut, x), map_structure(cut, y)

    def take(self, n_train: int | None = None, n_test: int | None = None) -> Dataset:
        """A smaller copy (the first ``n`` samples of each split, or ``n`` drawn at random
        where the first ones would miss most classes: :meth:`spread`), for quick runs,
        tests and a recipe's ``subset``."""
        n_val = None if n_train is None else max(1, n_train // 9)
        (xt, yt), (xv, yv), (xs, ys) = (self.spread("train", n_train),
                                        self.spread("val", n_val), self.spread("test", n_test))
        return dataclasses.replace(self, x_train=xt, y_train=yt, x_val=xv, y_val=yv,
                                   x_test=xs, y_test=ys, notes=list(self.notes))

    def spread(self, name: str, n: int | None) -> tuple:
        """``(x, y)`` of ``n`` samples of a split for calibration (quantization, OBS/OBD,
        BatchNorm statistics) and smaller copies: its first ``n`` (:meth:`head`), unless
        those hold under half of the split's classes (arrays stored class by class: the
        first 256 of 1,000 per class are all of one), then ``n`` drawn at random, seeded,
        in their order, and a note says so.

        >>> ds = Dataset("d", np.zeros((30, 2)), np.repeat(np.arange(3), 10), None, None,
        ...              None, None, 3)
        >>> set(ds.head("train", 9)[1].tolist()), set(ds.spread("train", 9)[1].tolist())
        ({0}, {0, 1, 2})
        """
        chosen = self._drawn(name, n)
        if chosen is None:
            return self.head(name, n)
        x, y = self.split(name)
        note = (f"data {self.name}: the first samples of its {name} split hold few of its "
                "classes (stored class by class); samples for calibration and smaller "
                "copies are drawn at random (seeded)")
        if note not in self.notes:
            self.notes.append(note)
        return map_structure(lambda a: a[chosen], x), map_structure(lambda a: a[chosen], y)

    def _drawn(self, name: str, n: int | None, seed: int = 0):
        """Sorted indices of ``n`` samples drawn at random when the split's first ``n``
        hold under half of its classes (integer labels); None when the head will do."""
        x, y = self.split(name)
        if n is None or y is None or isinstance(y, (dict, list, tuple)) or n >= length(x):
            return None
        y = np.asarray(y)
        if y.dtype.kind not in "iu" or (y.ndim > 1 and int(np.prod(y.shape[1:])) != 1):
            return None
        classes, first = np.unique(y).size, np.unique(y[:n]).size
        if classes < 2 or first >= min(classes, n) / 2:
            return None
        return np.sort(np.random.default_rng(seed).permutation(length(x))[:n])

    def representative(self, n: int = 256):
        """``n`` training samples (:meth:`spread`): calibration data for quantization."""
        return self.spread("train", n)[0]

    def batches(self, name: str, batch_size: int = 64, shuffle: bool = False, seed: int = 0):
        """A ``tf.data.Dataset`` of ``(x, y)`` (or ``x``) batches of a split."""
        import tensorflow as tf

        x, y = self.split(name)
        ds = tf.data.Dataset.from_tensor_slices(x if y is None else (x, y))
        if shuffle:
            ds = ds.shuffle(length(x), seed=seed, reshuffle_each_iteration=True)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    def fit_args(self, batch_size: int = 64, validation: bool = True) -> dict:
        """Keyword arguments of :func:`compress.training.fit_model` for the train split
        (``x``, ``y``, ``batch_size``, ``validation_data``)."""
        has_val = validation and self.size("val") > 0
        return {"x": self.x_train, "y": self.y_train, "batch_size": batch_size,
                "validation_data": ((self.x_val, self.y_val) if self.y_val is not None
                                    else self.x_val) if has_val else None}


class Columns(dict):
    """The input columns of a table (a CSV file): ``{column name: 1-D str array}`` in the
    file's order, the text of each cell as read, with ``numeric`` the names of the columns
    whose every cell is a number. :func:`fit_to_model` gives them to a model as
    :meth:`for_model` says, converting each cell for the input it goes to: a number
    column stays text for a string input (a zip code keeps its leading zero).

    Example:

    >>> cols = Columns(age=np.array(["31", "45"]), city=np.array(["oslo", "rome"]),
    ...                numeric=["age"])
    >>> cols.numeric, cols.text
    (['age'], ['city'])
    >>> cols.numbers("age")
    array([31., 45.])
    """

    def __init__(self, *args, numeric=(), **columns):
        super().__init__(*args, **columns)
        self.numeric = [k for k in self if k in set(numeric)]

    @property
    def text(self) -> list:
        return [k for k in self if k not in self.numeric]

    def copy_with(self, columns: dict) -> Columns:
        """The same kind of table holding ``columns`` (a split's rows)."""
        return Columns(columns, numeric=self.numeric)

    def numbers(self, name: str) -> np.ndarray:
        """Column ``name``'s cells as float64 (a number column's: checked when read)."""
        return self[name].astype("float64")

    def for_model(self, model, name: str = "data"):
        """The columns as ``model`` takes them: where every input of the model is named
        after a column, each input gets its column (a tabular model with one input per
        feature, as keras.io's structured-data guides build them); else, for a model with
        one input, the number columns side by side in the file's order, as its features.
        A column no input takes, text for a number input, a fraction for an integer input,
        or a number float32 cannot hold is refused: a column quietly dropped, moved or
        rounded would give the model other features than the file's.

        Raises:
            CompressError: in one line, naming the column and the model's inputs.
        """
        specs = model_inputs(model)
        names = [s[0] for s in specs]
        listed = f"inputs: {', '.join(names)}; columns: {', '.join(self)}"
        if all(n in self for n in names):
            extra = [k for k in self if k not in names]
            if extra:
                raise CompressError(
                    f"{name}: column(s) {', '.join(repr(k) for k in extra)} match no input of "
                    f"model '{model.name}' ({listed}); leave them out of the file")
            taken = {n: self._for_input(n, dtype, name) for n, _, dtype in specs}
            return taken[names[0]] if len(names) == 1 else taken
        if len(specs) > 1:
            missing = next(n for n in names if n not in self)
            raise CompressError(f"{name}: no column for input '{missing}' of model "
                                f"'{model.name}' ({listed})")
        if self.text:
            column = self.text[0]
            comma = re.fullmatch(r"[+-]?\d+,\d+", str(self[column][0])) is not None
            raise CompressError(
                f"{name}: column '{column}' holds text"
                + (f" ('{self[column][0]}': write decimals with a point)" if comma else "")
                + f", but the one input '{names[0]}' of model '{model.name}' takes numbers "
                f"({listed}); name an input after each column (a StringLookup for the text), "
                "or leave the column out of the file")
        dtype = specs[0][2] or "float32"
        return np.stack([self._numbers_as(k, dtype, name) for k in self], axis=1)

    def mapping(self, model) -> str:
        """How :meth:`for_model` gives the columns to ``model``, in words (a note)."""
        names = [s[0] for s in model_inputs(model)]
        if all(n in self for n in names):
            return f"each of the model's inputs takes the column of its name ({', '.join(names)})"
        shown = ", ".join(list(self)[:3]) + (f", ... {list(self)[-1]}" if len(self) > 3 else "")
        return (f"the {len(self)} columns ({shown}) are the features of input '{names[0]}', "
                "in the file's order")

    def _for_input(self, column: str, dtype, name: str):
        if dtype == "string":
            return self[column]  # the cells' text, a number column's too
        if column not in self.numeric:
            raise CompressError(f"{name}: column '{column}' holds text, but input '{column}' "
                                f"takes {dtype} numbers")
        return self._numbers_as(column, dtype or "float32", name)

    def _numbers_as(self, column: str, dtype: str, name: str) -> np.ndarray:
        values = self.numbers(column)
        if np.issubdtype(np.dtype(dtype), np.integer):
            if not np.all(values == np.round(values)) or np.any(np.abs(values) >= 2.0 ** 53):
                bad = values[(values != np.round(values)) | (np.abs(values) >= 2.0 ** 53)][0]
                raise CompressError(f"{name}: column '{column}' holds {bad:g}, but its input "
                                    f"takes whole numbers ({dtype})")
            return values.astype(dtype)
        cast = values.astype(dtype)
        if not np.all(np.isfinite(cast)):
            bad = values[~np.isfinite(cast)][0]
            raise CompressError(f"{name}: column '{column}' holds {bad:g}, beyond what {dtype} "
                                "holds")
        return cast


def model_inputs(model) -> list:
    """``[(name, shape without batch, dtype)]`` of the model's inputs."""
    out = []
    for i, t in enumerate(model.inputs):
        name = getattr(t, "name", None) or f"input_{i}"
        out.append((name.split(":")[0], tuple(t.shape[1:]), getattr(t, "dtype", None)))
    return out


def fit_to_model(x, model, name: str = "data"):
    """Reshape samples ``x`` to the model's input shape (flatten or HWC), or refuse.

    ``x`` is one array, or for a model with several inputs a dict keyed by input name or
    a list in input order.

    Raises:
        CompressError: when the number of values per sample differs from the model's, or
            the inputs do not match the model's.
    """
    if not hasattr(model, "inputs") or model.inputs is None:
        return x
    columns = None
    if isinstance(x, Columns):  # a table's columns: by input name, or as the features
        columns = list(x)
        x = x.for_model(model, name)
    specs = model_inputs(model)
    if len(specs) == 1:
        if isinstance(x, dict) and len(x) == 1:
            key = next(iter(x))
            return {key: _fit_one(x[key], specs[0], name)}
        if isinstance(x, (dict, list, tuple)):
            raise CompressError(f"{name}: {len(leaves(x))} input arrays for a model with 1 "
                                "input")
        try:
            return _fit_one(x, specs[0], name)
        except CompressError as exc:
            if columns is None or "do not fit" not in str(exc):
                raise
            # a table: which columns became the features (a second target column, or no
            # --label-column at all, makes one too many)
            raise CompressError(f"{exc}: the features are the columns "
                                f"{', '.join(columns)}; --label-column names the target "
                                "and every other column is a feature") from None
    if isinstance(x, dict):
        missing = [s[0] for s in specs if s[0] not in x]
        if missing:
            raise CompressError(f"{name}: no array for model input '{missing[0]}' "
                                f"(inputs: {', '.join(s[0] for s in specs)}; "
                                f"data has: {', '.join(map(str, x))})")
        return {s[0]: _fit_one(x[s[0]], s, f"{name} input '{s[0]}'") for s in specs}
    if isinstance(x, (list, tuple)) and len(x) == len(specs):
        return [_fit_one(a, s, f"{name} input '{s[0]}'") for a, s in zip(x, specs)]
    got = len(x) if isinstance(x, (list, tuple)) else 1
    raise CompressError(f"model '{model.name}' has {len(specs)} inputs "
                        f"({', '.join(s[0] for s in specs)}) but {name} gives {got}; give a "
                        "dict keyed by input name or a list in input order")


#: A sentence standing in for a text model's input where no data gives one (latency,
#: a graph check).
SAMPLE_TEXT = "the quick brown fox jumps over the lazy dog"


def is_text(a) -> bool:
    """Whether ``a`` is an array of strings (NumPy ``str`` or ``bytes``): the inputs of a
    model that takes text (a ``TextVectorization`` or ``StringLookup`` inside it).

    Example:

    An object array of Python strings (a pandas column's ``.values``) is text too.

    >>> is_text(np.array(["a cat"])), is_text(np.zeros(2))
    (True, False)
    >>> is_text(np.array(["a", "b"], dtype=object))
    True
    """
    kind = getattr(getattr(a, "dtype", None), "kind", "")
    if kind == "O":
        first = next(iter(np.asarray(a).flat), None)
        return isinstance(first, (str, bytes))
    return kind in ("U", "S")


def as_input(a: np.ndarray) -> np.ndarray:
    """Model inputs as loaded: strings as NumPy ``str`` (bytes decoded as UTF-8), numbers
    as float32."""
    if is_text(a):
        if a.dtype.kind == "O":
            a = np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v)
                          for v in np.asarray(a).flat]).reshape(np.shape(a))
        return np.char.decode(a, "utf-8") if a.dtype.kind == "S" else a
    return a.astype("float32")


def _fit_one(x, spec, name):
    _, target, dtype = spec
    x = np.asarray(x)
    text = dtype == "string"
    if text != is_text(x):
        raise CompressError(
            f"{name}: model input {target} takes strings, but the data holds {x.dtype} "
            "numbers; give the text (a NumPy str array)" if text else
            f"{name}: the data holds strings, but model input {target} takes {dtype}; give "
            "numbers (the text as the model's preprocessing would encode it)")
    if any(d is None for d in target):
        return as_input(x) if text else x  # variable-size inputs: the model decides
    want, have = int(np.prod(target)), int(np.prod(x.shape[1:]))
    if want != have:
        raise CompressError(f"{name}: samples of shape {tuple(x.shape[1:])} ({have} values) do "
                            f"not fit model input {target} ({want} values)")
    x = x.reshape((len(x),) + target)
    return as_input(x) if text else x.astype(dtype or "float32", copy=False)


def holds_classes(width: int, num_classes: int) -> bool:
    """Whether an output of ``width`` units can hold labels ``0 .. num_classes - 1``: one
    unit per class, or one unit for labels 0/1 (a sigmoid binary classifier).

    Example:

    >>> holds_classes(1, 2), holds_classes(10, 10), holds_classes(2, 3)
    (True, True, False)
    """
    return width >= num_classes or (width == 1 and num_classes <= 2)


def check_labels(model, num_classes: int, name: str = "data") -> None:
    """Refuse a model whose output is not a class vector able to hold ``num_classes``."""
    if len(model.outputs) != 1:
        raise CompressError(f"model '{model.name}' has {len(model.outputs)} outputs; "
                            "only single-output classifiers are supported here")
    shape = tuple(model.outputs[0].shape)
    if len(shape) != 2:
        raise CompressError(f"model '{model.name}' output shape {shape} is not a class vector "
                            "(batch, classes); not a classifier")
    if not holds_classes(shape[-1], num_classes):
        raise CompressError(_too_many_classes(name, num_classes - 1, shape[-1]))


def _too_many_classes(name: str, top: int, units: int) -> str:
    """The refusal of labels up to ``top`` for an output of ``units`` units.

    >>> _too_many_classes("npz:d.npz", 2, 1)
    'npz:d.npz: labels go up to 2, but the model has one output unit: a binary classifier, which takes labels 0 and 1'
    """
    if units == 1:
        return (f"{name}: labels go up to {top}, but the model has one output unit: a binary "
                "classifier, which takes labels 0 and 1")
    return f"{name}: labels go up to {top} but the model has only {units} outputs"


def output_names(model) -> list[str]:
    """The model's output names, in ``model.outputs`` order (Keras's ``output_names``).

    Keras names an output after the layer that made it, so one layer with several outputs
    (a SavedModel's signature, a custom layer returning two tensors) gives one name twice:
    then the keys of a dict of outputs name them (Keras flattens it in sorted key order),
    else ``output_i``.
    """
    names = list(getattr(model, "output_names", None) or [])
    if len(names) == len(model.outputs) and len(set(names)) == len(names):
        return names
    struct = getattr(model, "_outputs_struct", None)
    if isinstance(struct, dict) and len(struct) == len(model.outputs):
        return sorted(struct)
    if names and len(names) == len(model.outputs):
        return [f"output_{i}" for i in range(len(names))]
    return [getattr(t, "name", f"output_{i}").split(":")[0].split("/")[0]
            for i, t in enumerate(model.outputs)]


def check_targets(model, y, name: str = "data") -> None:
    """Refuse targets ``y`` that do not match the model's outputs, in one line.

    One output: integer class labels below its width (a class vector), or targets shaped
    like the output. Several outputs: a dict keyed by output name or a list in output order,
    each checked the same way. ``y`` None (unlabelled data) is not checked.

    Example:

    >>> check_targets(model, np.array([0, 1, 2]))        # doctest: +SKIP
    """
    if y is None:
        return
    outputs = list(model.outputs)
    names = output_names(model)
    if len(outputs) == 1:
        if isinstance(y, dict) and len(y) == 1:
            y = next(iter(y.values()))
        if isinstance(y, (dict, list, tuple)):
            raise CompressError(f"{name}: {len(leaves(y))} target arrays for a model with 1 "
                                "output")
        return _check_one(model, outputs[0], np.asarray(y), name)
    if isinstance(y, dict):
        unknown = [k for k in y if k not in names]
        if unknown:
            raise CompressError(f"{name}: targets for '{unknown[0]}', which is not an output "
                                f"of model '{model.name}' (outputs: {', '.join(names)})")
        pairs = [(outputs[names.index(k)], v, k) for k, v in y.items()]
    elif isinstance(y, (list, tuple)) and len(y) == len(outputs):
        pairs = list(zip(outputs, y, names))
    else:
        how = (f"name the arrays {', '.join(f'y_train/{n}' for n in names)} in the .npz"
               if str(name).startswith("npz:") else
               "give a dict keyed by output name or a list in output order")
        raise CompressError(f"model '{model.name}' has {len(outputs)} outputs "
                            f"({', '.join(names)}); {name} gives one target array: {how}")
    for out, v, key in pairs:
        _check_one(model, out, np.asarray(v), f"{name} output '{key}'")


def _fits(per_sample: tuple, shape: tuple) -> bool:
    """Whether targets of ``per_sample`` shape fit an output of ``shape``, whose unknown
    sizes (None: a fully convolutional model's height and width) take any size."""
    return len(per_sample) == len(shape) and all(
        d is None or d == s for s, d in zip(per_sample, shape))


def _check_one(model, output, y, name) -> None:
    shape = tuple(output.shape[1:])
    per_sample = tuple(y.shape[1:])
    if _fits(per_sample, shape) or (per_sample == () and shape == (1,)):
        return  # targets shaped like the output (one-hot, regression, masks)
    if len(shape) >= 2 and (_fits(per_sample, shape[:-1]) or
                            _fits(per_sample, shape[:-1] + (1,))) and \
            np.issubdtype(y.dtype, np.integer):  # a class per position: pixels, tokens
        if y.size and (y.min() < 0 or y.max() >= max(shape[-1], 2)):
            raise CompressError(f"{name}: labels go from {int(y.min())} to {int(y.max())} but "
                                f"model '{model.name}' has {shape[-1]} classes per position")
        return
    if per_sample in ((), (1,)):
        whole = np.issubdtype(y.dtype, np.integer) or (
            np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)))
        if len(shape) != 1:
            raise CompressError(f"{name}: one label per sample but model '{model.name}' "
                                f"outputs shape {shape}; not a classifier")
        if whole and y.size:
            if y.min() < 0:
                raise CompressError(f"{name}: labels must be non-negative class ids, "
                                    f"got {int(y.min())}")
            if int(y.max()) >= shape[0]:
                raise CompressError(_too_many_classes(name, int(y.max()), shape[0]))
        return
    raise CompressError(f"{name}: targets of shape {per_sample} do not match model "
                        f"'{model.name}' output {shape}")
