"""Instance matching metrics between label images (StarDist's ``stardist.matching`` API): a C++ overlap count
and a sparse optimal assignment (Hungarian, via scipy, only where candidate matches conflict), plus StarDist's
dense-matrix helpers, relabelling and grouping of labels across frames."""
from __future__ import annotations

import functools
import numbers
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from .. import _C
from ..ops import star as _p
from ._checks import host_array, unit_threshold

__all__ = ["MatchingStats", "MatchingReport", "DatasetMatching", "matching", "matching_dataset",
           "matching_dataset_lazy", "label_overlap", "label_overlap_sparse", "label_are_sequential",
           "intersection_over_union", "intersection_over_true", "intersection_over_pred", "relabel_sequential",
           "group_matching_labels"]

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
    a = host_array(y, name)
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name}: expected an integer label image, got {a.dtype}")
    return a


class MatchingReport(NamedTuple):
    """:class:`MatchingStats` plus the assignment (``matching(..., report_matches=True)``, StarDist's fields)."""

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
    matched_pairs: tuple
    matched_scores: tuple
    matched_tps: tuple


class DatasetMatching(NamedTuple):
    """:class:`MatchingStats` over a dataset plus ``by_image`` (the fields of StarDist's ``DatasetMatching``)."""

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
    by_image: bool


def label_overlap_sparse(y_true, y_pred):
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
    """(thresholds, single): None (= 0) or numbers in [0, 1] (scores are), one or a sequence of them."""
    if thresh is None or isinstance(thresh, (str, bytes, numbers.Number)) or (
            hasattr(thresh, "dtype") and np.ndim(thresh) == 0):
        return (None if thresh is None else unit_threshold(thresh, "thresh"),), True
    try:
        ts = tuple(thresh)
    except TypeError:
        raise ValueError(f"thresh: expected a number or a sequence of numbers, got {thresh!r}") from None
    return tuple(None if t is None else unit_threshold(t, "thresh") for t in ts), False


def matching(y_true, y_pred, thresh=0.5, criterion="iou", report_matches=False):
    """Matching metrics between a ground-truth and a predicted label image (StarDist's ``matching``).

    ``thresh`` a number gives :class:`MatchingStats`; a sequence gives a tuple of them (the overlaps are counted
    once). A true object t and a predicted p can match when ``score(t, p) >= thresh``, score = IoU
    (``criterion='iou'``), intersection / true area (``'iot'``) or intersection / predicted area (``'iop'``); the
    one-to-one assignment maximises the number of matches, then their total score (Hungarian, via scipy, where
    matches conflict). tp = matches, fp = n_pred - tp, fn = n_true - tp; precision tp/(tp+fp), recall tp/(tp+fn),
    accuracy tp/(tp+fp+fn), f1 2tp/(2tp+fp+fn) (0 when tp = 0); mean_matched_score = sum of matched scores / tp,
    mean_true_score = that sum / n_true, panoptic_quality = sum / (tp + fp/2 + fn/2).

    ``report_matches=True`` gives :class:`MatchingReport` instead, with StarDist's extra fields: ``matched_pairs``,
    the ``min(n_true, n_pred)`` (true label id, predicted label id) pairs of the full assignment in ascending true
    order -- pairs scoring below ``thresh`` (even 0) included, as StarDist --, ``matched_scores`` their scores and
    ``matched_tps`` the positions in ``matched_pairs`` of the pairs that count as matches; all three are empty
    when either image has no object. This assignment is StarDist's dense one (scipy's linear_sum_assignment on
    the full score matrix, with StarDist's float32 tie-breaking term), so the pairs, also those scoring 0, are
    StarDist's; it costs O(n_true * n_pred) memory.

    Scores are float64 (StarDist: float32, so a score exactly at the threshold can be decided differently there).
    Labels: non-negative integers of any dtype (numpy, or torch tensors, copied to the host), 0 is background;
    any number of dimensions.
    """
    ts, single = _threshs(thresh)
    if criterion not in _CRITERIA:
        raise ValueError(f"criterion: expected one of {_CRITERIA}, got {criterion!r}")
    n_true, n_pred, st, sp, pairs, counts = label_overlap_sparse(y_true, y_pred)
    score = _scores(n_true, n_pred, st, sp, pairs, counts, criterion)
    if report_matches:
        ids_t, ids_p = _ids(y_true), _ids(y_pred)
        out = [_report(criterion, t, n_true, n_pred, pairs, score, ids_t, ids_p) for t in ts]
        return out[0] if single else tuple(out)
    out = []
    for t in ts:
        tp, s = _assign(n_true, n_pred, pairs, score, t)
        out.append(_stats(criterion, 0.0 if t is None else float(t), tp, n_true, n_pred, s))
    return out[0] if single else tuple(out)


