import os

# Two xdist workers share the two cores: one XLA CPU thread per worker avoids oversubscription
# (export XLA_FLAGS yourself to override).
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Run a test in float64 (likelihood-accuracy tests); restores the default afterwards."""
    with jax.enable_x64(True):
        yield
