import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("SPACY_RNN_DATA", ROOT.parent / "shared" / "data"))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def pytest_collection_modifyitems(config, items):
    import torch

    skip_slow = pytest.mark.skip(reason="slow: pass --runslow to run")
    skip_gpu = pytest.mark.skip(reason="gpu: no CUDA device here")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.exists():
        pytest.skip(f"real datasets not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def fixtures_dir():
    return ROOT / "assets" / "fixtures"


@pytest.fixture(scope="session")
def fixture_corpus(tmp_path_factory):
    """The bundled review fixture converted to train/dev/test .spacy folders."""
    out = tmp_path_factory.mktemp("fixture_corpus")
    subprocess.run(
        [sys.executable, "-m", "spacy_rnn", "convert-amazon",
         str(ROOT / "assets" / "fixtures" / "reviews_tiny.jsonl"), str(out)],
        check=True, capture_output=True,
    )
    return out