def _ids(y):
    """The object ids of a label image in ascending order (the numbering of label_overlap_sparse)."""
    u = np.unique(_labels(y, "y"))
    return u[u != 0]


def _report(criterion, t, n_true, n_pred, pairs, score, ids_t, ids_p):
    n_matched = min(n_true, n_pred)
    thr = 0.0 if t is None else float(t)
    if n_matched == 0:
        return MatchingReport(*_stats(criterion, thr, 0, n_true, n_pred, 0.0), (), (), ())
    linear_sum_assignment = _scipy()[0]
    dense = np.zeros((n_true, n_pred))
    dense[pairs[:, 0], pairs[:, 1]] = score
    # StarDist's cost: matches first, then the total score as a tie-breaker, that term computed in float32 as
    # StarDist does, so that equal-cost alternatives (pairs scoring 0, above all) resolve to its choice
    tie = dense.astype(np.float32) / np.float32(2 * n_matched)
    rows, cols = linear_sum_assignment(-(dense >= thr).astype(np.float64) - tie)
    chosen = dense[rows, cols]
    ok = np.flatnonzero(chosen >= thr)
    stats = _stats(criterion, thr, len(ok), n_true, n_pred, float(chosen[ok].sum()))
    return MatchingReport(*stats, tuple((int(ids_t[r]), int(ids_p[c])) for r, c in zip(rows, cols)),
                          tuple(chosen), tuple(int(k) for k in ok))


def _overlap_scores(pair, criterion):
    try:
        a, b = pair
    except (TypeError, ValueError):
        raise ValueError("y_gen: expected pairs (y_true, y_pred)") from None
    n_true, n_pred, st, sp, pairs, counts = label_overlap_sparse(a, b)
    return n_true, n_pred, pairs, _scores(n_true, n_pred, st, sp, pairs, counts, criterion)


def matching_dataset(y_true: Sequence, y_pred: Sequence, thresh=0.5, criterion="iou", by_image=False,
                     show_progress=True, parallel=False):
    """Matching metrics over a list of image pairs (StarDist's ``matching_dataset``): counts and matched-score sums
    are added over the images and the ratios computed from the totals; with ``by_image`` precision, recall,
    accuracy, f1 and the score means are the averages of the per-image values instead. Returns
    :class:`DatasetMatching` (a tuple of them for a sequence of thresholds).

    ``show_progress`` shows a tqdm bar over the images (an int > 1: the expected count); ``parallel`` computes the
    images' overlaps in a thread pool (the C++ counting releases the GIL)."""
    if len(y_true) != len(y_pred):
        raise ValueError("y_true and y_pred must have the same length")
    return _dataset(zip(y_true, y_pred), len(y_true), thresh, criterion, by_image, show_progress, parallel)


def matching_dataset_lazy(y_gen: Iterable, thresh=0.5, criterion="iou", by_image=False, show_progress=True,
                          parallel=False):
    """:func:`matching_dataset` over an iterable of ``(y_true, y_pred)`` pairs (StarDist's
    ``matching_dataset_lazy``): each pair is read once, so a generator can load the images one at a time."""
    total = None
    if isinstance(show_progress, numbers.Integral) and not isinstance(show_progress, bool) and show_progress > 1:
        total = int(show_progress)  # StarDist: an int > 1 is the number of pairs to expect
    return _dataset(y_gen, total, thresh, criterion, by_image, show_progress, parallel)


