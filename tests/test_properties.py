"""Property-based tests (hypothesis) of the flow family, with exact fields wherever correctness is
at stake.

Random shapes, dtypes, options, interpolants, samplers and supports; every example must either
raise a clear error (a `TypeError` or `ValueError` whose message names the offending argument) or
give a finite, correct result:

1. `log_prob` is normalised: in 1-d and 2-d, on plain, positive and interval supports, a
   quadrature of exp(log_prob) over a grid covering the mass is 1 within a tolerance derived
   from the grid (Poisson-summation and tail bounds) and the solver tolerance.
2. `sample` and `log_prob` agree with the exact density: draws of every kind (plain, positive,
   interval(a, b), simplex, conditional) by the ODE and by the SDE with every eps schedule are
   finite, in the support and plausible, and `log_prob` there equals the oracle's exact log
   density, with the Jacobian of the support's bijection computed independently.
3. `jax.jit`, `jax.vmap` and `jax.grad` agree with eager evaluation on random small networks
   (`build_flow`, every kind, float32 and float64, fixed-step and adaptive solves).
4. `save` / `load` is bit-exact for every saveable kind (and re-saving gives the same bytes);
   unsaveable flows are refused by name, leaving no file behind.
5. Bad inputs (shapes, dtypes, NaN / inf, contexts, tolerances, eps, step counts, sample shapes,
   training data) raise a `TypeError` / `ValueError` naming the problem.

Section 6 asserts the correct behaviour where the package is wrong today: each of its tests is
marked `xfail(strict=True)` with the bug in one line, so the suite passes now and reports XPASS
(a failure) once the bug is fixed, when the marker should go.

Cost. JAX compiles once per flow structure and input shape, so the strategies draw few structures
(two-component mixtures, dimensions 1-3, fixed batch sizes), the exact fields are Equinox modules
whose arrays are pytree leaves (one compiled `log_prob` serves every mixture of the same shape,
where a bound method would bake the mixture in as constants), points are evaluated in chunks of
fixed size by module-level jitted functions, and options that are static in a flow's pytree (eps,
interval bounds given as floats, tolerances) are drawn from small sets or given as arrays. Example
counts scale with the hypothesis profile of tests/conftest.py: "fast" (default) or "thorough"
(`NSI_HYPOTHESIS_PROFILE=thorough`).
"""

from __future__ import annotations

import functools
import math
import os
import re
import tempfile
import warnings
import zipfile
from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import Phase, example, given, note, settings
from hypothesis import strategies as st
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

import numpyro_si as nsi
from numpyro_si.oracle import GaussianMixture, GaussianMixtureOracle


def examples(weight: float, **options) -> settings:
    """This test's settings: `weight` times the profile's `max_examples` (at least 1), so that
    properties which compile per example run fewer examples than cheap refusals."""
    return settings(max_examples=max(1, round(weight * settings.default.max_examples)), **options)


# A known-bug test stops at its first failing example: no shrinking (every shrink step would
# compile again) and no replay from the example database.
BUG_PHASES = (Phase.explicit, Phase.generate)


def known_bug(reason: str):
    """Mark a test that asserts the correct behaviour where the package is wrong today."""
    return pytest.mark.xfail(strict=True, raises=AssertionError, reason=reason)


def assert_clear_error(call, names: str, errors=(TypeError, ValueError)):
    """`call()` must raise one of `errors` whose message matches the regex `names` (the offending
    argument); anything else (no error, another exception, a message that does not say what is
    wrong) fails with an AssertionError. Returns the exception."""
    try:
        result = call()
    except errors as error:
        assert re.search(names, str(error)), (
            f"{type(error).__name__} does not name {names!r}: {error}"
        )
        return error
    except Exception as error:  # noqa: BLE001 - a crash from inside JAX is the failure reported
        raise AssertionError(
            f"expected a TypeError/ValueError naming {names!r}, got {type(error).__name__}: "
            f"{str(error)[:300]}"
        ) from error
    raise AssertionError(f"expected a TypeError/ValueError naming {names!r}, got {result!r}"[:400])


POINTS = r"\bx\b|\bvalue\b"  # how the flows call the points of log_prob

# ----------------------------------------------------------------------------------------------
# exact flows: the Gaussian-mixture oracle's fields
# ----------------------------------------------------------------------------------------------

TOL = 1e-10
EXACT = nsi.SolverSettings(rtol=TOL, atol=TOL, likelihood=nsi.ODELikelihood(diffrax.Dopri8()))
# Error budget of `log_prob` under EXACT, in nats. The adaptive solve keeps each step's local
# error within TOL (relative to the state, which is O(1) here); over at most ~100 steps, with an
# amplification of at most ~10 by the flow of these fields on [0, 1], the global error is below
# 1e3 TOL. (Measured on these mixtures: 1e-11 for smooth schedules, 4e-9 for the
# encoder-decoder interpolant, whose coefficients have a kink at t = 1/2.)
DELTA = 1e3 * TOL

INTERPOLANTS = {
    "one-sided-linear": nsi.OneSidedLinearInterpolant(),
    "one-sided-trig": nsi.OneSidedTrigonometricInterpolant(),
    "one-sided-vp": nsi.OneSidedVPInterpolant(),
    "linear": nsi.LinearInterpolant(),
    "linear-brownian": nsi.LinearInterpolant(nsi.BrownianGamma(0.5)),
    "trig-quadratic": nsi.TrigonometricInterpolant(nsi.QuadraticGamma(1.0)),
    "vp-trig": nsi.VPTrigonometricInterpolant(),
    "encoder-decoder": nsi.EncoderDecoderInterpolant(),
}


def one_sided(name: str) -> bool:
    return isinstance(INTERPOLANTS[name], nsi.AbstractOneSidedInterpolant)


class ExactField(eqx.Module):
    """The oracle's velocity or score as a module (its arrays are pytree leaves, so one compiled
    solve serves every mixture of the same shape). With `shift` (d, k), a field of the target
    moved by m = shift @ context: x_t moves by beta(t) m, so b_m(t, x) = b(t, x - beta m) +
    beta' m and s_m(t, x) = s(t, x - beta m), exactly."""

    oracle: GaussianMixtureOracle
    name: str = eqx.field(static=True)
    shift: jax.Array | None = None

    def __call__(self, t, x, context=None):
        field = getattr(self.oracle, self.name)
        if context is None:
            return field(t, x)
        interpolant = self.oracle.interpolant
        m = self.shift @ context
        value = field(t, x - interpolant.beta(t) * m)
        return value + interpolant.dbeta(t) * m if self.name == "velocity" else value


class Mixture(NamedTuple):
    """Parameters of a two-component Gaussian mixture (NumPy float64; made a `GaussianMixture`
    inside `jax.enable_x64`)."""

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray

    def build(self) -> GaussianMixture:
        return GaussianMixture(self.weights, self.means, self.covariances)


@st.composite
def mixtures(draw, dim: int, min_var: float = 0.4):
    """Two components (a fixed structure: one compile serves all), means in [-1.5, 1.5]^dim,
    variances in [min_var, 1], equicorrelation in [-0.3, 0.3]: every covariance eigenvalue is at
    least 0.7 min_var."""
    coordinate = st.floats(-1.5, 1.5)
    weight = draw(st.floats(0.2, 0.8))
    means = np.array([[draw(coordinate) for _ in range(dim)] for _ in range(2)])
    covariances = []
    for _ in range(2):
        sd = np.sqrt([draw(st.floats(min_var, 1.0)) for _ in range(dim)])
        rho = draw(st.floats(-0.3, 0.3)) if dim > 1 else 0.0
        correlation = (1 - rho) * np.eye(dim) + rho
        covariances.append(correlation * np.outer(sd, sd))
    return Mixture(np.array([weight, 1 - weight]), means, np.array(covariances))


