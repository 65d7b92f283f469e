"""Conditional flows p(theta | y): conditioning and batched densities against an exact conditional
velocity (float64), fit(..., context=y) on a linear-Gaussian conditional, shapes and errors."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro.distributions import constraints

import numpyro_si as nsi
from numpyro_si.oracle import GaussianMixture, GaussianMixtureOracle

# theta | y ~ N(A y + B, L L^T), y ~ N(3, diag(2, 1)^2)
A = np.array([[1.0, 0.5], [-0.3, 0.8]])
B = np.array([0.5, -1.0])
L = np.array([[0.4, 0.0], [0.2, 0.3]])
COV = L @ L.T
CONTEXT_SHIFT, CONTEXT_SCALE = np.array([3.0, 3.0]), np.array([2.0, 1.0])


def simulate(key, n):
    """n pairs (theta, y) of the linear-Gaussian model."""
    key_y, key_theta = jax.random.split(key)
    y = CONTEXT_SHIFT + CONTEXT_SCALE * jax.random.normal(key_y, (n, 2))
    return y @ A.T + B + jax.random.normal(key_theta, (n, 2)) @ L.T, y


def exact_log_prob(theta, y):
    return dist.MultivariateNormal(y @ A.T + B, COV).log_prob(theta)


class ExactConditionalVelocity(eqx.Module):
    """The exact one-sided linear velocity to N(A y + B, COV), y given standardised (as
    ConditionalSIFlow feeds it): a context-taking field with no training. The constants are
    array fields, made in the current precision (so float32 and float64 traces never share a
    cached jaxpr)."""

    a: jax.Array
    b: jax.Array
    cov: jax.Array
    shift: jax.Array
    scale: jax.Array

    def __init__(self):
        self.a, self.b, self.cov = jnp.asarray(A), jnp.asarray(B), jnp.asarray(COV)
        self.shift, self.scale = jnp.asarray(CONTEXT_SHIFT), jnp.asarray(CONTEXT_SCALE)

    def __call__(self, t, x, context):
        y = self.shift + self.scale * context
        target = GaussianMixture(jnp.ones(1), (self.a @ y + self.b)[None], self.cov[None])
        return GaussianMixtureOracle(nsi.OneSidedLinearInterpolant(), target).velocity(t, x)


def exact_conditional_flow(**settings):
    """The conditional flow of the exact velocity; `settings`: fields of its SolverSettings."""
    return nsi.ConditionalSIFlow(
        nsi.OneSidedLinearInterpolant(), ExactConditionalVelocity(), context_dim=2, dim=2,
        context_standardization=nsi.Standardization(jnp.asarray(CONTEXT_SHIFT),
                                                    jnp.asarray(CONTEXT_SCALE)),
        settings=nsi.SolverSettings(**settings),
    )


@jax.jit
def batched_log_prob(conditional, theta, y):
    return conditional.log_prob(theta, y)


# ----------------------------------------------------------------------------------------------
# conditioning, exactly
# ----------------------------------------------------------------------------------------------


def test_log_prob_and_condition_match_the_exact_conditional(x64):
    """With the exact conditional velocity, the batched log_prob(theta, y) and condition(y) are
    the analytic N(theta; A y + B, COV) to solver tolerance; the context is standardised on the
    way in (the velocity expects it so)."""
    conditional = exact_conditional_flow(
        rtol=1e-10, atol=1e-10, likelihood=nsi.ODELikelihood(diffrax.Dopri8())
    )
    theta, y = simulate(jax.random.key(0), 6)
    np.testing.assert_allclose(
        batched_log_prob(conditional, theta, y), exact_log_prob(theta, y), rtol=0, atol=1e-7
    )
    # broadcasting: three thetas against one context
    got = batched_log_prob(conditional, theta[:3], y[0])
    np.testing.assert_allclose(got, exact_log_prob(theta[:3], y[0]), rtol=0, atol=1e-7)
    flow = conditional.condition(y[0])
    assert isinstance(flow, nsi.SIFlow) and isinstance(flow.velocity, nsi.ConditionedField)
    np.testing.assert_array_equal(flow.velocity.context, y[0])


def test_sample_shapes_and_moments():
    """sample(key, y, shape) gives sample_shape + context batch + event (NumPyro's order); the
    draws follow N(A y + B, COV) (16 fixed ODE steps, exact velocity): means within 4 standard
    errors."""
    conditional = exact_conditional_flow(sampler=nsi.ODESampler(n_steps=16))
    contexts = jnp.array([[4.0, 2.0], [0.0, 3.5], [3.0, 3.0]])
    draws = jax.jit(lambda c, k: c.sample(k, contexts, (400,)))(conditional, jax.random.key(1))
    assert draws.shape == (400, 3, 2)
    se = np.sqrt(np.diag(COV) / 400)
    assert np.all(np.abs(draws.mean(0) - (contexts @ A.T + B)) < 4 * se)
    one = conditional.sample(jax.random.key(2), contexts[0])
    assert one.shape == (2,)
    grid = conditional.sample(jax.random.key(3), contexts[:2].reshape(2, 1, 2), (5,))
    assert grid.shape == (5, 2, 1, 2)


def test_conditioned_flow_is_a_pytree_and_a_flow():
    """condition(y) is a proper SIFlow: through jax.jit as an argument, with the context a leaf
    (another y reuses the trace). The conditional flow is a flow of the family (an
    nsi.AbstractFlow) and a pytree whose children are its arrays."""
    conditional = exact_conditional_flow(likelihood=nsi.ODELikelihood(n_steps=8))
    theta = jnp.array([[5.0, 0.5]])
    first = batched_log_prob_flow(conditional.condition(jnp.array([4.0, 2.0])), theta)
    other = batched_log_prob_flow(conditional.condition(jnp.array([0.0, 3.5])), theta)
    assert batched_log_prob_flow._cache_size() == 1
    assert not np.allclose(first, other)
    assert isinstance(conditional, nsi.AbstractFlow)
    leaves, treedef = jax.tree.flatten(conditional)
    assert leaves and all(eqx.is_array(leaf) for leaf in leaves)
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert type(rebuilt) is nsi.ConditionalSIFlow
    assert rebuilt.settings == conditional.settings and rebuilt.context_dim == 2
    # Equinox's filtering works on it as on a module: partition and combine give it back
    arrays, static = eqx.partition(conditional, eqx.is_array)
    again = eqx.combine(arrays, static)
    assert type(again) is nsi.ConditionalSIFlow
    for a, b in zip(jax.tree.leaves(again), leaves, strict=True):
        assert a is b


@jax.jit
def batched_log_prob_flow(flow, theta):
    return flow.log_prob(theta)


def test_conditional_with_a_support():
    """support=positive: condition(y) is a ConstrainedSIFlow, log_prob adds the log-Jacobian."""
    net = nsi.FieldMLP(2, context_dim=3, width=8, depth=1, key=jax.random.key(0))
    options = dict(context_dim=3, settings=nsi.SolverSettings(
        likelihood=nsi.ODELikelihood(n_steps=4), sampler=nsi.ODESampler(n_steps=4)))
    positive = nsi.ConditionalSIFlow(nsi.OneSidedLinearInterpolant(), net,
                                     support=constraints.positive, **options)
    plain = nsi.ConditionalSIFlow(nsi.OneSidedLinearInterpolant(), net, **options)
    y = jnp.array([0.1, 0.2, 0.3])
    assert isinstance(positive.condition(y), nsi.ConstrainedSIFlow)
    theta = jnp.array([[0.5, 2.0], [1.5, 0.2]])
    np.testing.assert_allclose(
        batched_log_prob(positive, theta, y),
        batched_log_prob(plain, jnp.log(theta), y) - jnp.log(theta).sum(-1), rtol=1e-5,
    )
    assert bool(jnp.all(positive.sample(jax.random.key(1), y, (4,)) > 0))


def test_with_fixed_step_likelihood_checks_every_pair(x64):
    """Fewest fixed steps within max_error of the adaptive solve at every (theta_i, y_i), against
    the exact conditional density; the returned flow's conditioned flows all use that solve."""
    conditional = exact_conditional_flow(rtol=1e-8, atol=1e-8)
    theta, y = simulate(jax.random.key(0), 20)
    candidates = (2, 4, 8, 16)
    fast, report = conditional.with_fixed_step_likelihood(theta, y, max_error=1e-4,
                                                          candidates=candidates)
    k = report["n_steps"]
    assert isinstance(fast, nsi.ConditionalSIFlow) and k in candidates
    assert fast.likelihood.n_steps == k and fast.condition(y[0]).likelihood.n_steps == k
    assert conditional.likelihood.n_steps is None
    adaptive, fixed = batched_log_prob(conditional, theta, y), batched_log_prob(fast, theta, y)
    error = float(jnp.max(jnp.abs(fixed - adaptive)))
    assert report["max_error"] == pytest.approx(error, rel=1e-6, abs=1e-12) and error <= 1e-4
    assert all(report["errors"][c] > 1e-4 for c in candidates if c < k)
    assert float(jnp.max(jnp.abs(fixed - exact_log_prob(theta, y)))) <= 1e-4 + 1e-6
    # one context per point, contexts checked, points checked
    with pytest.raises(ValueError, match=r"context must have shape \(20, 2\)"):
        conditional.with_fixed_step_likelihood(theta, y[:3])
    with pytest.raises(ValueError, match="NaN"):
        conditional.with_fixed_step_likelihood(theta, y.at[1, 0].set(jnp.nan))
    with pytest.raises(ValueError, match="NaN"):
        conditional.with_fixed_step_likelihood(theta.at[2, 1].set(jnp.inf), y)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2\)"):
        conditional.with_fixed_step_likelihood(theta[:, :1], y)
    with pytest.raises(ValueError, match="max_error"):
        conditional.with_fixed_step_likelihood(theta, y, max_error=0.0)