def _dataset(y_gen, total, thresh, criterion, by_image, show_progress, parallel):
    ts, single = _threshs(thresh)
    if criterion not in _CRITERIA:
        raise ValueError(f"criterion: expected one of {_CRITERIA}, got {criterion!r}")
    from .._optional import require

    tqdm = require("tqdm", "matching_dataset").tqdm

    pairs_it = tqdm(y_gen, disable=not bool(show_progress), total=total)
    one = functools.partial(_overlap_scores, criterion=criterion)
    if parallel:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor() as pool:
            data = list(pool.map(one, pairs_it))
    else:
        data = [one(pair) for pair in pairs_it]
    out = []
    for t in ts:
        thr = 0.0 if t is None else float(t)
        per = [(*_assign(nt, npred, pairs, sc, t), nt, npred) for nt, npred, pairs, sc in data]
        tp, s, nt, npred = (sum(v[i] for v in per) for i in range(4)) if per else (0, 0.0, 0, 0)
        agg = _stats(criterion, thr, tp, nt, npred, s)
        if by_image and per:
            stats = [_stats(criterion, thr, v[0], v[2], v[3], v[1]) for v in per]
            avg = {k: float(np.mean([getattr(m, k) for m in stats])) for k in
                   ("precision", "recall", "accuracy", "f1", "mean_true_score", "mean_matched_score",
                    "panoptic_quality")}
            agg = agg._replace(**avg)
        out.append(DatasetMatching(*agg, by_image=bool(by_image)))
    return out[0] if single else tuple(out)


# ---- StarDist's dense helpers -------------------------------------------------------------------------------


def label_are_sequential(y):
    """True when the non-zero labels of ``y`` are exactly 1, 2, ..., max (StarDist's ``label_are_sequential``)."""
    u = np.unique(host_array(y, "y"))
    u = u[u != 0]
    return bool(np.array_equal(u, np.arange(1, len(u) + 1)))


def label_overlap(x, y, check=True):
    """StarDist's ``label_overlap``: the dense contingency matrix ``(1 + x.max(), 1 + y.max())`` uint64 of two
    label images, ``overlap[i, j]`` = pixels with label i in x and j in y (row and column 0: background). With
    ``check`` (StarDist's default) the labels must be sequential (1..n, see :func:`label_are_sequential`) and
    the shapes equal. For label images with large or sparse ids, :func:`label_overlap_sparse` (what
    :func:`matching` uses) lists only the pairs that meet."""
    a, b = _labels(x, "x"), _labels(y, "y")
    for v, name in ((a, "x"), (b, "y")):
        if v.size and v.min() < 0:
            raise ValueError(f"{name}: labels must be non-negative")
        if check and not label_are_sequential(v):
            raise ValueError(f"{name}: labels must be sequential (1, 2, ..., n); relabel_sequential makes them so")
    if a.shape != b.shape:
        raise ValueError(f"x {a.shape} and y {b.shape} must have the same shape")
    nx = int(a.max(initial=0)) + 1
    ny = int(b.max(initial=0)) + 1
    flat = a.ravel().astype(np.int64) * ny + b.ravel().astype(np.int64)
    return np.bincount(flat, minlength=nx * ny).astype(np.uint64).reshape(nx, ny)


def _overlap_matrix(overlap):
    o = host_array(overlap, "overlap")
    if o.dtype == bool or not np.issubdtype(o.dtype, np.integer):
        raise TypeError(f"overlap: expected an integer matrix of pixel counts, got {o.dtype}")
    if o.ndim != 2:
        raise ValueError(f"overlap: expected a 2D matrix, got shape {o.shape}")
    if o.size and o.min() < 0:
        raise ValueError("overlap: counts must be non-negative")
    return o


def _ratio_matrix(o, denom):
    """overlap / denom as StarDist: float32, 0 where the denominator is (about) 0."""
    out = np.zeros(np.broadcast_shapes(o.shape, denom.shape), np.float32)
    ok = np.abs(denom) > 1e-10
    ok = np.broadcast_to(ok, out.shape)
    q = o.astype(np.float64) / np.where(np.abs(denom) > 1e-10, denom, 1).astype(np.float64)
    out[ok] = q[ok]
    return out


def intersection_over_union(overlap):
    """StarDist's ``intersection_over_union``: IoU matrix (float32) of a dense overlap matrix (row / column 0 are
    the background; the object sizes are the full row and column sums). An all-zero matrix is returned as is."""
    o = _overlap_matrix(overlap)
    if o.sum() == 0:
        return overlap
    rows, cols = o.sum(axis=1, keepdims=True), o.sum(axis=0, keepdims=True)
    return _ratio_matrix(o, (rows.astype(np.float64) + cols) - o)


def intersection_over_true(overlap):
    """StarDist's ``intersection_over_true``: overlap / true object size (row sums), float32."""
    o = _overlap_matrix(overlap)
    if o.sum() == 0:
        return overlap
    return _ratio_matrix(o, o.sum(axis=1, keepdims=True).astype(np.float64))


