"""Instance matching metrics between label images (StarDist's ``matching``): a C++ overlap count and a sparse
optimal assignment (Hungarian, via scipy, only where candidate matches conflict)."""
from __future__ import annotations

import functools
import numbers
from typing import NamedTuple, Sequence

import numpy as np

from .. import _C
from ..ops import star as _p

__all__ = ["MatchingStats", "matching", "matching_dataset", "label_overlap"]

_CRITERIA = ("iou", "iot", "iop")


class MatchingStats(NamedTuple):
    """Matching metrics (the fields of StarDist's ``Matching``)."""

    criterion: str
    thresh: float
    fp: int
    tp: int
    fn: int
    precision: float
    recall: float
    accuracy: float
    f1: float
    n_true: int
    n_pred: int
    mean_true_score: float
    mean_matched_score: float
    panoptic_quality: float


def _labels(y, name):
    a = y.detach().cpu().numpy() if _p.is_torch(y) else np.asarray(y)
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name}: expected an integer label image, got {a.dtype}")
    return a


def label_overlap(y_true, y_pred):
    """The sparse contingency of two label images: ``(n_true, n_pred, size_true (n_true,), size_pred (n_pred,),
    pairs (k, 2) of 0-based object indices, counts (k,))``. Objects are numbered in ascending label order (as
    ``np.unique``); only pairs that share pixels are listed. Labels must be non-negative (0 is background)."""
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} have different shapes")
    dt = np.promote_types(t.dtype, p.dtype)
    if dt.kind == "f":  # int64 with uint64
        dt = np.dtype(np.uint64)
    t, p = np.ascontiguousarray(t, dt), np.ascontiguousarray(p, dt)
    lo_t, hi_t, lo_p, hi_p, both = _C.star_label_range(t, p)
    if t.size == 0:
        lo_t = hi_t = lo_p = hi_p = both = 0
    if lo_t < 0:
        raise ValueError("y_true: labels must be non-negative")
    if lo_p < 0:
        raise ValueError("y_pred: labels must be non-negative")
    # the look-up tables are sized by the largest label: relabel sparse huge ids first
    limit = max(1 << 16, 4 * t.size)
    if hi_t > limit or hi_p > limit:
        t = _relabel(t)
        p = _relabel(p)
        hi_t, hi_p = int(t.max(initial=0)), int(p.max(initial=0))
    ws = functools.partial(_p.workspace, like=t)  # reused across calls: no page faults for fresh buffers
    lut_t, lut_p = ws("matching.lut_t", (hi_t + 1,), np.int32), ws("matching.lut_p", (hi_p + 1,), np.int32)
    size_t, size_p = ws("matching.size_t", (hi_t + 1,), np.int64), ws("matching.size_p", (hi_p + 1,), np.int64)
    cap = max(int(both), 1)
    pt, pp = ws("matching.pt", (cap,), np.int32), ws("matching.pp", (cap,), np.int32)
    pn = ws("matching.pn", (cap,), np.int64)
    if t.size == 0:
        return 0, 0, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    n_true, n_pred, k = _C.star_label_overlap(t, p, lut_t, lut_p, size_t, size_p, pt, pp, pn)
    pairs = np.stack([pt[:k].astype(np.int64) - 1, pp[:k].astype(np.int64) - 1], 1)
    return n_true, n_pred, size_t[1:n_true + 1].copy(), size_p[1:n_pred + 1].copy(), pairs, pn[:k].copy()


def _relabel(y):
    ids, inv = np.unique(y, return_inverse=True)
    inv = inv.reshape(y.shape)
    return (inv if ids[0] == 0 else inv + 1).astype(np.int64)


def _scores(n_true, n_pred, size_t, size_p, pairs, counts, criterion):
    if criterion not in _CRITERIA:
        raise ValueError(f"criterion: expected one of {_CRITERIA}, got {criterion!r}")
    c = counts.astype(np.float64)
    st, sp = size_t[pairs[:, 0]].astype(np.float64), size_p[pairs[:, 1]].astype(np.float64)
    if criterion == "iou":
        return c / (st + sp - c)
    if criterion == "iot":
        return c / st
    return c / sp


