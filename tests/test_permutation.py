"""The reader's computed block order: a bijection, a pure function of its key, and well shuffled."""

import numpy as np
import pytest

from tstrain.data.permutation import KeyedPermutation

KEYS = [(0, 0), (0, 1), (1, 0), (7, 2), (123_456_789, 3)]
SIZES = [1, 2, 3, 4, 5, 7, 16, 17, 100, 1000, 4096, 4097, *np.random.default_rng(0).integers(2, 60_000, 4).tolist()]


def image(n, key):
    return KeyedPermutation(n, *key)(np.arange(n, dtype=np.int64))


@pytest.mark.parametrize("n", SIZES)
def test_it_is_a_permutation_of_range_n_for_every_key(n):
    for key in KEYS:
        got = image(n, key)
        assert got.dtype == np.int64
        assert np.array_equal(np.sort(got), np.arange(n)), (n, key)


def test_other_seeds_and_epochs_give_unrelated_orders():
    orders = [image(1000, key) for key in KEYS]
    for a in range(len(orders)):
        for b in range(a + 1, len(orders)):
            assert np.mean(orders[a] == orders[b]) < 0.02  # chance: 1 in 1000


def test_it_is_a_pure_function_of_key_and_index_asked_in_any_subset_order_or_shape():
    n = 5000
    whole = image(n, (3, 1))
    rng = np.random.default_rng(1)
    some = rng.integers(0, n, size=(40, 7))  # repeats, any order, a 2-D shape
    assert np.array_equal(KeyedPermutation(n, 3, 1)(some), whole[some])
    assert KeyedPermutation(n, 3, 1)(np.int64(17)) == whole[17]
    with pytest.raises(IndexError):
        KeyedPermutation(n, 3, 1)(np.array([n]))


def test_asking_for_few_blocks_of_a_huge_range_costs_only_those():
    n = 10**15  # a stored permutation of this range would take 8 PB
    got = KeyedPermutation(n, 0, 0)(np.arange(10_000, dtype=np.int64))
    assert got.min() >= 0 and got.max() < n and len(np.unique(got)) == len(got)
    assert got.max() > n // 2  # spread over the whole range, not near the indices asked


def test_neighbouring_indices_land_in_unrelated_places():
    n = 10_000  # not a power of 4: cycle walking is at work
    adjacent, correlations = 0, []
    for seed in range(20):
        perm = image(n, (seed, 0))
        adjacent += int(np.sum(perm[1:] == perm[:-1] + 1))
        correlations.append(abs(np.corrcoef(np.arange(n), perm)[0, 1]))
        # The gaps between successive images: a random permutation shows about n(1 - 1/e) distinct
        # ones (6,321); an affine map i -> a*i + b (mod n), the identity included, shows one.
        assert len(np.unique((perm[1:] - perm[:-1]) % n)) > 0.55 * n
    assert adjacent <= 20 + 6 * np.sqrt(20)  # chance: about one continued pair per order
    assert max(correlations) < 0.05  # chance: sd 1 / sqrt(n) = 0.01


def test_over_many_keys_where_two_indices_land_is_uniform():
    # For n = 10 the network works on 16 values and walks back into 10: the weakest case. Over
    # 4,500 keys, (perm(0), perm(1)) should fill the 90 ordered pairs evenly (50 each).
    n, keys = 10, 4500
    pairs = np.array([KeyedPermutation(n, seed, 5)(np.array([0, 1])) for seed in range(keys)])
    counts = np.bincount(pairs[:, 0] * n + pairs[:, 1], minlength=n * n).reshape(n, n)
    assert np.trace(counts) == 0
    expected = keys / (n * (n - 1))
    off = counts[~np.eye(n, dtype=bool)]
    chi2 = float(np.sum((off - expected) ** 2 / expected))
    assert chi2 < 150, chi2  # 89 degrees of freedom: p = 1e-4 at 140
    first = np.bincount(pairs[:, 0], minlength=n)  # where index 0 lands: uniform over the 10 places
    assert float(np.sum((first - keys / n) ** 2 / (keys / n))) < 35  # 9 degrees of freedom: p = 1e-4 at 33.7
