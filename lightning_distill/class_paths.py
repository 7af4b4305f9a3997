"""How configs name classes: by class path (``lightning_distill.data.samplers.UniformSampler``), or, for the
families that grids and file names refer to, by a short key (``uniform``, ``rep``, ``hrnn``)."""

from __future__ import annotations

from typing import Any, ClassVar


def class_path(cls: type) -> str:
    """The importable dotted path of ``cls``, as a config's ``class_path`` names it."""
    return f"{cls.__module__}.{cls.__qualname__}"


class Keyed:
    """Mixed into the base of a family of classes named by a short key (frame samplers, loss terms, encoders).

    The base declares a ``registry: ClassVar[dict[str, type[Base]]] = {}`` of its own; every subclass that sets
    ``key`` is entered in it under that key when the subclass is defined.
    """

    key: ClassVar[str | None] = None
    registry: ClassVar[dict[str, type]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("key"):
            cls.registry[cls.key] = cls
