"""Shared test helpers: paths to ../shared/data and small ONNX builders."""
from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        raise RuntimeError(f"the shared data folder {SHARED} is required for the tests (../shared beside the repo)")
    return SHARED


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def interruptible() -> None:
    """``preexec_fn`` for a child that a test interrupts with SIGINT: the default disposition, as from a terminal.
    A shell that starts a job in the background without job control (``cmd &``) sets SIGINT to ignored, and
    the child (and pytest's other children) would inherit it: Ctrl-C would then do nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