def _assign(n_true, n_pred, pairs, score, thr):
    """(tp, sum of matched scores) of StarDist's optimal assignment: most pairs with score >= thr, then the largest
    total score (StarDist minimises -(s >= thr) - s / (2 min(n_true, n_pred)) over a full assignment).

    Only pairs with a positive score matter (zero pairs add nothing), and the problem splits into the connected
    components of the graph of those pairs. Where a component's eligible pairs (score >= thr) are disjoint -- always
    at IoU >= 0.5 -- all of them are matched in every optimum; only components with conflicting eligible pairs are
    solved, each with scipy's linear_sum_assignment on StarDist's cost restricted to the component."""
    n_matched = min(n_true, n_pred)
    if n_matched == 0:
        return 0, 0.0
    thr = -np.inf if thr is None else float(thr)
    if thr <= 0:
        # every pair is eligible: tp = n_matched, and the assignment maximises the total score
        return n_matched, _max_weight(n_true, n_pred, pairs, score, n_matched)
    elig = score >= thr
    et, ep = pairs[elig, 0], pairs[elig, 1]
    if len(np.unique(et)) == len(et) and len(np.unique(ep)) == len(ep):
        return int(elig.sum()), float(score[elig].sum())
    linear_sum_assignment, coo_matrix, connected_components = _scipy()

    pos = score > 0
    rows, cols = pairs[pos, 0], n_true + pairs[pos, 1]
    g = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_true + n_pred,) * 2)
    _, comp = connected_components(g, directed=False)
    ut, ct = np.unique(et, return_counts=True)
    up, cp = np.unique(ep, return_counts=True)
    conflicted = np.unique(np.concatenate([comp[ut[ct > 1]], comp[n_true + up[cp > 1]]]))
    in_conflict = np.isin(comp[pairs[:, 0]], conflicted)
    # components without conflicts: all their eligible pairs
    simple = elig & ~in_conflict
    tp, total = int(simple.sum()), float(score[simple].sum())
    for c in conflicted:
        sel = np.flatnonzero((comp[pairs[:, 0]] == c) & pos)
        ti, ti_inv = np.unique(pairs[sel, 0], return_inverse=True)
        pi, pi_inv = np.unique(pairs[sel, 1], return_inverse=True)
        s = np.zeros((len(ti), len(pi)))
        s[ti_inv, pi_inv] = score[sel]
        cost = -(s >= thr).astype(np.float64) - s / (2 * n_matched)
        r, q = linear_sum_assignment(cost)
        m = s[r, q]
        ok = m >= thr
        tp += int(ok.sum())
        total += float(m[ok].sum())
    return tp, total


def _scipy():
    """scipy is only needed when candidate matches conflict (thresholds below 0.5, iot/iop criteria)."""
    try:
        from scipy.optimize import linear_sum_assignment
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components
    except ImportError as e:
        raise ImportError("matching needs scipy for the optimal assignment here: pip install scipy "
                          "(or pip install 'cellkern[star]')") from e
    return linear_sum_assignment, coo_matrix, connected_components


def _max_weight(n_true, n_pred, pairs, score, n_matched):
    linear_sum_assignment, coo_matrix, connected_components = _scipy()

    pos = score > 0
    if not pos.any():
        return 0.0
    rows, cols = pairs[pos, 0], n_true + pairs[pos, 1]
    g = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_true + n_pred,) * 2)
    _, comp = connected_components(g, directed=False)
    total = 0.0
    pp, sc, cc = pairs[pos], score[pos], comp[pairs[pos, 0]]
    for c in np.unique(cc):
        sel = cc == c
        ti, ti_inv = np.unique(pp[sel, 0], return_inverse=True)
        pi, pi_inv = np.unique(pp[sel, 1], return_inverse=True)
        s = np.zeros((len(ti), len(pi)))
        s[ti_inv, pi_inv] = sc[sel]
        r, q = linear_sum_assignment(-s)
        total += float(s[r, q].sum())
    return total