class ExactSpec(NamedTuple):
    """A flow with exact fields: interpolant, target, base (two-sided), kind and its options."""

    name: str
    dim: int
    target: Mixture
    base: Mixture | None
    kind: str  # "plain", "positive", "interval", "simplex" or "conditional"
    lower: np.ndarray | None = None  # interval bounds, shape (dim,)
    upper: np.ndarray | None = None
    shift: np.ndarray | None = None  # conditional: (dim, k)
    contexts: np.ndarray | None = None  # conditional: (2, k)


@st.composite
def exact_specs(draw, dims=(1, 2, 3), kinds=("plain",), names=tuple(INTERPOLANTS)):
    dim = draw(st.sampled_from(dims), label="dim")
    kind = draw(st.sampled_from(kinds), label="kind")
    name = draw(st.sampled_from(names), label="interpolant")
    target = draw(mixtures(dim), label="target")
    base = None if one_sided(name) else draw(st.one_of(st.none(), mixtures(dim)), label="base")
    spec = ExactSpec(name, dim, target, base, kind)
    if kind == "interval":
        lower = np.array([draw(st.floats(-3.0, 1.0)) for _ in range(dim)])
        upper = lower + np.array([draw(st.floats(0.5, 4.0)) for _ in range(dim)])
        spec = spec._replace(lower=lower, upper=upper)
    if kind == "conditional":
        k = draw(st.integers(1, 2), label="context_dim")
        entry = st.floats(-1.0, 1.0)
        shift = np.array([[draw(entry) for _ in range(k)] for _ in range(dim)])
        contexts = np.array([[draw(entry) for _ in range(k)] for _ in range(2)])
        spec = spec._replace(shift=shift, contexts=contexts)
    return spec


def support_of(spec: ExactSpec):
    if spec.kind == "positive":
        return constraints.positive
    if spec.kind == "interval":  # array bounds: traced leaves, not static values that recompile
        return constraints.interval(jnp.asarray(spec.lower), jnp.asarray(spec.upper))
    if spec.kind == "simplex":
        return constraints.simplex
    return None


def build_exact(spec: ExactSpec, settings: nsi.SolverSettings = EXACT):
    """(flow of the spec's kind, oracle). Call inside `jax.enable_x64(True)`."""
    interpolant = INTERPOLANTS[spec.name]
    target = spec.target.build()
    if one_sided(spec.name):
        oracle = GaussianMixtureOracle(interpolant, target)
        base = None
    else:
        oracle = GaussianMixtureOracle(
            interpolant, target, None if spec.base is None else spec.base.build()
        )
        base = oracle.base_distribution()
    shift = None if spec.shift is None else jnp.asarray(spec.shift)
    velocity = ExactField(oracle, "velocity", shift)
    score = None if one_sided(spec.name) else ExactField(oracle, "score", shift)
    options = dict(base=base, dim=spec.dim, settings=settings)
    if spec.kind == "conditional":
        flow = nsi.ConditionalSIFlow(interpolant, velocity, score,
                                     context_dim=spec.shift.shape[1], **options)
        return flow, oracle
    flow = nsi.SIFlow(interpolant, velocity, score, **options)
    support = support_of(spec)
    return (flow if support is None else nsi.ConstrainedSIFlow(flow, support)), oracle


# The unconstrained coordinates u of points y of a support, and log |dy/du| (what the density in
# u loses on the support), written out here independently of NumPyro's transforms.


def forward_map(spec: ExactSpec, u: np.ndarray) -> np.ndarray:
    if spec.kind == "positive":
        return np.exp(u)
    if spec.kind == "interval":
        return spec.lower + (spec.upper - spec.lower) / (1 + np.exp(-u))
    return u


def inverse_map(spec: ExactSpec, y: np.ndarray) -> np.ndarray:
    if spec.kind == "positive":
        return np.log(y)
    if spec.kind == "interval":
        return np.log((y - spec.lower) / (spec.upper - y))
    if spec.kind == "simplex":  # NumPyro's stick-breaking map: the map only, not its Jacobian
        return np.asarray(biject_to(constraints.simplex).inv(jnp.asarray(y)))
    return y


def log_dy_du(spec: ExactSpec, y: np.ndarray) -> np.ndarray:
    """log |det dy/du| at points y of the support (for the simplex, of the first d coordinates
    of y as functions of u, by automatic differentiation of the inverse map)."""
    if spec.kind == "positive":
        return np.sum(np.log(y), axis=-1)
    if spec.kind == "interval":
        width = spec.upper - spec.lower
        return np.sum(np.log((y - spec.lower) * (spec.upper - y) / width), axis=-1)
    if spec.kind == "simplex":
        inverse = biject_to(constraints.simplex).inv

        def u_of_head(head):
            return inverse(jnp.concatenate([head, 1 - jnp.sum(head, keepdims=True)]))

        jacobians = jax.vmap(jax.jacfwd(u_of_head))(jnp.asarray(y[..., :-1]))
        return -np.linalg.slogdet(np.asarray(jacobians))[1]
    return np.zeros(y.shape[:-1])


# ----------------------------------------------------------------------------------------------
# jitted evaluation, shared by every test (one compile per flow structure and input shape)
# ----------------------------------------------------------------------------------------------

CHUNK = 128


@jax.jit
def _log_prob_info(flow, x):
    return flow.log_prob_with_info(x)


@jax.jit
def _conditional_log_prob(flow, x, context):
    return flow.log_prob(x, context)


@jax.jit
def _exact_log_density(oracle, x, t, moved):
    """log rho_t(x - beta(t) moved), row by row: the exact density, shifted for a context."""
    beta = oracle.interpolant.beta(t)
    return jax.vmap(lambda y, m: oracle.log_density(t, y - beta * m))(x, moved)


def log_prob_chunked(flow, x, context=None):
    """flow.log_prob at the rows of x, in chunks of CHUNK rows: (log_prob, solve succeeded) as
    NumPy arrays. The padding repeats the first row."""
    x = np.asarray(x)
    n = x.shape[0]
    pad = -n % CHUNK
    xs = np.concatenate([x, np.repeat(x[:1], pad, axis=0)])
    contexts = None if context is None else np.concatenate(
        [context, np.repeat(context[:1], pad, axis=0)]
    )
    values, succeeded = [], []
    for start in range(0, n + pad, CHUNK):
        chunk = xs[start:start + CHUNK]
        if context is None:
            log_prob, info = _log_prob_info(flow, chunk)
            succeeded.append(np.asarray(info.succeeded))
        else:
            log_prob = _conditional_log_prob(flow, chunk, contexts[start:start + CHUNK])
            succeeded.append(np.isfinite(np.asarray(log_prob)))
        values.append(np.asarray(log_prob))
    return np.concatenate(values)[:n], np.concatenate(succeeded)[:n]


def exact_log_density(spec: ExactSpec, oracle, u, moved=None):
    """The exact log density of the flow's time-`time_max` marginal at unconstrained points u."""
    u = np.asarray(u)
    moved = np.zeros_like(u) if moved is None else moved
    return np.asarray(_exact_log_density(oracle, u, INTERPOLANTS[spec.name].time_max, moved))


# ----------------------------------------------------------------------------------------------
# 1. log_prob integrates to one
# ----------------------------------------------------------------------------------------------


def marginal_components(spec: ExactSpec):
    """Means (P, d) and covariances (P, d, d) of the Gaussian components of the flow's marginal at
    time_max (docs/math.md section 6), in NumPy."""
    interpolant = INTERPOLANTS[spec.name]
    t = interpolant.time_max
    a, b, g = (float(f(t)) for f in (interpolant.alpha, interpolant.beta, interpolant.gamma))
    base = spec.base if spec.base is not None else Mixture(
        np.ones(1), np.zeros((1, spec.dim)), np.eye(spec.dim)[None]
    )
    means, covariances = [], []
    for m, c in zip(base.means, base.covariances, strict=True):
        for mu, s in zip(spec.target.means, spec.target.covariances, strict=True):
            means.append(a * m + b * mu)
            covariances.append(a**2 * c + b**2 * s + g**2 * np.eye(spec.dim))
    return np.array(means), np.array(covariances)


