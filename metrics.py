"""Validation metrics on (rows, classes) arrays, numpy only (the tests check each against scikit-learn):
macro ROC-AUC as Kaggle scored BirdCLEF 2024, cMAP, LRAP, micro F1, and all of them at once for train.py and
soup.py.

    from metrics import all_metrics
    all_metrics(y_true, y_prob)   # {"lrap": ..., "cmap": ..., "f1": ..., "auc": ...}
"""
import numpy as np


def _positive_classes(y_true):
    positives = y_true.sum(0)
    return np.flatnonzero((positives > 0) & (positives < len(y_true)))


def rankdata(values):
    """1-based ranks, ties given their average rank (scipy.stats.rankdata's default, without importing scipy.stats:
    1.5 s of every training process's start)."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    edges = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1], True])  # where each group of ties starts
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat((edges[:-1] + edges[1:] + 1) / 2, np.diff(edges))
    return ranks


def macro_roc_auc(y_true, y_score):
    """Macro ROC-AUC over classes with at least one positive (and one negative), as Kaggle scored BirdCLEF 2024."""
    y_true, y_score = np.asarray(y_true) > 0.5, np.asarray(y_score, dtype=np.float64)
    aucs = []
    for c in _positive_classes(y_true):
        ranks = rankdata(y_score[:, c])
        n_pos = y_true[:, c].sum()
        n_neg = len(y_true) - n_pos
        aucs.append((ranks[y_true[:, c]].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(aucs)) if aucs else float("nan")


def average_precision(y_true, y_score):
    """Average precision of one class: sum over score thresholds of (recall step) * precision."""
    order = np.argsort(-y_score, kind="mergesort")
    y, s = y_true[order], y_score[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # tied scores form one threshold
    tps = np.cumsum(y)[last_of_tie]
    precision = tps / (last_of_tie + 1)
    recall = tps / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def cmap(y_true, y_score):
    """Mean average precision over the classes that have a positive."""
    y_true, y_score = np.asarray(y_true) > 0.5, np.asarray(y_score, dtype=np.float64)
    scores = [average_precision(y_true[:, c], y_score[:, c]) for c in np.flatnonzero(y_true.sum(0) > 0)]
    return float(np.mean(scores)) if scores else float("nan")


def lrap(y_true, y_score):
    """Label ranking average precision (a sample with no or all labels true scores 1, as in scikit-learn)."""
    y_true, y_score = np.asarray(y_true) > 0.5, np.asarray(y_score, dtype=np.float64)
    total = 0.0
    for truth, score in zip(y_true, y_score):
        relevant = score[truth]
        if len(relevant) in (0, len(score)):
            total += 1.0
            continue
        rank_all = (score[None, :] >= relevant[:, None]).sum(1)
        rank_relevant = (relevant[None, :] >= relevant[:, None]).sum(1)
        total += float(np.mean(rank_relevant / rank_all))
    return total / len(y_true)


F1_THRESHOLD = 0.5  # on sigmoid probabilities


def micro_f1(y_true, y_score, threshold=F1_THRESHOLD):
    """Micro-averaged F1 of the predictions y_score >= threshold."""
    y_true, y_pred = np.asarray(y_true) > 0.5, np.asarray(y_score) >= threshold
    tp = float((y_true & y_pred).sum())
    denominator = y_true.sum() + y_pred.sum()
    return 2 * tp / denominator if denominator else 1.0


def all_metrics(y_true, y_prob):
    """The tracked metrics; NaN for all of them when there is nothing to validate on (fold 'all')."""
    if len(y_true) == 0:
        return {m: float("nan") for m in TRACKED_METRICS}
    return dict(lrap=lrap(y_true, y_prob), cmap=cmap(y_true, y_prob), f1=micro_f1(y_true, y_prob),
                auc=macro_roc_auc(y_true, y_prob))


TRACKED_METRICS = ("lrap", "cmap", "f1", "auc")
