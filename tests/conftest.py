"""Fixtures shared by the end-to-end tests: a small synthetic YouTube-8M data set made once per session."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import lightning.pytorch  # noqa: F401 - see below
import pytest

from lightning_distill.data.synthetic import generate

# Lightning adds a logging handler bound to sys.stderr when first imported. `vdistill` imports it lazily, so without
# this import the first CLI test to run would bind it to that test's captured stream, closed once the test ends.

SYNTHETIC_CLASSES = 8


@pytest.fixture(scope="session")
def synthetic_tfrecords(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of train/validate/test frame-level TFRecords: 48/16/16 videos of 30-60 frames, 8 classes."""
    root = tmp_path_factory.mktemp("synthetic")
    generate(
        root,
        train_videos=48,
        validate_videos=16,
        test_videos=16,
        num_classes=SYNTHETIC_CLASSES,
        min_frames=30,
        max_frames=60,
        shards_per_split=1,
        seed=0,
    )
    return root


@pytest.fixture(autouse=True, scope="session")
def _argv():
    """main(args) stands for the command line; pytest's own arguments must not look like a second one (for the
    whole session: module-scoped fixtures build CLIs too)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["vdistill"])
        yield


@pytest.fixture(autouse=True)
def _collect_garbage():
    yield
    # A CLI, its trainer and its model reference each other; collect them now, or paper-size models (GBs)
    # pile up across tests.
    gc.collect()
