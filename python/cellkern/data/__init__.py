"""Synthetic data for tests, demos and training: star-convex nuclei with fluorescence-like images."""

from .synthetic import digital_segment, synthetic_nuclei  # noqa: F401
