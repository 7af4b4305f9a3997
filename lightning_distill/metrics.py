"""Shortcut: ``from lightning_distill.metrics import YT8MMetrics``."""

from lightning_distill.evaluation.metrics import YT8MMetrics

__all__ = ["YT8MMetrics"]