def _stats(criterion, thr, tp, n_true, n_pred, sum_matched):
    fp, fn = n_pred - tp, n_true - tp

    def ratio(a, b):
        return float(a) / float(b) if b > 0 else 0.0

    return MatchingStats(
        criterion=criterion, thresh=thr, fp=int(fp), tp=int(tp), fn=int(fn),
        precision=ratio(tp, tp + fp) if tp > 0 else 0.0,
        recall=ratio(tp, tp + fn) if tp > 0 else 0.0,
        accuracy=ratio(tp, tp + fp + fn) if tp > 0 else 0.0,
        f1=ratio(2 * tp, 2 * tp + fp + fn) if tp > 0 else 0.0,
        n_true=int(n_true), n_pred=int(n_pred),
        mean_true_score=ratio(sum_matched, n_true),
        mean_matched_score=ratio(sum_matched, tp),
        panoptic_quality=ratio(sum_matched, tp + fp / 2 + fn / 2))


def _threshs(thresh):
    if thresh is None or isinstance(thresh, numbers.Real):
        return (thresh,), True
    try:
        ts = tuple(thresh)
    except TypeError:
        raise ValueError(f"thresh: expected a number or a sequence of numbers, got {thresh!r}") from None
    for t in ts:
        if not isinstance(t, numbers.Real) or np.isnan(t):
            raise ValueError(f"thresh: expected numbers, got {t!r}")
    return ts, False


def matching(y_true, y_pred, thresh=0.5, criterion="iou"):
    """Matching metrics between a ground-truth and a predicted label image (StarDist's ``matching``).

    ``thresh`` a number gives :class:`MatchingStats`; a sequence gives a tuple of them (the overlaps are counted
    once). A true object t and a predicted p can match when ``score(t, p) >= thresh``, score = IoU
    (``criterion='iou'``), intersection / true area (``'iot'``) or intersection / predicted area (``'iop'``); the
    one-to-one assignment maximises the number of matches, then their total score (Hungarian, via scipy, where
    matches conflict). tp = matches, fp = n_pred - tp, fn = n_true - tp; precision tp/(tp+fp), recall tp/(tp+fn),
    accuracy tp/(tp+fp+fn), f1 2tp/(2tp+fp+fn) (0 when tp = 0); mean_matched_score = sum of matched scores / tp,
    mean_true_score = that sum / n_true, panoptic_quality = sum / (tp + fp/2 + fn/2).

    Scores are float64 (StarDist: float32, so a score exactly at the threshold can be decided differently there).
    Labels: non-negative integers of any dtype (numpy, or torch tensors, copied to the host), 0 is background;
    any number of dimensions.
    """
    ts, single = _threshs(thresh)
    n_true, n_pred, st, sp, pairs, counts = label_overlap(y_true, y_pred)
    score = _scores(n_true, n_pred, st, sp, pairs, counts, criterion)
    out = []
    for t in ts:
        tp, s = _assign(n_true, n_pred, pairs, score, t)
        out.append(_stats(criterion, 0.0 if t is None else float(t), tp, n_true, n_pred, s))
    return out[0] if single else tuple(out)


def matching_dataset(y_true: Sequence, y_pred: Sequence, thresh=0.5, criterion="iou", by_image=False):
    """Matching metrics over a list of image pairs (StarDist's ``matching_dataset``): counts and matched-score sums
    are added over the images and the ratios computed from the totals; with ``by_image`` precision, recall,
    accuracy, f1 and the score means are the averages of the per-image values instead."""
    if len(y_true) != len(y_pred):
        raise ValueError("y_true and y_pred must have the same length")
    ts, single = _threshs(thresh)
    data = []
    for a, b in zip(y_true, y_pred):
        n_true, n_pred, st, sp, pairs, counts = label_overlap(a, b)
        data.append((n_true, n_pred, pairs, _scores(n_true, n_pred, st, sp, pairs, counts, criterion)))
    out = []
    for t in ts:
        thr = 0.0 if t is None else float(t)
        per = [(*_assign(nt, npred, pairs, sc, t), nt, npred) for nt, npred, pairs, sc in data]
        tp, s, nt, npred = (sum(v[i] for v in per) for i in range(4)) if per else (0, 0.0, 0, 0)
        total = _stats(criterion, thr, tp, nt, npred, s)
        if by_image and per:
            stats = [_stats(criterion, thr, v[0], v[2], v[3], v[1]) for v in per]
            avg = {k: float(np.mean([getattr(m, k) for m in stats])) for k in
                   ("precision", "recall", "accuracy", "f1", "mean_true_score", "mean_matched_score",
                    "panoptic_quality")}
            total = total._replace(**avg)
        out.append(total)
    return out[0] if single else tuple(out)
