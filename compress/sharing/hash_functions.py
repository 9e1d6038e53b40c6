"""The HashedNets hash: which shared bucket, and which sign, each connection gets.

Chen et al. 2015 ("Compressing Neural Networks with the Hashing Trick") store only ``K``
bucket weights per layer. The virtual weight of connection ``(i, j)`` is
``V[i, j] = sign(i, j) * buckets[h(i, j)]``; this module computes ``h`` and the sign,
in NumPy or in the graph (:mod:`compress.sharing.hashed_layers` recomputes them in every
call, so saved and exported files hold the buckets, never an index table).

Input ids ``i`` and output ids ``j + 2**30`` go through one four-round keyed Feistel
permutation in base ``P = 46337`` (a prime with ``P * P < 2**31``; round function
``a * (r * r mod P) + c``), giving per-row values ``R, R2`` and per-column values
``C, C2``. The connection hash is ``h = (R + C + t) mod K`` with ``t = R2 * C2 mod P``, and
the sign is ``t mod 2``: only these few operations run on all ``m x n`` connections,
which keeps the per-call cost of exports low. Every product is of two numbers below
``P``, so all arithmetic stays inside int32 and every runtime (TensorFlow, LiteRT,
onnxruntime) computes the same integers. Round keys come from the layer's seed through
pure-Python integer arithmetic: the same seed gives the same model on any machine.

Example:

>>> index, sign = hash_table(3, 2, num_buckets=4, seed=7)
>>> index.shape, bool(((0 <= index) & (index < 4)).all()), sorted(set(sign.ravel().tolist()))
((3, 2), True, [-1.0, 1.0])
"""

from __future__ import annotations

import zlib

import numpy as np
from keras import ops

from compress.errors import CompressError

PRIME = 46337  # largest prime with PRIME**2 < 2**31: products of residues fit in int32
MAX_ID = 2 ** 30  # row ids are below it, column ids are offset by it (both < PRIME**2)
ROUNDS = 4
_MASK64 = (1 << 64) - 1


def round_keys(seed: int, rounds: int = ROUNDS) -> list[tuple[int, int]]:
    """Per-round ``(a, c)`` keys in ``[1, PRIME)`` from ``seed`` (splitmix64, exact ints)."""
    state = (int(seed) * 0x9E3779B97F4A7C15 + 0x2545F4914F6CDD1D) & _MASK64
    keys = []
    for _ in range(rounds):
        pair = []
        for _ in range(2):
            state = (state + 0x9E3779B97F4A7C15) & _MASK64
            z = state
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
            z ^= z >> 31
            pair.append(1 + z % (PRIME - 1))
        keys.append(tuple(pair))
    return keys


def feistel(t, keys):
    """A keyed permutation of ``[0, PRIME**2)`` (int32-safe); returns ``(left, right)``.

    Round function ``(a * (r * r mod P) + c) mod P``: at most ``P**2 + P < 2**31``.
    """
    left, right = t // PRIME, t % PRIME
    for a, c in keys:
        left, right = right, (left + ((right * right) % PRIME * a + c) % PRIME) % PRIME
    return left, right


def connection_hash(rows, cols, num_buckets: int, seed: int, transposed: bool = False):
    """Bucket index and sign bit of every connection ``(rows[i], cols[j])``.

    The ids ``rows`` and ``cols + MAX_ID`` go through one keyed Feistel permutation (one
    vector of ``m + n`` values: cheap), giving per-row ``R, R2`` and per-column ``C, C2``.
    The ``m x n`` part is only ``t = R2 * C2 mod P``, ``index = (R + C + t) mod K`` and
    ``sign_bit = t mod 2``; the bilinear ``t`` breaks the shift structure that ``R + C``
    alone would have. Works on NumPy arrays and backend tensors alike (``keras.ops``).

    Args:
        rows: 1-D int32 input indices ``i`` (``m`` of them), each below ``MAX_ID``.
        cols: 1-D int32 output indices ``j`` (``n`` of them), each below ``MAX_ID``.
        num_buckets: int, ``K`` (at most ``2**30``): indices fall in ``[0, K)``.
        seed: int, the layer's hash seed.
        transposed: bool, default False. Return ``(n, m)`` arrays instead of ``(m, n)``.

    Returns:
        ``(index, sign_bit)``: int32 arrays; the sign is ``1 - 2 * sign_bit``.
    """
    # NumPy in, NumPy out (also inside a traced train step); tensors go through keras.ops
    xp = np if isinstance(rows, np.ndarray) and isinstance(cols, np.ndarray) else ops
    m = rows.shape[0]
    bucket, mult = _id_values(xp.concatenate([rows, cols + MAX_ID]), num_buckets, seed)
    r_bucket, c_bucket = bucket[:m], bucket[m:]
    r_mult, c_mult = mult[:m], mult[m:]
    if transposed:
        t = (xp.reshape(c_mult, (-1, 1)) * xp.reshape(r_mult, (1, -1))) % PRIME
        index = (xp.reshape(c_bucket, (-1, 1)) + xp.reshape(r_bucket, (1, -1)) + t)
    else:
        t = (xp.reshape(r_mult, (-1, 1)) * xp.reshape(c_mult, (1, -1))) % PRIME
        index = (xp.reshape(r_bucket, (-1, 1)) + xp.reshape(c_bucket, (1, -1)) + t)
    return index % num_buckets, t % 2  # index sum < 2K + P < 2**31


