"""Running modules in eval mode without changing the mode their owner set."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` (and their children) in eval mode for the block, then restore every submodule's own mode.

    Restoring per submodule, not per top-level module, matters because Lightning keeps a mixed tree (a frozen
    teacher inside a training student) and warns about modules it finds left in eval mode when training starts.
    """
    saved = [(module, module.training) for root in modules for module in root.modules()]
    for root in modules:
        root.eval()
    try:
        yield
    finally:
        for module, training in saved:
            module.training = training
