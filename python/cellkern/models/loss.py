"""StarDist's training loss: binary cross-entropy on the probability, probability-weighted L1 on the distances
with a background regulariser."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["stardist_loss"]

_EPS = 1e-7  # Keras' epsilon, which StarDist's masked loss adds to the mask's mean


def stardist_loss(prob_logit, dist, prob_t, dist_t, weights=(1.0, 0.2), background_reg=1e-4):
    """``(total, prob_loss, dist_loss)`` scalar tensors.

    * prob_loss = mean binary cross-entropy between sigmoid(``prob_logit``) and ``prob_t`` (computed from the
      logit, which stays finite where Keras clips the probability to [1e-7, 1 - 1e-7]);
    * dist_loss = mean(m * |dist_t - dist|) / (mean(m) + 1e-7) + background_reg * mean((1 - m) * |dist|), with
      m = ``prob_t`` broadcast over the rays (StarDist's ``masked_loss_mae`` with the probability as the mask:
      the means run over the whole batch);
    * total = weights[0] * prob_loss + weights[1] * dist_loss.

    Shapes: ``prob_logit``, ``prob_t`` (N, 1, *spatial); ``dist``, ``dist_t`` (N, n_rays, *spatial).
    """
    prob_loss = F.binary_cross_entropy_with_logits(prob_logit, prob_t)
    err = (dist_t - dist).abs()
    dist_loss = (prob_t * err).mean() / (prob_t.mean() + _EPS)
    if background_reg:
        dist_loss = dist_loss + background_reg * ((1 - prob_t) * dist.abs()).mean()
    return weights[0] * prob_loss + weights[1] * dist_loss, prob_loss, dist_loss