def _id_values(ids, num_buckets: int, seed: int):
    """Per-id ``(bucket, mult)``: the Feistel permutation of each id (elementwise)."""
    left, right = feistel(ids, round_keys(seed))
    bucket = (left * PRIME + right) % num_buckets
    return bucket, 1 + right % (PRIME - 1)  # mult in [1, P): t is never 0, signs balanced


def lookup_hash(rows, n: int, num_buckets: int, seed: int):
    """:func:`connection_hash` of rows ``rows`` (any number of them, e.g. the token ids
    an embedding looks up, whose count is known only at run time) and columns
    ``0 .. n-1``: ``(index, sign_bit)`` of shape ``(len(rows), n)``, the same values
    ``connection_hash(rows, arange(n))`` gives (every id is hashed on its own).

    >>> rows = np.array([4, 0, 4], np.int32)
    >>> index, bit = lookup_hash(rows, 3, 5, seed=1)
    >>> full, full_bit = connection_hash(np.arange(5, dtype=np.int32),
    ...                                  np.arange(3, dtype=np.int32), 5, 1)
    >>> bool((index == full[rows]).all() and (bit == full_bit[rows]).all())
    True
    """
    xp = np if isinstance(rows, np.ndarray) else ops
    r_bucket, r_mult = _id_values(rows, num_buckets, seed)
    c_bucket, c_mult = _id_values(xp.arange(n, dtype="int32") + MAX_ID, num_buckets, seed)
    t = (xp.reshape(r_mult, (-1, 1)) * xp.reshape(c_mult, (1, -1))) % PRIME
    index = xp.reshape(r_bucket, (-1, 1)) + xp.reshape(c_bucket, (1, -1)) + t
    return index % num_buckets, t % 2


def hash_table(m: int, n: int, num_buckets: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """NumPy ``(index, sign)`` arrays of shape ``(m, n)``; sign in ``{-1.0, +1.0}``."""
    rows = np.arange(m, dtype=np.int32)
    cols = np.arange(n, dtype=np.int32)
    index, bit = connection_hash(rows, cols, num_buckets, seed)
    index = np.asarray(ops.convert_to_numpy(index)).astype(np.int64)
    sign = 1.0 - 2.0 * np.asarray(ops.convert_to_numpy(bit)).astype(np.float32)
    return index, sign


def num_buckets_for(m: int, n: int, factor: float | None, buckets: int | None) -> int:
    """``K`` for an ``m x n`` kernel: ``buckets`` if given, else ``round(factor * m * n)``."""
    if buckets is None:
        if factor is None or not 0.0 < factor <= 1.0:
            raise CompressError(f"factor: must be in (0, 1], got {factor}")
        buckets = max(1, round(factor * m * n))
    if not 1 <= int(buckets) <= min(m * n, 2 ** 30):
        raise CompressError(f"buckets: must be in [1, {min(m * n, 2 ** 30)}], got {buckets}")
    return int(buckets)


def bucket_means(kernel: np.ndarray, num_buckets: int, seed: int) -> np.ndarray:
    """Bucket weights that best reproduce ``kernel`` (``m x n``): the mean of
    ``sign * w`` over the connections hashed to each bucket (0 for an empty bucket)."""
    m, n = kernel.shape
    index, sign = hash_table(m, n, num_buckets, seed)
    total = np.bincount(index.ravel(), weights=(sign * kernel).ravel(), minlength=num_buckets)
    count = np.bincount(index.ravel(), minlength=num_buckets)
    return (total / np.maximum(count, 1)).astype(np.float32)


def layer_seed(seed: int, name: str) -> int:
    """The hash seed of layer ``name`` in a model converted with ``seed``."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2 ** 31)
