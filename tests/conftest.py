"""Fixtures shared by the end-to-end tests: a small synthetic YouTube-8M data set made once per session."""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import lightning.pytorch  # noqa: F401 - see below
import pytest
import torch

from lightning_distill.data.synthetic import generate

# Lightning adds a logging handler bound to sys.stderr when first imported. `vdistill` imports it lazily, so without
# this import the first CLI test to run would bind it to that test's captured stream, closed once the test ends.

SYNTHETIC_CLASSES = 8

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    # `-n N` runs N test processes side by side; torch's default of one thread per core in each of them would put
    # N times as many busy threads as cores on the machine (spinning OpenMP threads slow every test down).
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(_threads)  # for the `vdistill` processes tests start
    torch.set_num_threads(_threads)


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
