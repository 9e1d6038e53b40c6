"""The data every pass reads: named datasets, the user's arrays, files, folders and streams.

- :mod:`compress.data.named`: :func:`load_data` for ``digits``, ``mnist5k``, ``animals``,
  ``npz:PATH``, ``PATH.npy``, ``PATH.csv`` and image folders (seeded splits, checked
  before any work).
- :mod:`compress.data.arrays`: :class:`Dataset` (arrays in memory, three splits),
  :func:`fit_to_model`, :func:`check_labels`, :func:`check_targets`.
- :mod:`compress.data.folders`: image folders (class sub-folders = labelled, a flat folder
  = unlabelled), resized to the model's input, with a named preprocessing.
- :mod:`compress.data.sources`: :func:`as_dataset`, the one door every pass goes through
  (``tf.data.Dataset``, ``keras.utils.PyDataset``, arrays, ``(x, y)`` tuples, names), and
  :func:`prepare`; :mod:`compress.data.streaming`: :class:`StreamDataset` (splits read
  batch by batch).

Example:

>>> from compress.data import load_data
>>> ds = load_data("digits", seed=0)
>>> ds.x_train.shape, ds.num_classes
((1293, 8, 8, 1), 10)
"""

from compress.data.arrays import Columns, Dataset, check_labels, check_targets, fit_to_model
from compress.data.folders import PREPROCESSING, ImageFolder
from compress.data.named import NAMES, check_name, is_data_name, load_data
from compress.data.sources import as_dataset, prepare
from compress.data.streaming import StreamDataset

__all__ = ["NAMES", "PREPROCESSING", "Columns", "Dataset", "ImageFolder", "StreamDataset", "as_dataset",
           "check_labels", "check_name", "check_targets", "fit_to_model", "is_data_name",
           "load_data", "prepare"]
