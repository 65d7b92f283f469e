import gc
import os
from pathlib import Path

# Two xdist workers share the two cores: one XLA CPU thread per worker avoids oversubscription
# (export XLA_FLAGS yourself to override).
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

# JAX's persistent compilation cache, shared by the two workers and the subprocesses the tests
# start (snippets, devices): a program compiled once is loaded from disk when another module (after
# `_free_compiled_code`) or process compiles it again. Set before jax is imported; the directory
# is in .gitignore, so a fresh clone starts with an empty cache.
_CACHE = Path(__file__).resolve().parents[1] / ".jax_cache"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_code():
    """Drop JAX's compiled executables after each test module.

    XLA's CPU backend maps three memory regions per compiled executable and keeps them while the
    executable is cached: one worker running the whole suite compiles thousands, and crossing the
    kernel's map limit (vm.max_map_count, 65530 by default) kills the worker. Modules share few
    compiled programs, so clearing between modules costs little.
    """
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture
def x64():
    """Run a test in float64 (likelihood-accuracy tests); restores the default afterwards."""
    with jax.enable_x64(True):
        yield


# Hypothesis profiles of the property-based tests (tests/test_properties.py): "fast" by default
# (`make test`), "thorough" with NSI_HYPOTHESIS_PROFILE=thorough (more examples). Per-test example
# counts scale with the profile's max_examples. Hypothesis is a dev dependency: the dependency-floor
# run (`make test-min`) does not install it, nor run that file.
try:
    from hypothesis import settings as _hypothesis_settings
except ImportError:  # pragma: no cover
    pass
else:
    # "fast" (CI) draws the same examples on every run; "thorough" explores new ones each time
    _hypothesis_settings.register_profile(
        "fast", max_examples=5, deadline=None, print_blob=True, derandomize=True
    )
    _hypothesis_settings.register_profile(
        "thorough", max_examples=50, deadline=None, print_blob=True
    )
    _hypothesis_settings.load_profile(os.environ.get("NSI_HYPOTHESIS_PROFILE", "fast"))
