import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_si import datasets
from numpyro_si.oracle import GaussianMixture

NAMES = sorted(datasets.DATASETS)
N_SE = 5.0  # tolerance in Monte Carlo standard errors; all keys are fixed, so no flakiness
N = 500  # shared by the generic tests, so each generator compiles once per dtype


@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype_and_determinism(name):
    f = datasets.DATASETS[name]
    a = f(jax.random.key(1), N)
    assert a.shape == (N, 2)
    assert a.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(a)))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(f(jax.random.key(1), N)))
    assert not np.allclose(np.asarray(a), np.asarray(f(jax.random.key(2), N)))
    np.testing.assert_array_equal(
        np.asarray(a), np.asarray(datasets.load(name, jax.random.key(1), N))
    )


@pytest.mark.parametrize("name", NAMES)
def test_float64_under_x64(name):
    n = 7  # also an odd n, not a multiple of 5 (two_moons, pinwheel split points by class)
    with jax.enable_x64(True):
        x = datasets.load(name, jax.random.key(0), n)
        assert x.shape == (n, 2)
        assert x.dtype == jnp.float64
        assert bool(jnp.all(jnp.isfinite(x)))
        if name == "checkerboard":
            assert (
                datasets.checkerboard(jax.random.key(0), n, dtype=jnp.float32).dtype == jnp.float32
            )
            lp = datasets.checkerboard_log_prob(x)
            assert lp.dtype == jnp.float64
            assert bool(jnp.all(jnp.isfinite(lp)))
        if name == "gaussian_mixture_2d":
            assert datasets.gaussian_mixture_2d_oracle().means.dtype == jnp.float64


def test_inside_user_jit_and_vmap():
    f = jax.jit(datasets.checkerboard, static_argnums=1)
    np.testing.assert_array_equal(
        np.asarray(f(jax.random.key(3), N)), np.asarray(datasets.checkerboard(jax.random.key(3), N))
    )
    batched = jax.vmap(lambda k: datasets.eight_gaussians(k, N))(
        jax.random.split(jax.random.key(0), 3)
    )
    assert batched.shape == (3, N, 2)


# ----------------------------------------------------------------------------------------------
# checkerboard
# ----------------------------------------------------------------------------------------------


def test_checkerboard_log_prob_values():
    x = jnp.array([[1.0, 1.0], [-1.0, 1.0], [-3.0, -3.0], [3.0, -1.0], [5.0, 0.0], [0.0, -4.5]])
    lp = datasets.checkerboard_log_prob(x)
    expected = [-math.log(32), -np.inf, -math.log(32), -math.log(32), -np.inf, -np.inf]
    np.testing.assert_allclose(np.asarray(lp), expected, rtol=1e-6)
    assert datasets.CHECKERBOARD_ENTROPY == pytest.approx(3.4657359, abs=1e-6)
    # The density integrates to 1: 8 dark squares of area 4 at density 1/32.
    grid = jnp.linspace(-4.0, 4.0, 401)[:-1] + 0.01
    xx, yy = jnp.meshgrid(grid, grid)
    dens = jnp.exp(datasets.checkerboard_log_prob(jnp.stack([xx, yy], -1)))
    assert float(jnp.sum(dens) * 0.02**2) == pytest.approx(1.0, abs=1e-4)


def test_checkerboard_support_and_uniform_squares():
    n = 64_000
    x = datasets.checkerboard(jax.random.key(4), n)
    lp = datasets.checkerboard_log_prob(x)
    assert bool(jnp.all(jnp.isfinite(lp)))  # every point in a dark square
    assert float(-jnp.mean(lp)) == pytest.approx(datasets.CHECKERBOARD_ENTROPY)

    cells = np.asarray(jnp.floor(x / 2)).astype(int) + 2  # in {0, 1, 2, 3}^2
    counts = np.zeros((4, 4), int)
    np.add.at(counts, (cells[:, 0], cells[:, 1]), 1)
    dark = (np.add.outer(np.arange(4), np.arange(4)) % 2) == 0
    assert dark.sum() == 8 and counts[~dark].sum() == 0
    freq = counts[dark] / n
    se = math.sqrt((1 / 8) * (7 / 8) / n)  # multinomial standard error per square
    assert np.all(np.abs(freq - 1 / 8) < N_SE * se), freq

    # Uniform within the squares too: the position inside a square is U[0, 2)^2.
    offsets = np.asarray(x) - 2 * np.floor(np.asarray(x) / 2)
    np.testing.assert_allclose(offsets.mean(0), [1.0, 1.0], atol=N_SE * math.sqrt(1 / 3 / n))


# ----------------------------------------------------------------------------------------------
# eight Gaussians, pinwheel, two moons
# ----------------------------------------------------------------------------------------------