def intersection_over_pred(overlap):
    """StarDist's ``intersection_over_pred``: overlap / predicted object size (column sums), float32."""
    o = _overlap_matrix(overlap)
    if o.sum() == 0:
        return overlap
    return _ratio_matrix(o, o.sum(axis=0, keepdims=True).astype(np.float64))


def relabel_sequential(label_field, offset=1):
    """Relabel to ``offset, offset + 1, ...`` in ascending order of the original labels, 0 kept as background
    (StarDist's ``relabel_sequential``, scikit-image's older one). Returns ``(relabeled, forward_map,
    inverse_map)``: ``forward_map[label_field] == relabeled`` (length ``max + 1``) and ``inverse_map[relabeled] ==
    label_field`` (length ``offset + number of labels``), all of the input's integer dtype -- or a wider unsigned
    one where the new labels need it, as StarDist; non-integer input is first cast to the smallest unsigned type
    holding its maximum. (Where StarDist would overflow a narrow signed dtype, the dtype is widened instead.)"""
    a = host_array(label_field, "label_field")
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise TypeError(f"label_field: expected an integer array, got {a.dtype}")
    if isinstance(offset, bool) or not isinstance(offset, numbers.Integral):
        raise TypeError(f"offset: expected an int, got {offset!r}")
    offset = int(offset)
    if offset <= 0:
        raise ValueError(f"offset: must be strictly positive, got {offset}")
    if a.size and a.min() < 0:
        raise ValueError("label_field: cannot relabel negative labels")
    max_label = int(a.max(initial=0))
    if not np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.min_scalar_type(max_label))
    ids = np.unique(a)
    ids = ids[ids != 0]
    new_max = offset - 1 + len(ids)
    out_type = a.dtype
    need = np.min_scalar_type(new_max)
    if need.itemsize > out_type.itemsize:
        out_type = need
    elif new_max > np.iinfo(out_type).max:
        out_type = np.promote_types(out_type, need)
    forward = np.zeros(max_label + 1, out_type)
    forward[ids] = np.arange(offset, new_max + 1)
    inverse = np.zeros(new_max + 1, out_type)
    inverse[offset:] = ids
    return forward[a], forward, inverse


def group_matching_labels(ys, thresh=1e-10, criterion="iou"):
    """Give matching objects of consecutive label images the same id (StarDist's ``group_matching_labels``, e.g.
    the frames of a time-lapse): frame 0 is kept; in each next frame an object matched (``matching(prev, y,
    thresh, criterion, report_matches=True)``, ``prev`` already regrouped) to an object of the previous frame takes
    its id, every other object a new id (max of frame 0 + 1, + 2, ... in order of frame and then label). ``ys``:
    a stack (n, ...) or a list of equally shaped label images, n >= 2. Returns an int32 stack; ``ys`` is not
    modified."""
    if isinstance(ys, np.ndarray) or _p.is_torch(ys):
        frames = [_labels(ys, "ys")]
        if frames[0].ndim < 2:
            raise ValueError("ys: a stack of label images must be at least 2-dimensional")
        frames = list(frames[0])
    else:
        frames = [_labels(y, "ys") for y in ys]
    if len(frames) < 2:
        raise ValueError(f"ys: need 2 or more label images, got {len(frames)}")
    if any(f.shape != frames[0].shape for f in frames):
        raise ValueError("ys: all label images must have the same shape")
    for f in frames:
        if f.size and f.min() < 0:
            raise ValueError("ys: labels must be non-negative")
    out = np.empty((len(frames),) + frames[0].shape, np.int32)
    out[0] = frames[0]
    next_id = int(out[0].max(initial=0)) + 1
    for k in range(1, len(frames)):
        y = frames[k].astype(np.int32, copy=False)
        res = matching(out[k - 1], y, thresh=thresh, criterion=criterion, report_matches=True)
        ids = _ids(y)
        new = np.zeros(len(ids), np.int64)
        matched = dict(res.matched_pairs[i][::-1] for i in res.matched_tps)  # id in y -> id in the previous frame
        hit = np.array([int(i) in matched for i in ids], bool)
        new[hit] = [matched[int(i)] for i in ids[hit]]
        new[~hit] = next_id + np.arange(int((~hit).sum()))
        next_id += int((~hit).sum())
        lut_ids = np.concatenate([[0], ids]).astype(np.int64)
        lut_new = np.concatenate([[0], new]).astype(np.int32)
        out[k] = lut_new[np.searchsorted(lut_ids, y)]
    return out