class Grid(NamedTuple):
    """A tensor grid of spacing h in the unconstrained space, and a bound on the error of the
    rectangle rule h^d sum f(u_j) for the exact density f."""

    u: np.ndarray  # (n, d)
    h: float
    bound: float


def quadrature_grid(spec: ExactSpec, margin: float = 8.5, alias: float = 1e-13) -> Grid:
    """The grid and its error bound, for the exact marginal (a Gaussian mixture in u).

    - Aliasing (Poisson summation): the rectangle rule over the whole lattice hZ^d + u0 errs by
      sum_{k != 0} |f^(k / h)| <= sum_{k != 0} exp(-2 pi^2 lambda |k|^2 / h^2) = theta(q)^d - 1,
      q = exp(-2 pi^2 lambda / h^2), lambda the smallest covariance eigenvalue; h is chosen so
      that this is below `alias`.
    - Truncation: the lattice points outside the box (each component's mean +- `margin` sd on
      every axis) carry at most the mass beyond margin - 1 sd on some axis (a rectangle sum over
      a decreasing tail is below the integral from one spacing further in), bounded by erfc.
    """
    means, covariances = marginal_components(spec)
    eigenvalue = min(np.linalg.eigvalsh(c).min() for c in covariances)
    h = math.sqrt(2 * math.pi**2 * eigenvalue / math.log(2 * spec.dim / alias + 1))
    sds = np.sqrt(np.diagonal(covariances, axis1=1, axis2=2))
    low = np.min(means - margin * sds, axis=0)
    high = np.max(means + margin * sds, axis=0)
    axes = [np.arange(lo, hi + h, h) for lo, hi in zip(low, high, strict=True)]
    u = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, spec.dim)
    q = math.exp(-2 * math.pi**2 * eigenvalue / h**2)
    theta = 1 + 2 * sum(q ** (n * n) for n in range(1, 6))
    aliasing = theta**spec.dim - 1
    # every component lies at least `margin` of its sd inside the box; h <= sd, so margin - 1 sd
    # covers the extra spacing of the lattice tail
    truncation = spec.dim * math.erfc((margin - 1) / math.sqrt(2))
    return Grid(u, h, aliasing + truncation)


@examples(0.6)
@given(spec=exact_specs(dims=(1, 2), kinds=("plain", "positive", "interval")))
def test_log_prob_integrates_to_one(spec):
    """h^d sum_j exp(log_prob(y_j)) |dy/du|(u_j) over the grid y_j = T(u_j) (T the support's
    bijection, the identity on R^d; a transformed rectangle rule in y, as tanh-sinh quadrature)
    is 1 within the grid's error bound plus the solver's: |log_prob - exact| <= DELTA pointwise
    turns into a relative error of at most expm1(DELTA) of the sum."""
    grid = quadrature_grid(spec)
    note(f"{len(grid.u)} grid points, spacing {grid.h:.3f}, quadrature bound {grid.bound:.1e}")
    with jax.enable_x64(True):
        flow, oracle = build_exact(spec)
        y = forward_map(spec, grid.u)
        log_prob, succeeded = log_prob_chunked(flow, y)
        exact = exact_log_density(spec, oracle, grid.u)
    assert succeeded.all() and np.isfinite(log_prob).all()
    weights = grid.h**spec.dim * np.exp(log_dy_du(spec, y))
    integral = np.sum(weights * np.exp(log_prob))
    exact_integral = grid.h**spec.dim * np.sum(np.exp(exact))
    note(f"integral - 1 = {integral - 1:.2e}; exact density's: {exact_integral - 1:.2e}")
    assert abs(exact_integral - 1) <= grid.bound  # the grid covers the mass
    assert abs(integral - 1) <= grid.bound + math.expm1(DELTA) * (1 + grid.bound)


# ----------------------------------------------------------------------------------------------
# 2. draws and log_prob against the exact density
# ----------------------------------------------------------------------------------------------

N_DRAWS = 8  # per context (conditional flows: 2 contexts)
# A draw of the target has an exact log density above this (the densities here peak above -4
# in up to 3 dimensions; -40 is more than 8 standard deviations out).
LOG_FLOOR = -40.0

SAMPLERS = {
    "ode": nsi.ODESampler(),
    "ode-fixed": nsi.ODESampler(diffrax.Heun(), n_steps=32),
    "sde-constant": nsi.SDESampler(nsi.ConstantEps(0.5), n_steps=64),
    "sde-decaying": nsi.SDESampler(nsi.DecayingEps(1.0), n_steps=64),
    "sde-zero-ends": nsi.SDESampler(nsi.ZeroEndsEps(2.0), n_steps=128),
}


@functools.partial(jax.jit, static_argnums=2)
def _sample(flow, key, n):
    return flow.sample(key, (n,))


@functools.partial(jax.jit, static_argnums=3)
def _conditional_sample(flow, key, context, n):
    return flow.sample(key, context, (n,))


@examples(0.6)
@given(
    spec=exact_specs(kinds=("plain", "positive", "interval", "simplex", "conditional")),
    sampler=st.sampled_from(sorted(SAMPLERS)),
    seed=st.integers(0, 2**32 - 1),
)
def test_log_prob_at_draws_is_the_exact_density(spec, sampler, seed):
    """Draws of every kind and sampler are finite, in the support and plausible under the exact
    density; log_prob at them is the exact log density (with the support's Jacobian, computed
    independently; with the context's shift of the target) within DELTA."""
    with jax.enable_x64(True):
        flow, oracle = build_exact(spec)
        flow = flow.with_settings(sampler=SAMPLERS[sampler])
        key = jax.random.key(seed)
        if spec.kind == "conditional":
            draws = np.asarray(_conditional_sample(flow, key, jnp.asarray(spec.contexts), N_DRAWS))
            assert draws.shape == (N_DRAWS, 2, spec.dim)
            contexts = np.broadcast_to(spec.contexts, (N_DRAWS, 2, spec.shift.shape[1]))
            draws, contexts = draws.reshape(-1, spec.dim), contexts.reshape(2 * N_DRAWS, -1)
            moved = contexts @ spec.shift.T
        else:
            draws = np.asarray(_sample(flow, key, N_DRAWS))
            contexts = moved = None
        assert np.isfinite(draws).all()
        support = support_of(spec)
        if support is not None:
            assert bool(jnp.all(support.check(jnp.asarray(draws)))), "draws outside the support"
        u = inverse_map(spec, draws)
        exact = exact_log_density(spec, oracle, u, moved) - log_dy_du(spec, draws)
        log_prob, succeeded = log_prob_chunked(flow.with_settings(settings=EXACT), draws, contexts)
    note(f"draws {draws.tolist()}\nlog_prob - exact {(log_prob - exact).tolist()}")
    assert np.all(exact + log_dy_du(spec, draws) > LOG_FLOOR), "implausible draws"
    assert succeeded.all()
    np.testing.assert_allclose(log_prob, exact, rtol=0, atol=DELTA)


# ----------------------------------------------------------------------------------------------
# random small networks (build_flow): shared by the transformation and save / load tests
# ----------------------------------------------------------------------------------------------

NETWORK_INTERPOLANTS = {
    "one-sided-linear": nsi.OneSidedLinearInterpolant(),
    "one-sided-trig": nsi.OneSidedTrigonometricInterpolant(),
    "linear-brownian": nsi.LinearInterpolant(nsi.BrownianGamma(1.0)),
    "vp-trig": nsi.VPTrigonometricInterpolant(),
}
LIKELIHOODS = {
    "adaptive": nsi.ODELikelihood(),
    "tsit5-4": nsi.ODELikelihood(n_steps=4),
    "euler-3": nsi.ODELikelihood(diffrax.Euler(), n_steps=3),
    "midpoint-2": nsi.ODELikelihood(diffrax.Midpoint(), n_steps=2),
}
NETWORK_SAMPLERS = {
    "ode": lambda: nsi.ODESampler(),
    "ode-dopri5-8": lambda: nsi.ODESampler(diffrax.Dopri5(), n_steps=8),
    "sde-constant": lambda: nsi.SDESampler(0.7, n_steps=16),
    "sde-decaying": lambda: nsi.SDESampler(nsi.DecayingEps(1.5)),
    "sde-zero-ends": lambda: nsi.SDESampler(nsi.ZeroEndsEps(0.25), n_steps=32),
}
KINDS = ("plain", "positive", "interval", "simplex", "conditional", "conditional-positive",
         "conditioned")


