"""A state directory can hold anything an attacker (or an old version) left there: a checkpoint that is
a pickle is refused with an error naming the file, and never unpickled.

The payload's ``__reduce__`` creates a marker file when unpickled: if the marker exists, code ran. The
last test starts a real ``koala server`` process on such a directory (about 5 s)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from koala_async.errors import ConfigError
from koala_async.io.checkpoint import CHECKPOINT, LEGACY_CHECKPOINT, ServerStore


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: harmless, and visible."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.marker), "w")


def _plant(path: Path, marker: Path) -> None:
    """A torch.save file (a zip holding a pickle) with the payload inside an old-looking checkpoint."""
    buffer = io.BytesIO()
    torch.save({"format": 1, "version": 7, "learner": {"model": _Payload(marker)}}, buffer)
    path.write_bytes(buffer.getvalue())


@pytest.mark.parametrize("name", [CHECKPOINT, LEGACY_CHECKPOINT])
def test_a_pickled_checkpoint_is_refused_and_never_unpickled(tmp_path: Path, name: str) -> None:
    state_dir, marker = tmp_path / "state", tmp_path / "code-ran"
    state_dir.mkdir()
    _plant(state_dir / name, marker)
    with pytest.raises(ConfigError) as refused:
        ServerStore(state_dir).load(object(), object(), {})
    assert name in str(refused.value)
    assert not marker.exists(), "the checkpoint was unpickled"


def test_a_raw_pickle_named_like_the_checkpoint_is_refused(tmp_path: Path) -> None:
    import pickle

    state_dir, marker = tmp_path / "state", tmp_path / "code-ran"
    state_dir.mkdir()
    (state_dir / CHECKPOINT).write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ConfigError, match="not a readable checkpoint"):
        ServerStore(state_dir).load(object(), object(), {})
    assert not marker.exists()


@pytest.mark.parametrize("name", [CHECKPOINT, LEGACY_CHECKPOINT])
def test_a_real_server_refuses_a_pickled_checkpoint_with_a_clear_error(tmp_path: Path, name: str) -> None:
    state_dir, marker = tmp_path / "state", tmp_path / "code-ran"
    state_dir.mkdir()
    _plant(state_dir / name, marker)
    # No broker is needed: the state directory is read before the server connects anywhere.
    result = subprocess.run([sys.executable, "-m", "koala_async", "server", "--broker", "mqtt://127.0.0.1:9",
                             "--state-dir", str(state_dir)], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "koala: error:" in result.stderr and name in result.stderr, result.stderr[-2000:]
    assert not marker.exists(), "the server unpickled its checkpoint"
