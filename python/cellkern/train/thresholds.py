"""Choosing a StarDist model's prob and nms thresholds on validation data (StarDist's procedure)."""
from __future__ import annotations

import numbers

import numpy as np

from ..star import decode, matching_dataset

__all__ = ["optimize_thresholds"]


def _instances(model, prob, dist, shape, prob_thresh, nms_thresh):
    """Labels from one prediction: the model's own decode step (cellkern.models), else StarDist's 2D decode."""
    own = getattr(model, "instances_from_prediction", None)
    if own is not None:
        return own(prob, dist, shape, prob_thresh=prob_thresh, nms_thresh=nms_thresh)[0]
    if len(shape) != 2:
        raise ValueError("optimize_thresholds: 3D models need model.instances_from_prediction")
    return decode(prob, dist, tuple(model.config.grid), prob_thresh=prob_thresh, nms_thresh=nms_thresh,
                  shape=shape)[0]


def optimize_thresholds(model, X_val, Y_val, nms_threshs=(0.3, 0.4, 0.5), iou_threshs=(0.3, 0.5, 0.7),
                        measure="accuracy", tol=1e-2, maxiter=20, normalize=True, progress=True):
    """Chooses ``model.thresholds`` (``{"prob", "nms"}``) that segment the validation images best, as StarDist's
    ``optimize_thresholds`` does, and sets them on the model.

    The network runs once per image (``model.predict``); then for each ``nms_thresh`` in ``nms_threshs`` the
    ``prob_thresh`` is searched by golden-section search (``scipy.optimize.minimize_scalar``, method 'golden', the
    bracket (max prob / 2, max prob) over all images, tolerance ``tol``, at most ``maxiter`` iterations; values
    are clipped to the bracket) maximising the mean over ``iou_threshs`` of ``measure`` from
    :func:`cellkern.star.matching_dataset` ('accuracy' = tp / (tp + fp + fn), StarDist's default; or 'f1', ...).
    The nms threshold with the best value wins. ``X_val``/``Y_val``: sequences of images (``(*spatial)`` or
    ``(*spatial, C)``) and integer label images; they are read one at a time for the predictions.

    Returns ``{"prob": float, "nms": float, "measure": value at the optimum}``.
    """
    from scipy.optimize import minimize_scalar
    from .._optional import require

    tqdm = require("tqdm.auto", "optimize_thresholds").tqdm

    if len(X_val) != len(Y_val):
        raise ValueError(f"X_val and Y_val: {len(X_val)} images but {len(Y_val)} masks")
    if len(X_val) == 0:
        raise ValueError("X_val: no validation images")
    if isinstance(nms_threshs, numbers.Real):
        nms_threshs = (nms_threshs,)
    if isinstance(iou_threshs, numbers.Real):
        iou_threshs = (iou_threshs,)
    if len(nms_threshs) == 0 or any(not 0 <= t <= 1 for t in nms_threshs):
        raise ValueError(f"nms_threshs: expected values in [0, 1], got {nms_threshs!r}")
    Y = [np.asarray(Y_val[i]) for i in range(len(Y_val))]
    preds = []
    for i in tqdm(range(len(X_val)), desc="predicting validation set", disable=not progress, leave=False):
        prob, dist = model.predict(X_val[i], normalize=normalize)
        if prob.shape[: Y[i].ndim] != tuple(-(-s // g) for s, g in zip(Y[i].shape, model.config.grid)):
            raise ValueError(f"Y_val[{i}]: mask shape {Y[i].shape} does not match the prediction for X_val[{i}]")
        preds.append((prob, dist))
    max_prob = max(float(np.max(p)) for p, _ in preds)
    bracket = (max_prob / 2, max_prob)

    best = None
    for nms in nms_threshs:
        values = {}
        bar = tqdm(total=maxiter, desc=f"nms_thresh {nms:g}", disable=not progress, leave=False)

        def negative_measure(t, nms=nms, values=values, bar=bar):
            prob_thresh = float(np.clip(t, *bracket))
            if prob_thresh not in values:
                labels = [_instances(model, p, d, y.shape, prob_thresh, nms) for (p, d), y in zip(preds, Y)]
                stats = matching_dataset(Y, labels, thresh=tuple(iou_threshs), show_progress=False)
                values[prob_thresh] = float(np.mean([getattr(s, measure) for s in stats]))
                bar.update()
                bar.set_postfix_str(f"{prob_thresh:.3f} -> {values[prob_thresh]:.3f}")
            return -values[prob_thresh]

        opt = minimize_scalar(negative_measure, method="golden", bracket=bracket, tol=tol,
                              options={"maxiter": maxiter})
        bar.close()
        prob_thresh, value = float(np.clip(opt.x, *bracket)), -float(opt.fun)
        if best is None or value > best[2]:
            best = (prob_thresh, float(nms), value)
    model.thresholds = {"prob": best[0], "nms": best[1]}
    return {"prob": best[0], "nms": best[1], "measure": best[2]}
