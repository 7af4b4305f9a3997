"""Class paths: how configs name classes (``lightning_distill.data.samplers.UniformSampler``)."""

from __future__ import annotations


def class_path(cls: type) -> str:
    """The importable dotted path of ``cls``, as a config's ``class_path`` names it."""
    return f"{cls.__module__}.{cls.__qualname__}"