def test_eight_gaussians_modes():
    n, scale, std = 40_000, 4.0, 0.5
    x = datasets.eight_gaussians(jax.random.key(5), n, scale, std)
    angles = np.arctan2(np.asarray(x[:, 1]), np.asarray(x[:, 0]))
    mode = np.round(angles / (np.pi / 4)).astype(int) % 8  # nearest centre
    freq = np.bincount(mode, minlength=8) / n
    se = math.sqrt((1 / 8) * (7 / 8) / n)
    assert np.all(np.abs(freq - 1 / 8) < N_SE * se), freq

    # Centres on the circle of radius `scale`; within-mode spread `std`.
    centres = scale * np.stack([np.cos(mode * np.pi / 4), np.sin(mode * np.pi / 4)], -1)
    resid = np.asarray(x) - centres
    np.testing.assert_allclose(resid.mean(0), 0.0, atol=N_SE * std / math.sqrt(n))
    np.testing.assert_allclose(resid.std(0), std, rtol=0.02)


def test_pinwheel_radii_and_arms():
    n = 10_003  # not a multiple of 5
    x = np.asarray(datasets.pinwheel(jax.random.key(6), n))
    assert x.shape == (n, 2)
    # Rotation preserves the norm: |x| / 2 = |f|, f = (r, s), r ~ N(1, 0.3^2), s ~ N(0, 0.1^2).
    f = np.random.default_rng(0).normal(size=(400_000, 2)) * [0.3, 0.1] + [1.0, 0.0]
    ref = np.linalg.norm(f, axis=1)
    radius = np.linalg.norm(x, axis=1) / 2
    assert abs(radius.mean() - ref.mean()) < N_SE * ref.std() / math.sqrt(n)
    # x / 2 = f e^{-i a} as complex numbers, a = 2 pi k / 5 + 0.25 exp(r): so -arg(x) - a is
    # arg(f) ~ s / r, centred with spread ~0.1 (uniform on the arm spacing if the arms were wrong).
    arm = 2 * np.pi / 5
    resid = (-np.arctan2(x[:, 1], x[:, 0]) - 0.25 * np.exp(radius) + arm / 2) % arm - arm / 2
    assert abs(resid.mean()) < 0.01
    assert 0.08 < resid.std() < 0.12


N_MOONS = 20_000  # both two-moons tests share one compilation (noise is traced)


def test_two_moons_noise_free_geometry():
    n = N_MOONS
    x = np.asarray(datasets.two_moons(jax.random.key(7), n, noise=0.0)) / 2 + [0.5, 0.25]
    on_upper = np.isclose(np.hypot(x[:, 0], x[:, 1]), 1.0, atol=1e-5) & (x[:, 1] >= -1e-6)
    on_lower = np.isclose(np.hypot(x[:, 0] - 1, x[:, 1] - 0.5), 1.0, atol=1e-5) & (
        x[:, 1] <= 0.5 + 1e-6
    )
    assert np.all(on_upper | on_lower)
    assert (on_upper & ~on_lower).sum() == n // 2  # scikit-learn's split, n // 2 on top


def test_two_moons_centred():
    n, noise = N_MOONS, 0.1
    x = np.asarray(datasets.two_moons(jax.random.key(8), n, noise))
    # Per-coordinate std is about 2 * (0.87, 0.5) < 2, so 2 / sqrt(n) bounds the standard error.
    np.testing.assert_allclose(x.mean(0), 0.0, atol=N_SE * 2.0 / math.sqrt(n))


# ----------------------------------------------------------------------------------------------
# Gaussian mixture
# ----------------------------------------------------------------------------------------------


def test_gaussian_mixture_2d_mean_matches_oracle():
    oracle = datasets.gaussian_mixture_2d_oracle()
    assert isinstance(oracle, GaussianMixture) and oracle.dim == 2
    n = 40_000
    x = datasets.gaussian_mixture_2d(jax.random.key(9), n)
    w, m, c = (
        np.asarray(a, dtype=np.float64) for a in (oracle.weights, oracle.means, oracle.covariances)
    )
    mean = w @ m
    cov = np.einsum("k,kij->ij", w, c + np.einsum("ki,kj->kij", m, m)) - np.outer(mean, mean)
    se = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(np.asarray(x).mean(0) - mean) < N_SE * se)
    # One jitted call (eager Cholesky/solves compile op by op, which is slow).
    log_prob, resp = jax.jit(lambda o, y: (o.log_prob(y), o.responsibilities(y)))(oracle, x[:2000])
    assert bool(jnp.all(jnp.isfinite(log_prob)))
    # Well separated: almost every point is assigned to one component with certainty.
    resp = np.asarray(resp)
    assert np.mean(resp.max(-1) > 0.99) > 0.95


# ----------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------


def test_load_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        datasets.load("spirals", jax.random.key(0), 10)
    for name in NAMES:
        assert name in str(info.value)


@pytest.mark.parametrize("n", [0, -3, 2.5, "10", None, True, np.float32(4)])
def test_bad_n_raises(n):
    with pytest.raises(ValueError, match="positive int"):
        datasets.load("checkerboard", jax.random.key(0), n)
    with pytest.raises(ValueError, match="positive int"):
        datasets.two_moons(jax.random.key(0), n)


def test_numpy_int_n_and_bad_dtype():
    assert datasets.load("pinwheel", jax.random.key(0), np.int64(N)).shape == (N, 2)
    with pytest.raises(ValueError, match="floating"):
        datasets.eight_gaussians(jax.random.key(0), 10, dtype=jnp.int32)