@pytest.mark.slow  # the unconditional and constrained cases run in `make test`
def test_with_fixed_step_likelihood_conditional_on_a_support():
    net = nsi.FieldMLP(2, context_dim=3, width=8, depth=1, key=jax.random.key(0))
    positive = nsi.ConditionalSIFlow(nsi.OneSidedLinearInterpolant(), net, context_dim=3,
                                     support=constraints.positive)
    theta = jnp.array([[0.5, 2.0], [1.5, 0.2], [1.0, 1.0]])
    y = jnp.array([[0.1, 0.2, 0.3], [0.0, 1.0, -1.0], [2.0, 0.5, 0.0]])
    fast, report = positive.with_fixed_step_likelihood(theta, y, max_error=1e-3)
    assert fast.support is constraints.positive
    # a smooth random field: some fixed-step solve qualifies (6 steps against 13 adaptive ones)
    assert report["n_steps"] is not None and report["n_steps"] < report["adaptive_steps"]
    assert fast.likelihood.n_steps == report["n_steps"]
    error = float(jnp.max(jnp.abs(batched_log_prob(fast, theta, y)
                                  - batched_log_prob(positive, theta, y))))
    assert error <= 1e-3 and report["max_error"] == pytest.approx(error, rel=1e-5, abs=1e-7)
    with pytest.raises(ValueError, match="outside the support"):
        positive.with_fixed_step_likelihood(theta.at[0, 0].set(-0.5), y)


