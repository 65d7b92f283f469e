import jax
import pytest


@pytest.fixture
def x64():
    """Run a test in float64 (likelihood-accuracy tests); restores the default afterwards."""
    with jax.enable_x64(True):
        yield
