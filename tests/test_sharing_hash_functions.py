"""The HashedNets hash: uniform, seeded, int32-exact, the same in NumPy and in the graph."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st


def _reference_hash(i: int, j: int, num_buckets: int, seed: int) -> tuple[int, int]:
    """The hash in Python's unbounded integers (no overflow possible)."""
    from compress.sharing.hash_functions import MAX_ID, PRIME, round_keys

    def permute(t):
        left, right = divmod(t, PRIME)
        for a, c in round_keys(seed):
            left, right = right, (left + (right * right * a + c) % PRIME) % PRIME
        return (left * PRIME + right) % num_buckets, 1 + right % (PRIME - 1)

    r, r2 = permute(i)
    c, c2 = permute(j + MAX_ID)
    t = r2 * c2 % PRIME
    return (r + c + t) % num_buckets, t % 2


@settings(max_examples=25, deadline=None)
@given(m=st.integers(20, 400), n=st.integers(20, 300), seed=st.integers(0, 2 ** 31 - 1),
       denominator=st.integers(2, 32))
def test_hash_is_uniform_over_buckets_and_signs(m, n, seed, denominator):
    from compress.sharing.hash_functions import hash_table

    k = max(1, m * n // max(denominator, 20))  # >= 20 connections per bucket on average
    index, sign = hash_table(m, n, k, seed)
    assert index.shape == (m, n) and index.min() >= 0 and index.max() < k
    counts = np.bincount(index.ravel(), minlength=k)
    expected = m * n / k
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    # chi-square with k-1 dof: mean k-1, sd sqrt(2(k-1)); 6 sd is far beyond chance
    assert chi2 < (k - 1) + 6 * np.sqrt(2 * max(k - 1, 1)) + 10
    assert set(np.unique(sign)) <= {-1.0, 1.0}
    assert abs(np.mean(sign > 0) - 0.5) < 5 / np.sqrt(m * n) + 0.01


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), k=st.integers(1, 10 ** 6))
def test_hash_is_deterministic_and_seeded(seed, k):
    from compress.sharing.hash_functions import hash_table

    a_index, a_sign = hash_table(37, 29, k, seed)
    b_index, b_sign = hash_table(37, 29, k, seed)
    np.testing.assert_array_equal(a_index, b_index)
    np.testing.assert_array_equal(a_sign, b_sign)
    if k >= 100:
        other, _ = hash_table(37, 29, k, seed + 1)
        assert np.mean(other == a_index) < 0.1  # another seed shares differently


@settings(max_examples=40, deadline=None)
@given(i=st.integers(0, 2 ** 30 - 1), j=st.integers(0, 2 ** 30 - 1),
       k=st.integers(1, 2 ** 30), seed=st.integers(0, 2 ** 40))
def test_int32_hash_matches_unbounded_integers(i, j, k, seed):
    """No int32 overflow anywhere, even at the largest indices and bucket counts."""
    from compress.sharing.hash_functions import connection_hash

    rows = np.array([i], dtype=np.int32)
    cols = np.array([j], dtype=np.int32)
    index, bit = connection_hash(rows, cols, k, seed)
    assert (int(np.asarray(index)[0, 0]), int(np.asarray(bit)[0, 0])) == \
        _reference_hash(i, j, k, seed)


def test_graph_hash_equals_numpy_hash():
    import tensorflow as tf

    from compress.sharing.hash_functions import connection_hash, hash_table

    index, sign = hash_table(50, 40, 300, 7)
    rows = tf.range(50, dtype=tf.int32)
    cols = tf.range(40, dtype=tf.int32)
    t_index, t_bit = tf.function(lambda r, c: connection_hash(r, c, 300, 7))(rows, cols)
    np.testing.assert_array_equal(t_index.numpy(), index)
    np.testing.assert_array_equal(1.0 - 2.0 * t_bit.numpy(), sign)
    t_index, t_bit = tf.function(
        lambda r, c: connection_hash(r, c, 300, 7, transposed=True))(rows, cols)
    np.testing.assert_array_equal(t_index.numpy(), index.T)


def test_bucket_means_initialise_from_the_dense_weights():
    from compress.sharing.hash_functions import bucket_means, hash_table

    rng = np.random.default_rng(0)
    index, sign = hash_table(30, 20, 60, 5)
    buckets = rng.normal(size=60).astype("float32")
    kernel = sign * buckets[index]  # a kernel that is exactly hashed
    np.testing.assert_allclose(bucket_means(kernel, 60, 5), buckets, atol=1e-6)


def test_rows_are_not_shifted_copies_of_each_other():
    """R + C alone would make row i' a bucket-shift of row i; the bilinear term must not."""
    from compress.sharing.hash_functions import hash_table

    k = 5000
    index, _ = hash_table(40, 200, k, 9)
    for a, b in [(0, 1), (3, 17), (20, 39)]:
        shifts = (index[b] - index[a]) % k
        assert np.unique(shifts).size > 150