# ----------------------------------------------------------------------------------------------
# fit(theta, context=y)
# ----------------------------------------------------------------------------------------------


def fit_linear_gaussian(key, num_steps, width):
    theta, y = simulate(jax.random.key(0), 4000)
    return nsi.fit(key, theta, context=y, num_steps=num_steps,
                   network=nsi.FieldMLPSpec(width=width, depth=2), show_progress=False)


def check_conditional_fit(conditional, mean_margin, kl_margin):
    """Conditional means at two observed contexts within 4 standard errors plus `mean_margin`
    (per coordinate), and the paired KL estimate within 3 standard errors plus `kl_margin`."""
    assert isinstance(conditional, nsi.ConditionalSIFlow) and conditional.context_dim == 2
    y_obs = jnp.array([[4.0, 2.0], [0.0, 3.5]])
    draws = conditional.sample(jax.random.key(10), y_obs, (1000,))
    se = draws.std(0) / np.sqrt(1000)
    error = np.abs(draws.mean(0) - (y_obs @ A.T + B))
    assert np.all(error < 4 * se + mean_margin), (error, se)
    truth = dist.MultivariateNormal(y_obs[:, None] @ A.T + B, COV).expand((2, 500))
    theta = truth.sample(jax.random.key(11))
    gap = truth.log_prob(theta) - conditional.log_prob(theta, y_obs[:, None])
    kl, kl_se = gap.mean(1), gap.std(1) / np.sqrt(500)
    assert np.all(kl < kl_margin + 3 * kl_se), (kl, kl_se)
    assert np.all(kl > -3 * kl_se)  # a normalised model cannot beat the truth


