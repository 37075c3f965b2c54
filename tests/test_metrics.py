"""Our numpy metrics against scikit-learn, on random and edge-case data."""
import numpy as np
import pytest
from sklearn.metrics import (average_precision_score, f1_score, label_ranking_average_precision_score,
                             roc_auc_score)

from metrics import cmap, lrap, macro_roc_auc, micro_f1


def cases():
    rng = np.random.default_rng(0)
    y = (rng.random((60, 7)) < 0.3).astype(int)
    s = rng.random((60, 7))
    yield y, s
    ties = np.round(rng.random((50, 5)), 1)  # many tied scores
    yield (rng.random((50, 5)) < 0.4).astype(int), ties
    y2 = (rng.random((40, 6)) < 0.2).astype(int)
    y2[:, 2] = 0  # a class without positives (skipped by the Kaggle metric)
    y2[:, 4] = 1  # a class without negatives
    y2[0] = 0
    yield y2, rng.random((40, 6))


def sklearn_kaggle_auc(y, s):
    keep = (y.sum(0) > 0) & (y.sum(0) < len(y))
    return roc_auc_score(y[:, keep], s[:, keep], average="macro")


@pytest.mark.parametrize("case", list(range(3)))
def test_metrics_equal_sklearn(case):
    y, s = list(cases())[case]
    assert macro_roc_auc(y, s) == pytest.approx(sklearn_kaggle_auc(y, s), abs=1e-12)
    with_pos = y.sum(0) > 0
    expected_map = np.mean([average_precision_score(y[:, c], s[:, c]) for c in np.flatnonzero(with_pos)])
    assert cmap(y, s) == pytest.approx(expected_map, abs=1e-12)
    assert lrap(y, s) == pytest.approx(label_ranking_average_precision_score(y, s), abs=1e-12)
    assert micro_f1(y, s, 0.5) == pytest.approx(f1_score(y, s >= 0.5, average="micro", zero_division=1.0))


def test_perfect_and_reversed_scores():
    y = np.array([[1, 0], [0, 1], [1, 0], [0, 1]])
    assert macro_roc_auc(y, y * 0.9) == 1.0
    assert macro_roc_auc(y, 1 - y) == 0.0
    assert cmap(y, y.astype(float)) == 1.0


def test_ranks_equal_scipys_with_ties():
    """The AUC's ranks (numpy only, so that a training process does not import scipy.stats) against scipy's."""
    from scipy.stats import rankdata as scipy_rankdata
    from metrics import rankdata
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 500):
        for values in (rng.random(n), rng.integers(0, 3, n).astype(float), np.zeros(n)):
            assert np.allclose(rankdata(values), scipy_rankdata(values)), (n, values[:5])
