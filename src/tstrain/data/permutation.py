"""A keyed pseudo-random permutation of ``[0, n)``, computed per index instead of stored.

The reader shuffles a corpus's blocks once per epoch. A stored permutation costs 8 bytes a block,
about 1 GB per process at 1T tokens in blocks of 8192; this one costs a few round keys, and
placing ``m`` blocks costs O(m) time and memory whatever ``n`` is.

It is a balanced Feistel network on the smallest even number of bits ``2h`` with ``4**h >= n``:
each round swaps the two ``h``-bit halves and mixes one into the other through a keyed
splitmix64 finalizer, so every round, and the network, is a bijection on ``[0, 4**h)``. Values
that land at or past ``n`` are walked through the network again until they fall inside (cycle
walking): the walk from any ``i < n`` follows ``i``'s cycle and stops at the first value below
``n``, which makes the result a bijection on ``[0, n)``. Since ``4**h < 4n``, a walk takes under
four passes on average.
"""

from __future__ import annotations

import numpy as np

ROUNDS = 8  # Luby-Rackoff: 4 suffice for wide halves; tiny ones (a few blocks) want more (tests/test_permutation.py)
_MUL1, _MUL2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """Return splitmix64's finalizer of ``z`` (uint64, wrapping): a bijection whose every output
    bit depends on every input bit."""
    z = (z ^ (z >> np.uint64(30))) * _MUL1
    z = (z ^ (z >> np.uint64(27))) * _MUL2
    return z ^ (z >> np.uint64(31))


class KeyedPermutation:
    """A bijection on ``[0, n)`` drawn from ``key`` (e.g. ``(seed, epoch)``): ``perm(i)`` for an int64 array ``i``.

    Different keys give unrelated orders; the same key gives the same order in any process, for any
    subset of indices asked in any order (nothing is stored but the round keys).
    """

    def __init__(self, n: int, *key: int, rounds: int = ROUNDS):
        if n < 1:
            raise ValueError(f"a permutation of [0, {n}) needs n >= 1")
        self.n = n
        self.half = max(1, (int(n - 1).bit_length() + 1) // 2)  # 4**half >= n
        self.mask = np.uint64((1 << self.half) - 1)
        rng = np.random.default_rng(list(key))
        self.keys = rng.integers(0, 2**64, size=rounds, dtype=np.uint64, endpoint=False)

    def _network(self, x: np.ndarray) -> np.ndarray:
        """Return the Feistel network of ``x`` (uint64 below ``4**half``): a bijection on ``[0, 4**half)``."""
        shift = np.uint64(self.half)
        left, right = x >> shift, x & self.mask
        for k in self.keys:
            left, right = right, left ^ (_mix(right ^ k) & self.mask)
        return (left << shift) | right

    def __call__(self, index: np.ndarray) -> np.ndarray:
        """Return the images of ``index`` (integers in ``[0, n)``, any shape) as int64, same shape."""
        index = np.asarray(index)
        if index.size and (index.min() < 0 or index.max() >= self.n):
            raise IndexError(f"indices must lie in [0, {self.n})")
        out = self._network(index.astype(np.uint64).ravel())
        outside = np.flatnonzero(out >= self.n)
        while outside.size:  # cycle walking: follow each value's cycle back into [0, n)
            out[outside] = self._network(out[outside])
            outside = outside[out[outside] >= self.n]
        return out.astype(np.int64).reshape(index.shape)
