"""Data for cellkern: synthetic star-convex nuclei (tests, demos, training) and percentile normalisation."""

from .normalize import normalize, normalize_block, percentiles  # noqa: F401
from .synthetic import digital_segment, synthetic_nuclei, synthetic_training_set  # noqa: F401