@pytest.mark.slow
def test_fit_with_context_learns_the_conditional(x64):
    """1000 steps, width 32, 4000 pairs. Measured (float64, fit keys 1, 2, 3): mean errors at
    most 0.047, 0.045, 0.031; KL 0.018 / 0.011, 0.010 / 0.015, 0.017 / 0.005 nats (se ~0.005)
    at the two contexts. Margins 0.1 in the mean and 0.06 nats in the KL."""
    conditional, history = fit_linear_gaussian(jax.random.key(1), 1000, 32)
    # 3600 training pairs, batches of 512: 7 steps per epoch, 9 rounds of 16 epochs planned
    # (1008 steps), cut at the 1000 asked for
    assert nsi.plan_steps(3600, num_steps=1000).padded
    assert history.num_steps == 1000 and not history.stopped_early
    check_conditional_fit(conditional, mean_margin=0.1, kl_margin=0.06)


@pytest.mark.slow
def test_fit_with_context_learns_the_conditional_tight(x64):
    """4000 steps, width 64. Measured (float64, fit keys 1, 2, 3): mean errors at most 0.055,
    0.044, 0.037 (largest at y = (0, 3.5), 1.5 sd from the training contexts' mean); KL 0.002 /
    0.014, 0.001 / 0.007, 0.005 / 0.006 nats (se ~0.002-0.007). Margins 0.08 in the mean and
    0.03 nats in the KL."""
    conditional, _ = fit_linear_gaussian(jax.random.key(1), 4000, 64)
    check_conditional_fit(conditional, mean_margin=0.08, kl_margin=0.03)


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------

THETA = np.random.default_rng(0).normal(size=(100, 2))
CONTEXT = np.random.default_rng(1).normal(size=(100, 3))


def fit_quick(data=THETA, **kwargs):
    return nsi.fit(jax.random.key(0), data, num_steps=1, show_progress=False, **kwargs)


def test_bad_context_in_fit():
    with pytest.raises(ValueError, match=r"context has 99 row\(s\) but data has 100"):
        fit_quick(context=CONTEXT[:99])
    bad = CONTEXT.copy()
    bad[17, 2] = np.nan
    message = r"context contains NaN or inf in 1 row\(s\), first at row 17"
    with pytest.raises(ValueError, match=message):
        fit_quick(context=bad)
    with pytest.raises(ValueError, match=r"context must have shape \(N, d\)"):
        fit_quick(context=CONTEXT[:, 0])
    plain = nsi.FieldMLP(2, width=4, key=jax.random.key(0))
    with pytest.raises(TypeError, match=r"must be callable as velocity_network\(t, x, context\)"):
        fit_quick(context=CONTEXT, velocity_network=plain)


def test_bad_context_in_condition_and_log_prob():
    net = nsi.FieldMLP(2, context_dim=3, width=8, depth=1, key=jax.random.key(0))
    conditional = nsi.ConditionalSIFlow(nsi.OneSidedLinearInterpolant(), net, context_dim=3)
    with pytest.raises(ValueError, match=r"context must have shape \(3,\)"):
        conditional.condition(jnp.zeros(2))
    with pytest.raises(ValueError, match=r"context must have shape \(3,\)"):
        conditional.condition(jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"context must have shape \(\.\.\., 3\)"):
        conditional.log_prob(jnp.zeros((4, 2)), jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match="NaN or inf in 1 row"):
        conditional.condition(jnp.array([0.0, jnp.nan, 1.0]))
    with pytest.raises(ValueError, match=r"value must have shape \(\.\.\., 2\)"):
        conditional.log_prob(jnp.zeros((4, 3)), jnp.zeros(3))
    with pytest.raises(ValueError, match="do not broadcast"):
        conditional.log_prob(jnp.zeros((4, 2)), jnp.zeros((3, 3)))
    with pytest.raises(ValueError, match="context_dim must be a positive integer"):
        nsi.ConditionalSIFlow(nsi.OneSidedLinearInterpolant(), net, context_dim=0)
