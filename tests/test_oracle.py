"""The Gaussian-mixture oracle (docs/math.md section 6): exact fields checked against the transport
equation, automatic differentiation, the boundary densities, the conditional-expectation property
(by Monte Carlo), and GaussianMixture itself."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import numpyro_si as nsi
from numpyro_si.oracle import GaussianMixture, GaussianMixtureOracle


def _mixture(seed, dim, n_components, spread=3.0, scale=0.5):
    """A fixed random mixture built with NumPy (no JAX compilation): means ~ N(0, spread^2 I),
    covariances scale^2 (I + W W^T / d) / 2, weights Dirichlet(2)."""
    rng = np.random.default_rng(seed)
    means = spread * rng.standard_normal((n_components, dim))
    w = rng.standard_normal((n_components, dim, dim))
    covs = scale**2 * 0.5 * (np.eye(dim) + w @ np.swapaxes(w, -1, -2) / dim)
    return GaussianMixture(rng.dirichlet(2.0 * np.ones(n_components)), means, covs)

DIM = 3


def _oracle(name):
    """Oracles on d = 3 random mixtures; two-sided ones get a Gaussian-mixture base."""
    target = _mixture(10, DIM, 3)
    base = _mixture(11, DIM, 2)
    two_sided = {
        "linear-brownian": nsi.LinearInterpolant(nsi.BrownianGamma(1.0)),
        "linear-deterministic": nsi.LinearInterpolant(),
        "trig-quadratic": nsi.TrigonometricInterpolant(nsi.QuadraticGamma(1.0)),
        "vp-trig": nsi.VPTrigonometricInterpolant(),
        "encoder-decoder": nsi.EncoderDecoderInterpolant(),
    }
    one_sided = {
        "one-sided-linear": nsi.OneSidedLinearInterpolant(),
        "one-sided-trig": nsi.OneSidedTrigonometricInterpolant(),
        "one-sided-vp": nsi.OneSidedVPInterpolant(),
    }
    if name in two_sided:
        return GaussianMixtureOracle(two_sided[name], target, base)
    return GaussianMixtureOracle(one_sided[name], target)


ORACLES = [
    "linear-brownian", "linear-deterministic", "trig-quadratic", "vp-trig", "encoder-decoder",
    "one-sided-linear", "one-sided-trig", "one-sided-vp",
]
INTERIOR_T = np.array([0.05, 0.3, 0.45, 0.7, 0.95])


@pytest.fixture(params=ORACLES)
def oracle(request, x64):
    return _oracle(request.param)


def _points(ts, n=7):
    """(T, n, d) fixed points, spread over the bulk and the tails of every marginal."""
    return 2.5 * np.random.default_rng(12).standard_normal((len(ts), n, DIM))


def _on_grid(fn, ts, xs):
    """fn(t, x) over ts (T,) and xs (T, n, d)."""
    return jax.jit(jax.vmap(jax.vmap(fn, (None, 0)), (0, 0)))(jnp.asarray(ts), xs)


# ----------------------------------------------------------------------------------------------
# exact identities
# ----------------------------------------------------------------------------------------------


def test_transport_equation_holds_to_rounding(oracle):
    """d/dt log rho + div b + b . grad log rho = 0 (the transport equation divided by rho)."""

    def terms(t, x):
        dt_log_rho = jax.grad(oracle.log_density, argnums=0)(t, x)
        div_b = jnp.trace(jax.jacfwd(oracle.velocity, argnums=1)(t, x))
        b_dot_s = oracle.velocity(t, x) @ jax.grad(oracle.log_density, argnums=1)(t, x)
        return jnp.stack([dt_log_rho, div_b, b_dot_s])

    out = _on_grid(terms, INTERIOR_T, _points(INTERIOR_T))
    residual = jnp.sum(out, axis=-1)
    scale = jnp.sum(jnp.abs(out), axis=-1)
    # The terms are individually up to O(10-100) and cancel: what is left is float64 rounding.
    assert float(jnp.max(scale)) > 1.0
    np.testing.assert_array_less(jnp.abs(residual), 1e-11 * (1.0 + scale))


def test_score_is_gradient_of_log_density(oracle):
    ts = np.array([0.0, *INTERIOR_T, min(1.0, oracle.interpolant.time_max)])
    xs = _points(ts)
    got = _on_grid(oracle.score, ts, xs)
    expected = _on_grid(jax.grad(oracle.log_density, argnums=1), ts, xs)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_log_density_at_the_ends(oracle):
    x = _points([0])[0]

    @jax.jit
    def densities(o, x):
        return (
            jax.vmap(lambda y: o.log_density(0.0, y))(x), o.base.log_prob(x),
            o.base_distribution().log_prob(x),
            jax.vmap(lambda y: o.log_density(1.0, y))(x), o.target.log_prob(x),
        )

    at_0, base, base_numpyro, at_1, target = densities(oracle, x)
    np.testing.assert_allclose(at_0, base, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(at_0, base_numpyro, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(at_1, target, rtol=1e-12, atol=1e-12)


def test_velocity_decomposes_into_v_and_denoiser(oracle):
    """b = v - gamma gamma' s = v + gamma' eta_z, and eta_z = -gamma s."""
    ts = np.array([0.0, *INTERIOR_T, min(1.0, oracle.interpolant.time_max)])
    xs = _points(ts)
    it = oracle.interpolant

    def pieces(t, x):
        s = oracle.score(t, x)
        return (oracle.velocity(t, x), oracle.v(t, x), oracle.denoiser(t, x), s,
                it.gamma(t), it.gamma_dgamma(t), it.dgamma(t))

    b, v, eta, s, g, ggd, dg = _on_grid(pieces, ts, xs)
    np.testing.assert_allclose(b, v - ggd[..., None] * s, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(eta, -g[..., None] * s, rtol=1e-12, atol=1e-12)
    # b = v + gamma' eta_z inside (0, 1); at the ends gamma' is defined as 0 while gamma' eta_z =
    # -gamma gamma' s need not vanish (Brownian gamma), which is why b uses gamma gamma'.
    inner = slice(1, -1)
    np.testing.assert_allclose(
        b[inner], v[inner] + dg[inner][..., None] * eta[inner], rtol=1e-10, atol=1e-10
    )
    if isinstance(it, nsi.AbstractOneSidedInterpolant):
        np.testing.assert_array_equal(b, v)


def test_fields_are_finite_at_the_ends(oracle):
    ts = np.array([0.0, min(1.0, oracle.interpolant.time_max)])
    xs = _points(ts)
    fields = _on_grid(
        lambda t, x: jnp.stack([oracle.velocity(t, x), oracle.score(t, x), oracle.v(t, x),
                                oracle.denoiser(t, x)]),
        ts, xs,
    )
    assert bool(jnp.all(jnp.isfinite(fields)))


# ----------------------------------------------------------------------------------------------
# Monte Carlo: the fields are the conditional expectations they claim to be
# ----------------------------------------------------------------------------------------------


def _orthogonality_z_scores(residual, xt):
    """E[r] = 0 and E[r x_t^T] = 0 for a conditional-expectation residual r (any test function of
    x_t is orthogonal to it). Returns the sample means divided by their standard errors."""
    n = residual.shape[0]
    features = jnp.concatenate([jnp.ones((n, 1)), xt], axis=1)  # g(x) = (1, x)
    products = residual[:, :, None] * features[:, None, :]  # (n, d, d + 1)
    mean = jnp.mean(products, axis=0)
    se = jnp.std(products, axis=0, ddof=1) / jnp.sqrt(n)
    return mean / se


def _conditional_expectation_residuals(name, t, n=4000):
    """Exact draws of x_t and the residuals (target - field) of b, v and the denoiser."""
    return _residuals(_oracle(name), t, n)


@functools.partial(jax.jit, static_argnames=("n",))
def _residuals(oracle, t, n):
    it = oracle.interpolant
    k0, k1, kz = jax.random.split(jax.random.key(15), 3)
    x1, _ = oracle.target.sample(k1, n)
    if isinstance(it, nsi.AbstractOneSidedInterpolant):
        x0 = jax.random.normal(k0, x1.shape)  # the one-sided base draw is x0 ~ N(0, I) ...
        z = jnp.zeros_like(x0)  # ... and z does not enter (gamma = 0)
    else:
        x0, _ = oracle.base.sample(k0, n)
        z = jax.random.normal(kz, x0.shape)
    xt = jax.vmap(it.interpolate, (None, 0, 0, 0))(t, x0, x1, z)
    i_dot = jax.vmap(it.deterministic_time_derivative, (None, 0, 0))(t, x0, x1)
    b, v, eta = jax.vmap(lambda x: (oracle.velocity(t, x), oracle.v(t, x), oracle.denoiser(t, x)))(xt)
    residuals = {"b": i_dot + it.dgamma(t) * z - b, "v": i_dot - v, "denoiser": z - eta}
    return xt, residuals, b


@pytest.mark.parametrize("field", ["b", "v", "denoiser"])
@pytest.mark.parametrize("name", ["linear-brownian", "trig-quadratic", "one-sided-trig"])
@pytest.mark.parametrize("t", [0.3, 0.8])
def test_fields_are_conditional_expectations(name, t, field, x64):
    """b = E[I_dot + gamma' z | x_t], v = E[I_dot | x_t], eta_z = E[z | x_t]: the residual is
    orthogonal to every function of x_t; checked for g(x) = 1 and g(x) = x by Monte Carlo."""
    xt, residuals, _ = _conditional_expectation_residuals(name, t)
    if field == "denoiser" and name.startswith("one-sided"):
        np.testing.assert_array_equal(residuals[field], 0.0)  # z is absent: gamma = 0
        return
    scores = _orthogonality_z_scores(residuals[field], xt)
    assert bool(jnp.all(jnp.abs(scores) < 4.0)), scores


@pytest.mark.parametrize("name", ["linear-brownian", "one-sided-trig"])
def test_conditional_expectation_check_has_power(name, x64):
    """The same check (same draws) rejects a velocity 10% off."""
    xt, residuals, b = _conditional_expectation_residuals(name, 0.3)
    wrong = _orthogonality_z_scores(residuals["b"] + 0.1 * b, xt)  # residual of 0.9 b
    assert bool(jnp.any(jnp.abs(wrong) > 4.0))


@pytest.mark.parametrize("name", ["linear-brownian", "one-sided-linear"])
def test_marginal_samples_and_score_stein_identity(name, x64):
    """sample_marginal has mean alpha m0 + beta m1 and covariance alpha^2 C0 + beta^2 C1 +
    gamma^2 I; the score satisfies Stein's identities E[s] = 0, E[s x^T] = -I under it."""
    oracle = _oracle(name)
    it = oracle.interpolant
    t, n = 0.4, 4000

    @jax.jit
    def draws_and_scores(o, key):
        x = o.sample_marginal(key, t, n)
        return x, jax.vmap(lambda y: o.score(t, y))(x)

    x, s = draws_and_scores(oracle, jax.random.key(16))

    def moments(mix):
        m = mix.weights @ mix.means
        second = jnp.einsum("k,kij->ij", mix.weights,
                            mix.covariances + jnp.einsum("ki,kj->kij", mix.means, mix.means))
        return m, second - jnp.outer(m, m)

    (m0, c0), (m1, c1) = moments(oracle.base), moments(oracle.target)
    a, b, g = it.alpha(t), it.beta(t), it.gamma(t)
    mean = a * m0 + b * m1
    cov = a**2 * c0 + b**2 * c1 + g**2 * jnp.eye(oracle.dim)
    _assert_moments(x, mean, cov)

    sx = s[:, :, None] * x[:, None, :]
    se_s = jnp.std(s, axis=0, ddof=1) / jnp.sqrt(n)
    assert bool(jnp.all(jnp.abs(jnp.mean(s, axis=0)) < 4 * se_s))
    se_sx = jnp.std(sx, axis=0, ddof=1) / jnp.sqrt(n)
    assert bool(jnp.all(jnp.abs(jnp.mean(sx, axis=0) + jnp.eye(oracle.dim)) < 4 * se_sx))


def _assert_moments(x, mean, cov):
    """Sample mean and covariance within 4 Monte Carlo standard errors (computed from x)."""
    n = x.shape[0]
    se_mean = jnp.std(x, axis=0, ddof=1) / jnp.sqrt(n)
    assert bool(jnp.all(jnp.abs(jnp.mean(x, axis=0) - mean) < 4 * se_mean)), (x.mean(0), mean)
    centred = x - mean
    products = centred[:, :, None] * centred[:, None, :]
    se_cov = jnp.std(products, axis=0, ddof=1) / jnp.sqrt(n)
    cov_hat = jnp.mean(products, axis=0)
    assert bool(jnp.all(jnp.abs(cov_hat - cov) < 4 * se_cov)), (cov_hat, cov)


# ----------------------------------------------------------------------------------------------
# GaussianMixture
# ----------------------------------------------------------------------------------------------


def _scipy_log_prob(mix, x):
    comps = [
        np.log(w) + stats.multivariate_normal(np.asarray(m), np.asarray(c)).logpdf(np.asarray(x))
        for w, m, c in zip(mix.weights, mix.means, mix.covariances, strict=True)
    ]
    return np.logaddexp.reduce(np.stack(comps), axis=0)


@pytest.mark.parametrize("dim, n_components", [(1, 3), (2, 1), (5, 3)])
def test_mixture_log_prob_matches_scipy_and_numpyro(dim, n_components, x64):
    mix = _mixture(20 + dim, dim, n_components)
    x = 3.0 * np.random.default_rng(21).standard_normal((2, 4, dim))
    d = mix.to_numpyro()
    assert d.event_shape == (dim,) and d.batch_shape == ()
    lp, lp_numpyro = jax.jit(lambda m, x: (m.log_prob(x), m.to_numpyro().log_prob(x)))(mix, x)
    assert lp.shape == (2, 4)
    np.testing.assert_allclose(lp, _scipy_log_prob(mix, x.reshape(-1, dim)).reshape(2, 4),
                               rtol=1e-12)
    np.testing.assert_allclose(lp_numpyro, lp, rtol=1e-12)


def test_mixture_normalises_weights_and_responsibilities(x64):
    mix = GaussianMixture(jnp.array([1.0, 3.0]), jnp.array([[0.0], [1.0]]), jnp.ones((2, 1, 1)))
    np.testing.assert_allclose(mix.weights, [0.25, 0.75])
    x = jnp.array([[-1.0], [0.5], [3.0]])
    r = mix.responsibilities(x)
    np.testing.assert_allclose(jnp.sum(r, axis=-1), 1.0)
    log_joint = jnp.log(mix.weights) + jax.scipy.stats.norm.logpdf(x, mix.means[:, 0], 1.0)
    np.testing.assert_allclose(r, jax.nn.softmax(log_joint, axis=-1), rtol=1e-12)


def test_mixture_sample_moments_and_labels(x64):
    mix = GaussianMixture(
        jnp.array([0.2, 0.5, 0.3]),
        jnp.array([[-4.0, 0.0], [0.0, 3.0], [4.0, -1.0]]),
        jnp.array([[[0.5, 0.2], [0.2, 0.4]], [[0.3, 0.0], [0.0, 0.3]], [[1.0, -0.3], [-0.3, 0.5]]]),
    )
    n = 4000
    x, labels = jax.jit(lambda m, k: m.sample(k, n))(mix, jax.random.key(22))
    assert x.shape == (n, 2) and labels.shape == (n,)
    freq = jnp.mean(labels[:, None] == jnp.arange(3), axis=0)
    se = jnp.sqrt(mix.weights * (1 - mix.weights) / n)
    assert bool(jnp.all(jnp.abs(freq - mix.weights) < 4 * se))
    m = mix.weights @ mix.means
    second = jnp.einsum("k,kij->ij", mix.weights,
                        mix.covariances + jnp.einsum("ki,kj->kij", mix.means, mix.means))
    _assert_moments(x, m, second - jnp.outer(m, m))
    # Each draw's label is its component: within-component means match.
    onehot = (labels[:, None] == jnp.arange(3)).astype(x.dtype)  # (n, K)
    counts = onehot.sum(0)
    mean_k = onehot.T @ x / counts[:, None]
    var_k = onehot.T @ x**2 / counts[:, None] - mean_k**2
    se_k = jnp.sqrt(var_k / counts[:, None])
    assert bool(jnp.all(jnp.abs(mean_k - mix.means) < 4 * se_k))


def test_entropy_monte_carlo_single_gaussian(x64):
    cov = jnp.array([[1.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 2.0]])
    mix = GaussianMixture(jnp.ones(1), jnp.zeros((1, 3)), cov[None])
    entropy, se = jax.jit(lambda m, k: m.entropy_monte_carlo(k, 4000))(mix, jax.random.key(23))
    exact = 0.5 * jnp.linalg.slogdet(2 * jnp.pi * jnp.e * cov)[1]
    assert 0 < float(se) < 0.1
    assert abs(float(entropy - exact)) < 4 * float(se)


def test_standard_normal_and_random(x64):
    sn = GaussianMixture.standard_normal(4)
    np.testing.assert_array_equal(sn.means, 0.0)
    np.testing.assert_array_equal(sn.covariances[0], jnp.eye(4))
    mix = GaussianMixture.random(jax.random.key(24), dim=3, n_components=4)
    assert mix.dim == 3 and mix.weights.shape == (4,)
    np.testing.assert_allclose(jnp.sum(mix.weights), 1.0)
    np.testing.assert_allclose(mix.covariances, jnp.swapaxes(mix.covariances, -1, -2))
    assert bool(jnp.all(jnp.linalg.eigvalsh(mix.covariances) > 0))


@pytest.mark.parametrize(
    "weights, means, covariances, match",
    [
        (np.ones(2), np.zeros(2), np.ones((2, 1, 1)), r"means must have shape \(K, d\)"),
        (np.ones(3), np.zeros((2, 1)), np.ones((2, 1, 1)), r"weights must have shape \(2,\)"),
        (np.ones(2), np.zeros((2, 2)), np.ones((2, 1, 1)), r"covariances must have shape \(2, 2, 2\)"),
        (np.ones(2), np.zeros((2, 2)), np.ones((2, 2)), r"covariances must have shape"),
    ],
)
def test_mixture_bad_shapes_raise(weights, means, covariances, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(weights, means, covariances)


def test_oracle_construction_errors():
    target = GaussianMixture.standard_normal(2)
    with pytest.raises(ValueError, match="mirror"):
        GaussianMixtureOracle(nsi.MirrorInterpolant(), target)
    with pytest.raises(ValueError, match="one-sided"):
        GaussianMixtureOracle(nsi.OneSidedLinearInterpolant(), target, GaussianMixture.standard_normal(2))
    with pytest.raises(ValueError, match="dimension"):
        GaussianMixtureOracle(nsi.LinearInterpolant(), target, GaussianMixture.standard_normal(3))
    # The default base of a two-sided oracle is N(0, I).
    o = GaussianMixtureOracle(nsi.LinearInterpolant(nsi.BrownianGamma()), target)
    np.testing.assert_array_equal(o.base.means, 0.0)
    assert o.dim == 2


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_plain_cholesky_and_solves_match_lapack(dim):
    """The oracle's loop-safe linear algebra (plain array operations, no LAPACK calls) agrees
    with LAPACK to rounding, batched, in float64."""
    from numpyro_si.oracle import _cholesky, _solve_lower, _solve_upper_transposed

    with jax.enable_x64(True):
        rng = np.random.default_rng(dim)
        w = rng.standard_normal((4, dim, dim))
        a = jnp.asarray(w @ np.swapaxes(w, -1, -2) + 0.1 * np.eye(dim))
        b = jnp.asarray(rng.standard_normal((4, dim)))
        chol = _cholesky(a)
        np.testing.assert_allclose(chol, np.linalg.cholesky(np.asarray(a)), rtol=0, atol=1e-12)
        np.testing.assert_allclose(chol @ _solve_lower(chol, b)[..., None], b[..., None], atol=1e-12)
        x = _solve_upper_transposed(chol, b)
        np.testing.assert_allclose(jnp.swapaxes(chol, -1, -2) @ x[..., None], b[..., None], atol=1e-12)
        # not positive definite: NaN, as LAPACK gives
        assert bool(jnp.any(jnp.isnan(_cholesky(-a))))


def test_oracle_log_prob_of_many_points_returns():
    """A log_prob of 100 points of the d = 8 oracle flow finishes (with LAPACK calls in the
    fields, XLA:CPU's thread pool deadlocked there: the call never returned). Run in a
    subprocess under a timeout, so that a regression fails instead of stalling the suite."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent('''
        import jax, jax.numpy as jnp
        import numpyro_si as nsi
        from numpyro_si.oracle import GaussianMixture, GaussianMixtureOracle
        mixture = GaussianMixture.random(jax.random.key(0), 8, 8)
        oracle = GaussianMixtureOracle(nsi.OneSidedLinearInterpolant(), mixture)
        flow = nsi.SIFlow(oracle.interpolant, oracle.velocity, dim=8)
        x, _ = mixture.sample(jax.random.key(1), 100)
        values = jax.jit(flow.log_prob)(x)
        print(bool(jnp.all(jnp.isfinite(values))))
    ''')
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "True"
