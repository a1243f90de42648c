import pytest

from softsync.datasets import load_dataset


@pytest.fixture(scope="session")
def synthetic():
    """The seeded synthetic set (2048 training samples of 1×8×8, 4 classes)."""
    return load_dataset("synthetic", seed=0, synthetic_size=2048)
