"""Checkpoint checks: each mismatch is one line naming the file and the first tensor that differs."""

from __future__ import annotations

import pathlib

import pytest
import torch

from lightning_distill.errors import ConfigError
from lightning_distill.training.checkpoints import check_state_fits, read_checkpoint

EXPECTED = {"encoder.w": torch.zeros(4, 3), "head.w": torch.zeros(8, 4)}


def test_a_fitting_state_passes():
    check_state_fits({k: v.clone() for k, v in EXPECTED.items()}, EXPECTED, source="checkpoint a.ckpt")


@pytest.mark.parametrize(
    ("stored", "fragment"),
    [
        ({"encoder.w": torch.zeros(4, 3)}, "it has no head.w"),
        ({"encoder.w": torch.zeros(4, 3), "head.w": torch.zeros(16, 4)}, "head.w is [16, 4] there but [8, 4] here"),
        ({**EXPECTED, "extra.b": torch.zeros(1)}, "it has extra.b, unknown here"),
    ],
)
def test_mismatches_name_the_tensor(stored, fragment):
    with pytest.raises(ConfigError) as error:
        check_state_fits(stored, EXPECTED, source="checkpoint a.ckpt")
    message = str(error.value)
    assert message.startswith("checkpoint a.ckpt does not fit this model") and fragment in message
    assert "\n" not in message


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="missing.ckpt does not exist"):
        read_checkpoint(tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"\x00junk")
    with pytest.raises(ConfigError, match="junk.ckpt cannot be read"):
        read_checkpoint(tmp_path / "junk.ckpt")
    torch.save({"weights": 1}, tmp_path / "plain.pt")
    with pytest.raises(ConfigError, match="plain.pt has no state_dict"):
        read_checkpoint(tmp_path / "plain.pt")


class Payload:
    """Unpickled by a full unpickler, this creates ``marker``: what a malicious checkpoint would do, harmlessly."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def payload_checkpoint(path: pathlib.Path, marker: pathlib.Path) -> pathlib.Path:
    """A Lightning-shaped checkpoint whose hyper-parameters carry ``Payload``."""
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": {"x": Payload(marker)}}, path)
    return path


def test_a_payload_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    path = payload_checkpoint(tmp_path / "evil.ckpt", marker)
    for weights in (True, False):
        with pytest.raises(ConfigError) as error:
            read_checkpoint(path, weights=weights)
        message = str(error.value)
        assert message.startswith(f"checkpoint {path} holds Python objects") and "refused" in message
        assert "\n" not in message
    assert not marker.exists()
    # The check is not vacuous: torch's full unpickler runs the payload.
    torch.load(path, weights_only=False)
    assert marker.exists()