class NetworkSpec(NamedTuple):
    kind: str
    dim: int  # of the unconstrained space
    dtype: str
    interpolant: str
    sampler: str
    likelihood: str
    divergence: str
    rtol: float
    network: nsi.FieldMLPSpec
    learn_score: bool
    standardize: bool
    context_dim: int
    seed: int


@st.composite
def network_specs(draw, kinds=KINDS, divergences=("exact", "hutchinson")):
    interpolant = draw(st.sampled_from(sorted(NETWORK_INTERPOLANTS)))
    sampler = draw(st.sampled_from(sorted(NETWORK_SAMPLERS)))
    two_sided = not isinstance(NETWORK_INTERPOLANTS[interpolant], nsi.AbstractOneSidedInterpolant)
    learn_score = two_sided and (sampler.startswith("sde") or draw(st.booleans()))
    network = nsi.FieldMLPSpec(
        width=draw(st.sampled_from([4, 8])), depth=draw(st.integers(1, 2)),
        residual=draw(st.booleans()), n_frequencies=draw(st.sampled_from([1, 2, 4])),
        activation=draw(st.sampled_from(sorted(nsi.ACTIVATIONS))),
    )
    return NetworkSpec(
        kind=draw(st.sampled_from(kinds)), dim=draw(st.integers(1, 3)),
        dtype=draw(st.sampled_from(["float32", "float64"])), interpolant=interpolant,
        sampler=sampler, likelihood=draw(st.sampled_from(sorted(LIKELIHOODS))),
        divergence=draw(st.sampled_from(divergences)),
        rtol=draw(st.sampled_from([1e-5, 1e-6])), network=network, learn_score=learn_score,
        standardize=draw(st.booleans()), context_dim=draw(st.integers(1, 2)),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


INTERVAL = (np.array([-1.0, 0.0, 2.0]), np.array([1.0, 0.5, 5.0]))


def network_data(spec: NetworkSpec, n: int = 24):
    """(data in the kind's support, context or None), NumPy, from the spec's seed."""
    rng = np.random.default_rng(spec.seed)
    u = rng.normal(size=(n, spec.dim))
    kind = spec.kind.removeprefix("conditional-")
    if kind == "positive":
        data = np.exp(u)
    elif kind == "interval":
        lower, upper = INTERVAL[0][: spec.dim], INTERVAL[1][: spec.dim]
        data = lower + (upper - lower) / (1 + np.exp(-u))
    elif kind == "simplex":
        data = np.asarray(biject_to(constraints.simplex)(jnp.asarray(u)))
    else:
        data = u
    context = rng.normal(size=(n, spec.context_dim)) if "conditional" in spec.kind else None
    return data.astype(spec.dtype), None if context is None else context.astype(spec.dtype)


def network_support(spec: NetworkSpec):
    kind = spec.kind.removeprefix("conditional-")
    if kind == "interval":
        return constraints.interval(jnp.asarray(INTERVAL[0][: spec.dim], dtype=spec.dtype),
                                    jnp.asarray(INTERVAL[1][: spec.dim], dtype=spec.dtype))
    return {"positive": constraints.positive, "simplex": constraints.simplex}.get(kind)


def build_network_flow(spec: NetworkSpec):
    """An untrained flow of the spec's kind (call inside `jax.enable_x64(spec.dtype ==
    'float64')`); for "conditioned", the plain flow a conditional one gives for one context."""
    data, context = network_data(spec)
    if spec.kind == "conditioned":
        context = np.random.default_rng(spec.seed + 1).normal(
            size=(len(data), spec.context_dim)).astype(spec.dtype)
    divergence = (nsi.HutchinsonDivergence(jax.random.key(spec.seed))
                  if spec.divergence == "hutchinson" else "exact")
    settings = nsi.SolverSettings(
        sampler=NETWORK_SAMPLERS[spec.sampler](), likelihood=LIKELIHOODS[spec.likelihood],
        divergence=divergence, rtol=spec.rtol, atol=spec.rtol,
    )
    flow = nsi.build_flow(
        jax.random.key(spec.seed), data, context=context, support=network_support(spec),
        interpolant=NETWORK_INTERPOLANTS[spec.interpolant], learn_score=spec.learn_score,
        network=spec.network, standardize=spec.standardize, settings=settings,
    )
    if spec.kind == "conditioned":
        return flow.condition(context[0]), data, None
    return flow, data, context


# ----------------------------------------------------------------------------------------------
# 3. jit / vmap / grad agree with eager evaluation
# ----------------------------------------------------------------------------------------------


@jax.jit
def _log_prob(flow, x):
    return flow.log_prob(x)


@functools.partial(jax.jit, static_argnums=0)
def _value_and_grad(conditional, flow, x, context):
    """log_prob of one point and its gradient with respect to the point."""
    if conditional:
        return jax.value_and_grad(lambda y: flow.log_prob(y, context))(x)
    return jax.value_and_grad(flow.log_prob)(x)


@examples(0.4)
@given(spec=network_specs(), batch=st.sampled_from([(3,), (1, 3), (3, 1)]))
def test_jit_vmap_and_grad_agree_with_eager(spec, batch):
    """On random small networks of every kind: jax.jit(log_prob) equals eager log_prob, a vmap
    over points equals a loop over them, within the solver's tolerance (or rounding, for fixed
    steps); the gradient with respect to the point is finite."""
    conditional = spec.kind.startswith("conditional")
    with jax.enable_x64(spec.dtype == "float64"):
        flow, data, context = build_network_flow(spec)
        n = math.prod(batch)
        x = jnp.asarray(data[:n].reshape(batch + data.shape[1:]))
        c = None if context is None else jnp.asarray(context[:n].reshape(batch + (-1,)))
        if conditional:
            eager = flow.log_prob(x, c)
            jitted = _conditional_log_prob(flow, x, c)
        else:
            eager = flow.log_prob(x)
            jitted = _log_prob(flow, x)
        assert eager.shape == jitted.shape == batch
        flat_x = x.reshape((n,) + data.shape[1:])
        flat_c = None if c is None else c.reshape(n, -1)
        if conditional:
            mapped = jax.vmap(flow.log_prob)(flat_x, flat_c)
        else:
            mapped = jax.vmap(flow.log_prob)(flat_x)
        loop = [_value_and_grad(conditional, flow, flat_x[i], None if c is None else flat_c[i])
                for i in range(n)]
    looped = np.array([float(value) for value, _ in loop])
    eager, jitted, mapped = (np.asarray(a, dtype=np.float64) for a in (eager, jitted, mapped))
    note(f"eager {eager.ravel()}, jit {jitted.ravel()}, vmap {mapped}, loop {looped}")
    for values in (eager, jitted, mapped, looped):
        assert np.isfinite(values).all()
    for _, gradient in loop:
        assert gradient.shape == data.shape[1:] and np.isfinite(np.asarray(gradient)).all()
    # fixed steps: the same arithmetic up to rounding (XLA fuses differently under jit and vmap);
    # adaptive: rounding may move an accepted step, an error of the order of the tolerance
    rounding = 1e3 * np.finfo(spec.dtype).eps
    adaptive = LIKELIHOODS[spec.likelihood].n_steps is None
    tolerance = (10 * spec.rtol if adaptive else 0.0) + rounding
    np.testing.assert_allclose(jitted, eager, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(mapped, looped, rtol=tolerance, atol=tolerance)


# ----------------------------------------------------------------------------------------------
# 4. save / load
# ----------------------------------------------------------------------------------------------


def archive_contents(path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


@examples(2.0)
@given(spec=network_specs(divergences=("exact",)))
def test_save_load_is_bit_exact(spec):
    """Every saveable kind comes back as the same kind with every array bit for bit and every
    option equal (eqx.tree_equal of the whole flow), its fields give bit-identical outputs, and
    saving the loaded flow writes the same bytes."""
    with jax.enable_x64(spec.dtype == "float64"), tempfile.TemporaryDirectory() as folder:
        flow, data, context = build_network_flow(spec)
        first, second = os.path.join(folder, "a.nsi"), os.path.join(folder, "b.nsi")
        nsi.save(first, flow)
        loaded = nsi.load(first)
        nsi.save(second, loaded)
        assert type(loaded) is type(flow)
        assert bool(eqx.tree_equal(loaded, flow))
        assert archive_contents(first) == archive_contents(second)
        assert sorted(os.listdir(folder)) == ["a.nsi", "b.nsi"]  # no temporary files left
        t = jnp.asarray(0.3, dtype=spec.dtype)
        x = jnp.asarray(np.random.default_rng(spec.seed).normal(size=flow.dim), dtype=spec.dtype)
        extra = () if context is None else (jnp.asarray(context[0]),)
        for name in ("velocity", "score"):
            field, loaded_field = getattr(flow, name), getattr(loaded, name)
            assert (field is None) == (loaded_field is None)
            if field is not None:
                np.testing.assert_array_equal(field(t, x, *extra), loaded_field(t, x, *extra))


UNSAVEABLE = {
    "exact field": "velocity",
    "plain function": "velocity",
    "Hutchinson divergence": "divergence",
    "custom eps": "eps",
}


@examples(1.0)
@given(what=st.sampled_from(sorted(UNSAVEABLE)), kind=st.sampled_from(["plain", "positive"]))
def test_unsaveable_flows_are_refused_by_name(what, kind):
    """A flow holding code (a function, a non-numpyro_si module) or a key cannot be written:
    ValueError naming the field, and no file (or temporary file) is left behind."""
    network = nsi.FieldMLP(2, width=4, depth=1, key=jax.random.key(0))
    velocity = {"exact field": ExactField(GaussianMixtureOracle(
        nsi.OneSidedLinearInterpolant(), GaussianMixture.standard_normal(2)), "velocity"),
        "plain function": lambda t, x: -x}.get(what, network)
    settings = nsi.SolverSettings(
        divergence=nsi.HutchinsonDivergence(jax.random.key(1))
        if what == "Hutchinson divergence" else "exact",
        sampler=nsi.SDESampler(lambda t: 0.5 * t) if what == "custom eps" else "ode",
    )
    flow = nsi.SIFlow(nsi.OneSidedLinearInterpolant(), velocity, dim=2, settings=settings)
    if kind == "positive":
        flow = nsi.ConstrainedSIFlow(flow, constraints.positive)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "flow.nsi")
        error = assert_clear_error(lambda: nsi.save(path, flow), UNSAVEABLE[what],
                                   errors=(ValueError,))
        assert "cannot be saved" in str(error)
        assert os.listdir(folder) == []


# ----------------------------------------------------------------------------------------------
# 5. bad inputs and edge cases
# ----------------------------------------------------------------------------------------------


def standard_normal_velocity(t, x):
    """The exact velocity of the one-sided linear interpolant to N(0, I): x_t ~ N(0, s^2 I) with
    s^2 = (1 - t)^2 + t^2, and b = (d/dt log s) x."""
    return (2 * t - 1) / ((1 - t) ** 2 + t**2) * x


class Box(NamedTuple):
    """A support for the maps above: kind and interval bounds (None for the others)."""

    kind: str
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None

    def constraint(self):
        return support_of(self)


@functools.cache
def toy_flow(dim: int, kind: str = "plain", likelihood: str = "adaptive"):
    """Cheap flows of every kind whose density is N(0, I) in the unconstrained space (a
    conditional one ignores its context; "interval" is (0, 1)); cached, so their compiled solves
    are reused."""
    settings = nsi.SolverSettings(likelihood=LIKELIHOODS[likelihood])
    interpolant = nsi.OneSidedLinearInterpolant()
    if kind == "conditional":
        return nsi.ConditionalSIFlow(
            interpolant, lambda t, x, context: standard_normal_velocity(t, x), context_dim=2,
            dim=dim, settings=settings,
        )
    flow = nsi.SIFlow(interpolant, standard_normal_velocity, dim=dim, settings=settings)
    support = {"positive": constraints.positive, "interval": constraints.interval(0.0, 1.0),
               "simplex": constraints.simplex}.get(kind)
    return flow if support is None else nsi.ConstrainedSIFlow(flow, support)


def call_log_prob(flow, x, context=None):
    if isinstance(flow, nsi.ConditionalSIFlow):
        context = np.zeros(2) if context is None else context
        return flow.log_prob(x, context)
    return flow.log_prob(x)


@st.composite
def wrong_points(draw, size: int, kinds=("bool", "str", "None", "object"), min_trailing=0):
    """Points a flow of event size `size` cannot take: a wrong trailing dimension (at least
    `min_trailing`) or a scalar, or points of the given `kinds` (booleans, strings, None, object
    arrays)."""
    batch = draw(st.sampled_from([(), (2,), (1, 3)]))
    options = [
        st.integers(min_trailing, 4).filter(lambda k: k != size).map(
            lambda k: np.zeros(batch + (k,))),
        st.just(np.float64(0.5)),
    ]
    wrong_kinds = {
        "bool": st.just(np.ones(batch + (size,), dtype=bool)),
        "str": st.just("0.5"),
        "None": st.none(),
        "object": st.just(np.array([[0.5] * size, [None] * size], dtype=object)),
    }
    options += [wrong_kinds[kind] for kind in kinds]
    return draw(st.one_of(options))


@examples(4.0)
@given(data=st.data(), dim=st.integers(1, 3), kind=st.sampled_from(["plain", "conditional"]))
def test_points_of_the_wrong_shape_or_kind_are_refused(data, dim, kind):
    flow = toy_flow(dim, kind)
    # non-numeric points of a conditional flow: test_conditional_log_prob_checks_its_arguments
    kinds = ("bool",) if kind == "conditional" else ("bool", "str", "None", "object")
    x = data.draw(wrong_points(dim, kinds), label="x")
    assert_clear_error(lambda: call_log_prob(flow, x), POINTS)


@examples(3.0)
@given(data=st.data(), dim=st.integers(1, 3),
       kind=st.sampled_from(["positive", "interval", "simplex"]))
def test_constrained_points_of_the_wrong_shape_are_refused(data, dim, kind):
    """(Zero-size arrays: test_constrained_log_prob_of_empty_arrays; non-numeric points:
    test_constrained_log_prob_checks_its_points.)"""
    flow = toy_flow(dim, kind)
    size = dim + 1 if kind == "simplex" else dim
    x = data.draw(wrong_points(size, kinds=(), min_trailing=1), label="x")
    assert_clear_error(lambda: flow.log_prob(x), POINTS)


@examples(3.0)
@given(
    batch=st.sampled_from([(), (3,)]),
    defect=st.sampled_from(["trailing", "scalar", "nan", "inf"]),
    where=st.sampled_from(["log_prob", "sample", "condition"]),
)
def test_bad_contexts_are_refused(batch, defect, where):
    flow = toy_flow(2, "conditional")
    context = np.zeros(batch + (2,))
    if defect == "trailing":
        context = np.zeros(batch + (3,))
    elif defect == "scalar":
        context = np.float64(1.0)
    else:
        context[..., -1] = np.nan if defect == "nan" else -np.inf
    call = {
        "log_prob": lambda: flow.log_prob(np.zeros(2), context),
        "sample": lambda: flow.sample(jax.random.key(0), context, (2,)),
        "condition": lambda: flow.condition(context),
    }[where]
    assert_clear_error(call, r"\bcontext\b")


bad_tolerances = st.one_of(
    st.floats(max_value=0.0), st.just(math.nan), st.just(math.inf), st.booleans(),
    st.text(max_size=3),
)


@examples(4.0)
@given(name=st.sampled_from(["rtol", "atol"]), value=bad_tolerances,
       where=st.sampled_from(["SolverSettings", "with_settings"]))
def test_bad_tolerances_are_refused(name, value, where):
    if where == "SolverSettings":
        assert_clear_error(lambda: nsi.SolverSettings(**{name: value}), rf"\b{name}\b")
    else:
        assert_clear_error(lambda: toy_flow(2).with_settings(**{name: value}), rf"\b{name}\b")


@examples(2.0)
@given(value=st.floats(1e-12, 1.0), kind=st.sampled_from([float, np.float32, np.float64]))
def test_positive_tolerances_are_accepted(value, kind):
    settings = nsi.SolverSettings(rtol=kind(value), atol=kind(value))
    assert settings.rtol == float(kind(value)) and isinstance(settings.rtol, float)


bad_eps = st.one_of(
    st.floats(max_value=0.0, exclude_max=True), st.just(math.nan), st.just(math.inf),
    st.just(-math.inf), st.booleans(), st.text(max_size=3), st.none(), st.just([0.5]),
    st.sampled_from([-1.0, -0.1, math.nan]).map(lambda level: lambda t: level + 0.0 * t),
)


@examples(5.0)
@given(eps=bad_eps, where=st.sampled_from(["SolverSettings", "with_settings", "SDESampler",
                                           "ConstantEps", "DecayingEps", "ZeroEndsEps"]))
def test_bad_eps_values_are_refused(eps, where):
    """Negative, NaN or infinite levels, booleans, non-numbers, and eps(t) functions with
    negative or NaN values: refused by name when made (not NaN draws later)."""
    if callable(eps) and where.endswith("Eps"):
        where = "SDESampler"  # a schedule's level is a number; a function is a CustomEps
    if eps is None and where in ("SolverSettings", "with_settings"):
        eps = -1.0  # None means "unchanged" / "the default" there
    calls = {
        "SolverSettings": lambda: nsi.SolverSettings(sampler="sde", eps=eps),
        "with_settings": lambda: toy_flow(2).with_settings(sampler="sde", eps=eps),
        "SDESampler": lambda: nsi.SDESampler(eps),
        "ConstantEps": lambda: nsi.ConstantEps(eps),
        "DecayingEps": lambda: nsi.DecayingEps(eps),
        "ZeroEndsEps": lambda: nsi.ZeroEndsEps(eps),
    }
    assert_clear_error(calls[where], r"\beps0?\b|\beps\(t\)")


@examples(2.0)
@given(eps=st.floats(0.0, 1e3), kind=st.sampled_from(
           ["float", "int", "np.float64", "np.float32", "np.float16", "np.int64", "jnp"]),
       schedule=st.sampled_from([nsi.ConstantEps, nsi.DecayingEps, nsi.ZeroEndsEps]))
def test_valid_eps_values_are_accepted(eps, kind, schedule):
    """Any finite real number >= 0: Python, NumPy and 0-d JAX scalars alike."""
    value = {"float": float, "int": lambda v: int(round(v)), "np.float64": np.float64,
             "np.float32": np.float32, "np.float16": np.float16,
             "np.int64": lambda v: np.int64(round(v)), "jnp": jnp.asarray}[kind](eps)
    expected = float(value)
    assert float(nsi.SDESampler(value).eps(0.5)) == pytest.approx(expected)
    assert float(schedule(value).eps0) == pytest.approx(expected)
    flow = toy_flow(1).with_settings(sampler="sde", eps=value)
    assert float(flow.sampler.eps(0.5)) == pytest.approx(expected)
    assert_clear_error(lambda: toy_flow(1).with_settings(sampler="ode", eps=value), r"\beps\b")


bad_step_counts = st.one_of(
    st.integers(max_value=0), st.floats(0.5, 100).filter(lambda v: v != int(v)),
    st.booleans(), st.text(min_size=1, max_size=3), st.just(4.0),
)


@examples(4.0)
@given(value=bad_step_counts, where=st.sampled_from(
    ["ODESampler.n_steps", "ODESampler.max_steps", "ODELikelihood.n_steps",
     "ODELikelihood.max_steps", "SDESampler.n_steps"]))
def test_bad_step_counts_are_refused(value, where):
    cls, name = where.split(".")
    if cls == "SDESampler":
        call = functools.partial(nsi.SDESampler, 1.0, n_steps=value)
    else:
        call = functools.partial(getattr(nsi, cls), **{name: value})
    assert_clear_error(call, rf"\b{name}\b")


def test_sde_needs_two_steps():
    assert_clear_error(lambda: nsi.SDESampler(1.0, n_steps=1), r"\bn_steps\b")
    assert nsi.SDESampler(1.0, n_steps=2).n_steps == 2


@st.composite
def bad_training_data(draw):
    """(data, context, support, the argument the error must name)."""
    n, d = draw(st.integers(1, 5)), draw(st.integers(1, 3))
    good = np.random.default_rng(0).normal(size=(n, d))
    defect = draw(st.sampled_from(["empty", "no columns", "1-d", "3-d", "nan", "inf", "int",
                                   "bool", "context rows", "context nan", "context 1-d",
                                   "outside support", "on boundary"]))
    context, support, name = None, None, r"\bdata\b"
    data = good
    if defect == "empty":
        data = good[:0]
    elif defect == "no columns":
        data = good[:, :0]
    elif defect == "1-d":
        data = good[:, 0]
    elif defect == "3-d":
        data = good[..., None]
    elif defect in ("nan", "inf"):
        data = good.copy()
        data[draw(st.integers(0, n - 1)), draw(st.integers(0, d - 1))] = (
            np.nan if defect == "nan" else -np.inf)
    elif defect == "int":
        data = np.round(good).astype(np.int32)
    elif defect == "bool":
        data = good > 0
    elif defect.startswith("context"):
        name = r"\bcontext\b"
        context = good[:, :1]
        if defect == "context rows":
            context = np.concatenate([context, context])
        elif defect == "context nan":
            context = context.copy()
            context[0, 0] = np.nan
        else:
            context = context[:, 0]
    elif defect == "outside support":
        support, data = constraints.positive, np.abs(good) + 0.1
        data[draw(st.integers(0, n - 1)), 0] = -1.0
    else:
        support, data = constraints.interval(0.0, 1.0), np.full((n, d), 0.5)
        data[draw(st.integers(0, n - 1)), 0] = draw(st.sampled_from([0.0, 1.0]))
    return data, context, support, name


@examples(4.0)
@given(case=bad_training_data())
def test_bad_training_data_is_refused(case):
    data, context, support, name = case
    assert_clear_error(
        lambda: nsi.build_flow(jax.random.key(0), data, context=context, support=support), name
    )


@examples(2.0)
@given(shape=st.one_of(
    st.lists(st.integers(-3, 3), min_size=1, max_size=2).map(tuple).filter(lambda s: min(s) < 0),
    st.sampled_from([3, (2.0,), "ab", None, (1.5, 2), (True,)]),
), kind=st.sampled_from(["plain", "positive", "conditional"]))
def test_bad_sample_shapes_are_refused(shape, kind):
    """Negative or non-integer entries, or not a tuple at all: refused by name (not an MLIRError
    or a TypeError from inside JAX)."""
    flow = toy_flow(2, kind)
    if kind == "conditional":
        call = functools.partial(flow.sample, jax.random.key(0), np.zeros(2), shape)
    else:
        call = functools.partial(flow.sample, jax.random.key(0), shape)
    assert_clear_error(call, r"\bsample_shape\b")


@examples(0.6)
@given(shape=st.lists(st.integers(0, 3), max_size=2).map(tuple),
       kind=st.sampled_from(["plain", "positive"]))
def test_sample_shapes(shape, kind):
    """Draws have shape sample_shape + event_shape (empty ones included) and are finite."""
    flow = toy_flow(2, kind).with_settings(sampler=nsi.ODESampler(diffrax.Euler(), n_steps=2))
    draws = flow.sample(jax.random.key(0), shape)
    assert draws.shape == shape + (2,)
    assert np.isfinite(np.asarray(draws)).all()


@examples(0.6)
@given(dim=st.integers(1, 2), kind=st.sampled_from(["plain", "conditional"]),
       row=st.integers(0, 2), jit=st.booleans())
def test_log_prob_of_nan_is_nan(dim, kind, row, jit):
    """NumPyro's convention: NaN in, NaN out (not the -inf of a solve that failed on it), the
    other rows unaffected; eagerly and under jit, with the adaptive solve."""
    flow = toy_flow(dim, kind)
    x = np.ones((3, dim))
    x[row, -1] = np.nan
    with jax.enable_x64(True):
        if kind == "conditional":
            context = np.zeros((3, 2))
            log_prob = (_conditional_log_prob(flow, x, context) if jit
                        else flow.log_prob(x, context))
        else:
            log_prob = _log_prob(flow, x) if jit else flow.log_prob(x)
    log_prob = np.asarray(log_prob)
    assert np.isnan(log_prob[row]), log_prob
    assert np.isfinite(np.delete(log_prob, row)).all()


SUPPORT_DIMS = {"positive": 2, "interval": 2, "simplex": 2}  # simplex: event size 3


@st.composite
def support_batches(draw, kind: str, n: int = 4):
    """(box, points (n, event), what each row is: "inside", "boundary", "outside" or "nan")."""
    dim = SUPPORT_DIMS[kind]
    box = Box(kind)
    if kind == "interval":
        lower = np.array([draw(st.floats(-3.0, 1.0)) for _ in range(dim)])
        box = Box(kind, lower, lower + np.array([draw(st.floats(0.5, 4.0)) for _ in range(dim)]))
    rows, labels = [], []
    for _ in range(n):
        label = draw(st.sampled_from(["inside", "boundary", "outside", "nan"]))
        u = np.array([draw(st.floats(-3.0, 3.0)) for _ in range(dim)])
        # float64, so that a bound written into the point is the bound exactly
        point = np.array(forward_map(box, u[None])[0], dtype=np.float64) if kind != "simplex" \
            else np.array(biject_to(constraints.simplex)(jnp.asarray(u)), dtype=np.float64)
        i = draw(st.integers(0, len(point) - 1))
        if label == "boundary":
            if kind == "positive":
                point[i] = 0.0
            elif kind == "interval":
                point[i] = draw(st.sampled_from([box.lower[i], box.upper[i]]))
            else:  # a face of the simplex: one coordinate 0, the others renormalised
                point[i] = 0.0
                point /= point.sum()
        elif label == "outside":
            way = draw(st.sampled_from(["below", "above", "infinite"]))
            if kind == "positive":
                point[i] = -np.inf if way == "infinite" else -draw(st.floats(1e-3, 5.0))
            elif kind == "interval":
                step = np.inf if way == "infinite" else draw(st.floats(1e-3, 2.0))
                point[i] = box.lower[i] - step if way != "above" else box.upper[i] + step
            elif way == "below":  # a negative coordinate, still summing to one
                point[i] = -draw(st.floats(1e-3, 0.5))
                point[(i + 1) % len(point)] += 1 - point.sum()
            else:  # off the plane of the simplex
                point = point * (2.0 if way == "above" else 0.5)
        elif label == "nan":
            point[i] = np.nan
        rows.append(point)
        labels.append(label)
    return box, np.array(rows), labels


@examples(1.0)
@given(data=st.data(), kind=st.sampled_from(sorted(SUPPORT_DIMS)))
def test_constrained_log_prob_outside_the_support(data, kind):
    """-inf at every point outside the support or on its boundary (the density of a pushed-
    forward Gaussian vanishes there; at both ends alike), NaN for a NaN point, finite inside:
    row by row in one batch."""
    box, points, labels = data.draw(support_batches(kind))
    flow = toy_flow(SUPPORT_DIMS[kind], "plain", "euler-3")
    with jax.enable_x64(True):  # float64 bounds: a point on a bound is on it exactly
        support = box.constraint()
        if kind == "interval":  # array bounds: one compile serves every interval
            support = constraints.interval(jnp.asarray(box.lower), jnp.asarray(box.upper))
        log_prob = np.asarray(_log_prob(nsi.ConstrainedSIFlow(flow, support), points))
    note(f"labels {labels}, log_prob {log_prob}")
    for label, value in zip(labels, log_prob, strict=True):
        if label == "inside":
            assert np.isfinite(value)
        elif label == "nan":
            assert np.isnan(value)
        else:
            assert value == -np.inf


@examples(0.6)
@given(dim=st.integers(1, 2), kind=st.sampled_from(["plain", "positive", "conditional"]),
       sign=st.sampled_from([1.0, -1.0]), seed=st.integers(0, 2**32 - 1))
def test_integer_and_infinite_points(dim, kind, sign, seed):
    """Integer points are cast (the same log_prob as the float points) or refused by name; a point
    with an infinite coordinate (outside the positive support, or in the closure of R^d at
    infinity) has log_prob -inf; an empty batch of a plain or conditional flow gives an empty
    result (or is refused by name)."""
    rng = np.random.default_rng(seed)
    integers = rng.integers(1, 4, size=(4, dim))
    points = integers.astype(np.float64)
    points[0, rng.integers(dim)] = sign * np.inf
    flow = toy_flow(dim, kind, "tsit5-4")
    context = np.zeros((4, 2))

    def evaluate(x):
        if kind == "conditional":
            return np.asarray(_conditional_log_prob(flow, jnp.asarray(x), context))
        return np.asarray(_log_prob(flow, jnp.asarray(x)))

    with jax.enable_x64(True):
        log_prob = evaluate(points)
        try:
            cast = evaluate(integers)
        except (TypeError, ValueError) as error:
            assert re.search(POINTS, str(error))
            cast = log_prob
        if kind != "positive":  # constrained flows: test_constrained_log_prob_of_empty_arrays
            try:
                empty = call_log_prob(flow, np.zeros((0, dim)), np.zeros((0, 2)))
                assert np.shape(empty) == (0,)
            except (TypeError, ValueError) as error:
                assert re.search(POINTS, str(error))
    assert log_prob[0] == -np.inf
    assert np.isfinite(log_prob[1:]).all()
    np.testing.assert_array_equal(cast[1:], log_prob[1:])


UNSERVEABLE_SUPPORTS = {
    # name: (support, dimensions of flows that cannot serve it)
    "nonnegative_integer": (constraints.nonnegative_integer, (1, 2, 3)),
    "boolean": (constraints.boolean, (1, 2, 3)),
    "a string": ("positive", (1, 2, 3)),
    "None": (None, (1, 2, 3)),
    "positive_definite": (constraints.positive_definite, (2,)),  # d = k (k + 1) / 2 fits
    "corr_cholesky": (constraints.corr_cholesky, (2,)),  # d = k (k - 1) / 2 fits
}


@examples(2.0)
@given(data=st.data(), name=st.sampled_from(sorted(UNSERVEABLE_SUPPORTS)))
def test_supports_a_flow_cannot_serve_are_refused(data, name):
    support, dims = UNSERVEABLE_SUPPORTS[name]
    flow = toy_flow(data.draw(st.sampled_from(dims), label="dim"))
    assert_clear_error(lambda: nsi.ConstrainedSIFlow(flow, support), r"\bsupport\b")


# ----------------------------------------------------------------------------------------------
# 6. known bugs: the correct behaviour, xfail(strict=True) until the bug is fixed
# ----------------------------------------------------------------------------------------------


# slow suite: tests/test_sde_noise_levels.py checks the default solve at each level in `make test`
@pytest.mark.slow
@examples(1.0)
@example(eps=1e3, schedule="constant")
@given(eps=st.sampled_from([5.0, 1e2, 1e3]), schedule=st.sampled_from(["constant", "decaying"]))
def test_sde_sampling_with_large_eps_is_accurate_or_refused(eps, schedule):
    """The default (error-controlled) SDE solve at a large eps gives finite, correct draws or
    refuses by name (eps, max_steps); it never returns NaN or exploded draws. Target N(0, 1): 64
    correct draws lie within 10 of 0. (Fixed steps, `SDESampler(eps, n_steps=...)`, have no
    error control by design.)"""
    level = eps if schedule == "constant" else nsi.DecayingEps(eps)
    flow = toy_flow(1).with_settings(sampler=nsi.SDESampler(level, max_steps=4096))
    try:
        with jax.enable_x64(True):
            draws = np.asarray(_sample(flow, jax.random.key(0), 64))
    except (ValueError, RuntimeError) as error:
        assert re.search(r"\beps\b.*\bmax_steps\b", str(error)), error
        return
    assert np.isfinite(draws).all(), "NaN draws"
    assert np.abs(draws).max() < 10, f"exploded draws, max |x| = {np.abs(draws).max():.3g}"


@examples(1.0)
@example(n_steps=8)
@given(n_steps=st.integers(2, 512))
def test_sde_sampler_accepts_numpy_integer_steps(n_steps):
    """As ODESampler and ODELikelihood do (check_positive_int takes any integral number)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # equinox: "A JAX array is being set as static"
        assert nsi.ODESampler(n_steps=np.int64(n_steps)).n_steps == n_steps
        try:
            sampler = nsi.SDESampler(1.0, n_steps=np.int64(n_steps))
        except ValueError as error:
            raise AssertionError(str(error)) from error
    assert sampler.n_steps == n_steps


@examples(1.0)
@example(option="n_probes", value=0)
@given(option=st.sampled_from(["n_probes", "key"]),
       value=st.sampled_from([0, -1, 0.5, "key", None]))
def test_bad_hutchinson_options_are_refused(option, value):
    def make():
        if option == "n_probes":
            return nsi.HutchinsonDivergence(jax.random.key(0), n_probes=value)
        return nsi.HutchinsonDivergence(value)

    assert_clear_error(make, rf"\b{option}\b")


@examples(1.0)
@example(kind="plain")
@given(kind=st.sampled_from(["plain", "positive", "conditional"]))
def test_complex_points_are_refused(kind):
    flow = toy_flow(2, kind, "euler-3")
    x = np.array([[1.0 + 1.0j, 0.5]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # JAX: casting complex to real
        assert_clear_error(lambda: call_log_prob(flow, x), POINTS)


@examples(1.0)
@example(x="bool")
@given(x=st.sampled_from(["bool", "string", "object"]))
def test_constrained_log_prob_checks_its_points(x):
    flow = toy_flow(2, "positive", "euler-3")
    value = {"bool": np.array([True, False]), "string": "0.5",
             "object": np.array([0.5, None], dtype=object)}[x]
    assert_clear_error(lambda: flow.log_prob(value), POINTS)


@examples(1.0)
@example(kind="positive", shape=(0, 2))
@given(kind=st.sampled_from(["positive", "interval", "simplex"]),
       shape=st.sampled_from([(0, 2), (0,), (2, 0), (0, 3)]))
def test_constrained_log_prob_of_empty_arrays(kind, shape):
    """An empty batch of points gives an empty result; an empty event is refused by name."""
    flow = toy_flow(2, kind, "euler-3")
    event = 3 if kind == "simplex" else 2
    if len(shape) == 2 and shape[0] == 0 and shape[1] == event:
        try:
            result = flow.log_prob(np.zeros(shape))
        except Exception as error:  # noqa: BLE001
            raise AssertionError(f"{type(error).__name__}: {error}") from error
        assert np.shape(result) == (0,)
    else:
        assert_clear_error(lambda: flow.log_prob(np.zeros(shape)), POINTS)


@examples(1.0)
@example(size=4)
@given(size=st.sampled_from([1, 2, 4, 5]))
def test_simplex_shape_errors_describe_the_points_given(size):
    flow = toy_flow(2, "simplex")
    error = assert_clear_error(lambda: flow.log_prob(np.full(size, 1.0 / size)), POINTS)
    assert f"({size},)" in str(error) and "3" in str(error), str(error)


@examples(1.0)
@example(argument="context", bad="bool")
@given(argument=st.sampled_from(["value", "context"]),
       bad=st.sampled_from(["bool", "complex", "string", "None", "batch"]))
def test_conditional_log_prob_checks_its_arguments(argument, bad):
    flow = toy_flow(2, "conditional", "euler-3")
    if argument == "value" and bad in ("bool", "complex"):
        bad = "string"  # bool points are refused by name; complex ones: test_complex_points
    value = {"bool": np.ones((3, 2), dtype=bool), "complex": np.ones((3, 2), dtype=complex),
             "string": "ab", "None": None, "batch": np.zeros((2, 2))}[bad]
    arguments = {"value": np.zeros((3, 2)), "context": np.zeros((3, 2)), argument: value}
    names = r"\bcontext\b" if argument == "context" else POINTS
    if bad == "batch":
        names = r"\bcontext\b.*\bvalue\b|\bvalue\b.*\bcontext\b"  # the two do not broadcast
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # JAX: casting complex to real
        assert_clear_error(lambda: flow.log_prob(arguments["value"], arguments["context"]), names)


@examples(1.0)
@example(field="scale", value=0.0)
@given(field=st.sampled_from(["shift", "scale"]),
       value=st.sampled_from([0.0, -1.0, math.nan, math.inf]))
def test_standardization_refuses_bad_values(field, value):
    if field == "shift" and value in (0.0, -1.0):
        value = math.nan  # any finite shift is fine
    arrays = {"shift": jnp.zeros(2), "scale": jnp.ones(2)}
    arrays[field] = arrays[field].at[0].set(value)
    assert_clear_error(lambda: nsi.Standardization(**arrays), rf"\b{field}\b")


@examples(1.0)
@example(dim=True)
@given(dim=st.sampled_from([True, np.int64(2), np.int32(1)]))
def test_dim_is_any_positive_integer_but_a_bool(dim):
    def make():
        return nsi.SIFlow(nsi.OneSidedLinearInterpolant(), standard_normal_velocity, dim=dim)

    if isinstance(dim, bool):
        assert_clear_error(make, r"\bdim\b")
    else:
        try:
            assert make().dim == dim
        except ValueError as error:
            raise AssertionError(str(error)) from error


@examples(1.0)
@example(bounds=(1.0, 0.0))
@given(bounds=st.sampled_from([(1.0, 0.0), (1.0, 1.0), (math.nan, 1.0), (0.0, math.nan)]))
def test_empty_or_nan_intervals_are_refused(bounds):
    flow = toy_flow(1)
    assert_clear_error(lambda: nsi.ConstrainedSIFlow(flow, constraints.interval(*bounds)),
                       r"\bsupport\b|\binterval\b|\bbound")


@examples(1.0)
@example(times=(0.0, 2.0), method="transport")
@given(times=st.sampled_from([(0.0, 2.0), (-0.5, 1.0), (1.0, -1.0)]),
       method=st.sampled_from(["transport", "sde_transport"]))
def test_transport_times_outside_the_interpolant_are_refused(times, method):
    flow = toy_flow(1, "plain", "euler-3").with_settings(
        sampler=nsi.ODESampler(diffrax.Euler(), n_steps=2))
    x = np.zeros((1, 1))
    if method == "transport":
        call = functools.partial(flow.transport, x, *times)
    else:
        call = functools.partial(flow.sde_transport, jax.random.key(0), x, *times, n_steps=2)
    assert_clear_error(call, r"\bt0\b|\bt1\b|\btime")
