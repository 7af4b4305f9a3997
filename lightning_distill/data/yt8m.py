"""YouTube-8M feature layout and quantisation, shared by the reader, the frame store and the data module."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

RGB_DIM = 1024
AUDIO_DIM = 128
FEATURE_DIM = RGB_DIM + AUDIO_DIM  # one frame as the models see it: rgb then audio
MAX_FRAMES = 300  # the official readers keep the first 300 one-second frames

NUM_CLASSES = {"2017": 4716, "2018": 3862}
# A data set whose label vocabulary is not its record version's (the synthetic one) says so in this file beside
# its shards: {"num_classes": N}.
VOCABULARY_FILE = "vocabulary.json"
ID_KEYS = {"2017": "video_id", "2018": "id"}

# uint8 q -> float: x = q * 4/255 + 4/512 - 2 (the starter code's Dequantize(max=2, min=-2)).
DEQUANT_SCALE = 4.0 / 255.0
DEQUANT_BIAS = 4.0 / 512.0 - 2.0


def dequantize(quantized: np.ndarray) -> np.ndarray:
    """Map uint8 features to float32 in [-2, 2) exactly as the YouTube-8M starter code does."""
    return quantized.astype(np.float32) * np.float32(DEQUANT_SCALE) + np.float32(DEQUANT_BIAS)


def write_vocabulary(directory: Path, num_classes: int) -> None:
    """Declare the vocabulary size of the shards in ``directory`` (``VOCABULARY_FILE``)."""
    (Path(directory) / VOCABULARY_FILE).write_text(json.dumps({"num_classes": num_classes}) + "\n")


def declared_vocabulary(shard: Path) -> int | None:
    """The vocabulary size declared beside ``shard``, if any."""
    path = Path(shard).parent / VOCABULARY_FILE
    return int(json.loads(path.read_text())["num_classes"]) if path.is_file() else None
