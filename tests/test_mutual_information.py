"""MI estimate against a plain counting loop; the power-law fit on a known curve."""

import math
from collections import Counter

import numpy as np
import pytest

from tstrain.mutual_information import fit_power_law, fitted_bag_weights, mutual_information


def loop_mi(tokens, d):
    """Float64 loop: Miller-Madow corrected H(X) + H(Y) - H(X,Y) from dictionaries of counts."""
    pairs = [(int(tokens[i]), int(tokens[i + d])) for i in range(len(tokens) - d)]
    n = len(pairs)

    def h(counter):
        return -sum(c / n * math.log(c / n) for c in counter.values()) + (len(counter) - 1) / (2 * n)

    return h(Counter(x for x, _ in pairs)) + h(Counter(y for _, y in pairs)) - h(Counter(pairs))


def test_mi_matches_the_counting_loop_on_random_markov_text():
    rng = np.random.default_rng(0)
    V, n = 12, 3000
    trans = rng.dirichlet(np.full(V, 0.3), size=V)
    x = [0]
    for _ in range(n - 1):
        x.append(rng.choice(V, p=trans[x[-1]]))
    x = np.array(x)
    for d in (1, 2, 7):
        assert mutual_information(x, d) == pytest.approx(loop_mi(x, d), rel=1e-9, abs=1e-12)
    assert mutual_information(x, 1) > mutual_information(x, 7)  # dependence decays with distance


def test_mi_of_independent_tokens_is_near_zero_after_the_correction():
    x = np.random.default_rng(1).integers(0, 8, 50_000)
    assert abs(mutual_information(x, 3)) < 2e-3


def test_fit_recovers_a_known_power_law_and_weights_follow_k():
    d = np.arange(1, 65)
    fit = fit_power_law(d, 3.63 + 1.35 * d**-1.25)
    assert fit["C0"] == pytest.approx(3.63, abs=1e-3) and fit["a"] == pytest.approx(1.35, abs=1e-2)
    assert fit["k"] == pytest.approx(-1.25, abs=5e-3)
    w = fitted_bag_weights(-1.25, 4)
    assert sum(w) == pytest.approx(1.0) and w[0] / w[1] == pytest.approx(2**1.25)


def test_mi_cli_on_the_test_corpus(data_dir, tmp_path, capsys):
    from tstrain.cli import main

    assert main(["mi", "--data", str(data_dir), "--out", str(tmp_path / "mi"), "--max-distance", "16",
                 "--sample-tokens", "20000", "--bag-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "MI(d) =" in out and "tst.mi_exponent=" in out
    assert (tmp_path / "mi" / "mi.png").stat().st_size > 0
