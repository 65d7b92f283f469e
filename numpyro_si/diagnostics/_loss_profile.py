"""Per-time loss profile L(t) of a trained flow and the Girsanov KL bound of its SDE sampler.

docs/math.md section 2 (the quadratic objectives L_b, L_s and the excess-loss identity
L(f^) - min L = 1/2 E|f^ - f|^2) and section 5 (KL(rho1 || rho^1_SDE) <= DeltaL_b / eps +
eps DeltaL_s for constant eps).
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray
from numpyro.distributions.transforms import AffineTransform, IndependentTransform

from .._checks import check_data
from .._constrained import ConstrainedSIFlow
from .._distribution import SIFlow
from .._flow import Standardization
from .._interpolants import AbstractInterpolant, AbstractOneSidedInterpolant
from .._objectives import sample_coupling, score_loss, velocity_loss
from ..oracle import GaussianMixture, GaussianMixtureOracle
from ._cross_entropy import unconstrained_flow

__all__ = ["LossProfile", "KLBound", "loss_profile", "kl_bound", "kl_bound_from_oracle"]

_FIELDS = ("velocity", "score")


class LossProfile(NamedTuple):
    """The per-time loss of one field of a flow, with Monte Carlo standard errors.

    All losses are in the flow's own space (after `flow.standardization`), where it was trained.
    The `excess*` entries are `None` unless an oracle was given.

    - `field`: `"velocity"` (the objective L_b) or `"score"` (L_s).
    - `times`: `(T,)` times t_k; `weights`: `(T,)` quadrature weights on [time_min, time_max].
    - `loss`, `loss_se`: `(T,)` L(t_k) and its standard error.
    - `integrated`, `integrated_se`: sum_k weights_k L(t_k), the time-integrated loss.
    - `excess`, `excess_se`: `(T,)` DeltaL(t_k) = L(f^) - L(f) against the oracle's exact field
      f, which equals 1/2 E|f^ - f|^2 at time t_k.
    - `excess_integrated`, `excess_integrated_se`: its time integral.
    - `n_data`, `n_repeats`: data points, and noise draws per data point and time.
    """

    field: str
    times: Float[Array, " T"]
    weights: Float[Array, " T"]
    loss: Float[Array, " T"]
    loss_se: Float[Array, " T"]
    integrated: float
    integrated_se: float
    excess: Float[Array, " T"] | None
    excess_se: Float[Array, " T"] | None
    excess_integrated: float | None
    excess_integrated_se: float | None
    n_data: int
    n_repeats: int


class KLBound(NamedTuple):
    """The Girsanov bound KL(rho1 || rho^1_SDE) <= DeltaL_b / eps + eps DeltaL_s (constant eps).

    - `delta_velocity_loss`, `delta_score_loss`: the time-integrated excess losses used.
    - `delta_velocity_loss_se`, `delta_score_loss_se`: their standard errors (`None` if unknown).
    - `eps_star`: sqrt(DeltaL_b / DeltaL_s), the eps minimising the bound (`inf` when
      DeltaL_s = 0 < DeltaL_b, `0` when DeltaL_b = 0 < DeltaL_s, `nan` when both vanish).
    - `bound_at_eps_star`: 2 sqrt(DeltaL_b DeltaL_s), and its standard error `_se` (delta method).
    - `eps`, `bound`, `bound_se`: the bound at the requested eps (same shape as `eps`; `None`
      when no eps was requested).
    """

    delta_velocity_loss: float
    delta_score_loss: float
    delta_velocity_loss_se: float | None
    delta_score_loss_se: float | None
    eps_star: float
    bound_at_eps_star: float
    bound_at_eps_star_se: float | None
    eps: float | Float[Array, "..."] | None
    bound: float | Float[Array, "..."] | None
    bound_se: float | Float[Array, "..."] | None


# ----------------------------------------------------------------------------------------------
# loss profile
# ----------------------------------------------------------------------------------------------


def loss_profile(
    key: PRNGKeyArray,
    flow: SIFlow | ConstrainedSIFlow,
    data: Float[ArrayLike, "n d"],
    *,
    times: int | Float[ArrayLike, " T"] | None = None,
    n_repeats: int = 4,
    field: Literal["velocity", "score"] = "velocity",
    oracle: GaussianMixtureOracle | None = None,
    antithetic: bool = True,
) -> LossProfile:
    """The per-time loss L(t) of a trained flow on held-out data, to see where the fit is poor.

    At each time t_k every data point x1 is paired with `n_repeats` draws of (x0, z) from the
    flow's coupling (`nsi.sample_coupling`; x0 ~ `flow.base` for a two-sided flow), and the
    per-sample loss used in training (`nsi.velocity_loss` for L_b or `nsi.score_loss` for L_s,
    antithetic by default) is averaged. Standard errors treat the data points as the independent
    units (each point's repeats are averaged first). The time integral uses the quadrature
    `weights` (each time owns the interval between the midpoints to its neighbours, the first
    and last reaching `interpolant.time_min` / `time_max`; for the default midpoint grid this is
    the midpoint rule); its standard error is that of the per-point integrals, so it is exact
    Monte Carlo error but excludes the quadrature error.

    The loss itself depends on the data through an unknown constant (min L). With an `oracle`
    (a `GaussianMixtureOracle` for the data's distribution) the excess loss
    DeltaL(t) = L(f^) - L(f) = 1/2 E|f^ - f|^2 (docs/math.md section 2) is estimated too, with common
    random numbers: the same (t, x0, x1, z) enter the flow's field and the oracle's exact one.

    **Arguments:**

    - `key`: a `jax.random` key.
    - `flow`: an `SIFlow` (e.g. from `nsi.fit`), or a `ConstrainedSIFlow` (then `data` are points
      of its support, mapped to its unconstrained space, where its fields live).
    - `data`: held-out samples of the target, shape `(n, d)`, in data space; the flow's
      standardization is applied to them.
    - `times`: the times t_k (increasing, within the interpolant's [time_min, time_max]), or an
      integer T for the midpoints of T equal cells (default 32).
    - `n_repeats`: (x0, z) draws per data point and time.
    - `field`: `"velocity"` (L_b, default) or `"score"` (L_s; needs a flow with a score network
      and a two-sided interpolant with gamma(t_k) > 0).
    - `oracle`: optional `GaussianMixtureOracle` whose `target` is the data's distribution, in
      data space like `data`; it is mapped through the flow's standardization. Its interpolant
      must match the flow's. The reference fields run from the flow's own base (N(0, I) for a
      one-sided flow, else `flow.base`, which must then be a Gaussian or Gaussian mixture,
      possibly affinely transformed), since that is the problem the flow was trained on;
      `oracle.base` is not used.
    - `antithetic`: the antithetic estimators (as in `fit`).

    **Returns:** a `LossProfile`.
    """
    flow, data = unconstrained_flow(flow, data)
    if field not in _FIELDS:
        raise ValueError(f"field must be 'velocity' or 'score', got {field!r}.")
    interpolant = flow.interpolant
    if field == "score":
        if flow.score is None:
            reason = (
                "its score follows from the velocity and is singular at t = 1, so L_s is not"
                " defined; profile the velocity instead"
                if isinstance(interpolant, AbstractOneSidedInterpolant)
                else "give the flow a score network (fit(..., learn_score=True))"
            )
            raise ValueError(f"field='score' needs a flow with a score network: {reason}.")
    if not (isinstance(n_repeats, int) and n_repeats >= 1):
        raise ValueError(f"n_repeats must be a positive integer, got {n_repeats!r}.")
    y = check_data(data, "data", dim=flow.dim)
    dtype = y.dtype
    if flow.standardization is not None:
        y = flow.standardization.forward(y)
    times, weights = _times_and_weights(times, interpolant, dtype)
    if field == "score":
        gamma = interpolant.gamma(times)
        if not bool(jnp.all(gamma > 0)):
            bad = float(times[jnp.argmin(gamma > 0)])
            raise ValueError(
                f"L_s needs gamma(t) > 0 at every time; gamma({bad:.6g}) = 0. Keep the times"
                " strictly inside (0, 1)."
            )
    if oracle is not None:
        oracle = _oracle_in_flow_space(oracle, flow)

    losses, excess = _per_point_losses(
        key, flow, oracle, y, times, field=field, n_repeats=n_repeats, antithetic=antithetic
    )  # each (T, n): per data point, averaged over repeats
    loss, loss_se, integrated, integrated_se = _summaries(losses, weights)
    excess_summary = (None,) * 4 if excess is None else _summaries(excess, weights)
    return LossProfile(
        field, times, weights, loss, loss_se, integrated, integrated_se, *excess_summary,
        n_data=int(y.shape[0]), n_repeats=n_repeats,
    )


def _times_and_weights(times, interpolant: AbstractInterpolant, dtype):
    t_min, t_max = interpolant.time_min, interpolant.time_max
    if times is None:
        times = 32
    if isinstance(times, int) and not isinstance(times, bool):
        if times < 1:
            raise ValueError(f"times must be a positive integer or an array, got {times}.")
        times = t_min + (t_max - t_min) * (jnp.arange(times, dtype=dtype) + 0.5) / times
    times = jnp.asarray(times, dtype=dtype)
    if times.ndim != 1 or times.shape[0] == 0:
        raise ValueError(f"times must be a non-empty 1-d array, got shape {times.shape}.")
    if not bool(jnp.all(jnp.isfinite(times))):
        raise ValueError("times contains NaN or inf.")
    if not bool(jnp.all(jnp.diff(times) > 0)):
        raise ValueError("times must be strictly increasing.")
    if float(times[0]) < t_min or float(times[-1]) > t_max:
        raise ValueError(
            f"times must lie in the interpolant's [{t_min}, {t_max}], got"
            f" [{float(times[0]):.6g}, {float(times[-1]):.6g}]."
        )
    midpoints = 0.5 * (times[1:] + times[:-1])
    edges = jnp.concatenate(
        [jnp.asarray([t_min], dtype=dtype), midpoints, jnp.asarray([t_max], dtype=dtype)]
    )
    return times, jnp.diff(edges)


def _check_same_interpolant(flow_interpolant, oracle_interpolant):
    grid = jnp.linspace(0.0, 1.0, 11)
    for name in ("alpha", "beta", "gamma"):
        mine = getattr(flow_interpolant, name)(grid)
        theirs = getattr(oracle_interpolant, name)(grid)
        if not bool(jnp.allclose(mine, theirs, rtol=1e-6, atol=1e-8)):
            raise ValueError(
                f"The oracle's interpolant ({type(oracle_interpolant).__name__}) differs from the"
                f" flow's ({type(flow_interpolant).__name__}) in {name}(t); build the oracle with"
                " the flow's interpolant."
            )


def _standardize_mixture(mixture: GaussianMixture, standardization: Standardization):
    shift, scale = standardization.shift, standardization.scale
    means = (mixture.means - shift) / scale
    covariances = mixture.covariances / (scale[:, None] * scale[None, :])
    return GaussianMixture(mixture.weights, means, covariances)


def _oracle_in_flow_space(oracle, flow: SIFlow) -> GaussianMixtureOracle:
    """The exact fields of the problem the flow's fields were trained on, in the flow's space:
    from the flow's own base (N(0, I) for a one-sided flow, else `flow.base`) to the oracle's
    target mapped through the flow's standardization."""
    if not isinstance(oracle, GaussianMixtureOracle):
        raise TypeError(f"oracle must be a GaussianMixtureOracle, got {type(oracle).__name__}.")
    if oracle.dim != flow.dim:
        raise ValueError(
            f"The oracle is {oracle.dim}-dimensional but the flow is {flow.dim}-dimensional."
        )
    _check_same_interpolant(flow.interpolant, oracle.interpolant)
    target = oracle.target
    if flow.standardization is not None:
        target = _standardize_mixture(target, flow.standardization)
    if isinstance(flow.interpolant, AbstractOneSidedInterpolant):
        return GaussianMixtureOracle(flow.interpolant, target)
    base = _as_gaussian_mixture(flow.base)
    if base is None:
        raise TypeError(
            f"The flow's base ({type(flow.base).__name__}) is not a Gaussian or a Gaussian"
            " mixture (Normal(...).to_event(1), MultivariateNormal, MixtureSameFamily of these,"
            " optionally under an AffineTransform), so its exact fields are unknown."
        )
    return GaussianMixtureOracle(flow.interpolant, target, base)


def _as_gaussian_mixture(distribution) -> GaussianMixture | None:
    """A NumPyro Gaussian / Gaussian mixture with event shape (d,) as a `GaussianMixture`, or
    None for anything else."""
    if tuple(distribution.batch_shape) != () or len(distribution.event_shape) != 1:
        return None
    (dim,) = distribution.event_shape
    if isinstance(distribution, dist.TransformedDistribution):
        inner = _as_gaussian_mixture(distribution.base_dist)
        if inner is None:
            return None
        means, covariances = inner.means, inner.covariances
        for transform in distribution.transforms:
            if isinstance(transform, IndependentTransform):
                transform = transform.base_transform
            if not isinstance(transform, AffineTransform):
                return None
            loc = jnp.broadcast_to(transform.loc, (dim,))
            scale = jnp.broadcast_to(transform.scale, (dim,))
            means = loc + scale * means
            covariances = covariances * (scale[:, None] * scale[None, :])
        return GaussianMixture(inner.weights, means, covariances)
    components = _gaussian_components(distribution, dim)
    if components is not None:
        means, covariances = components
        return GaussianMixture(jnp.ones(1), means[None], covariances[None])
    if isinstance(distribution, dist.MixtureSameFamily):
        mixing = distribution.mixing_distribution
        if not isinstance(mixing, dist.CategoricalProbs | dist.CategoricalLogits):
            return None
        components = _gaussian_components(distribution.component_distribution, dim)
        if components is None:
            return None
        means, covariances = components
        return GaussianMixture(mixing.probs, means, covariances)
    return None


def _gaussian_components(distribution, dim):
    """(means (..., d), covariances (..., d, d)) of an MVN or independent Normals, else None."""
    if isinstance(distribution, dist.MultivariateNormal):
        return distribution.loc, distribution.covariance_matrix
    if (
        isinstance(distribution, dist.Independent)
        and isinstance(distribution.base_dist, dist.Normal)
        and distribution.reinterpreted_batch_ndims == 1
    ):
        normal = distribution.base_dist
        shape = tuple(distribution.batch_shape) + (dim,)
        loc = jnp.broadcast_to(normal.loc, shape)
        variance = jnp.broadcast_to(normal.scale, shape) ** 2
        return loc, variance[..., :, None] * jnp.eye(dim, dtype=variance.dtype)
    return None


@eqx.filter_jit
def _per_point_losses(key, flow, oracle, y, times, *, field, n_repeats, antithetic):
    """Per-sample losses at each time, averaged over the repeats: arrays of shape (T, n)."""
    interpolant = flow.interpolant
    loss_fn = velocity_loss if field == "velocity" else score_loss
    estimate = getattr(flow, field)
    exact = None if oracle is None else getattr(oracle, field)
    n = y.shape[0]

    def base_sample(k, m):
        return flow.base.sample(k, (m,))

    def one_repeat(t, k):
        x0, z = sample_coupling(k, interpolant, y, base_sample)

        def per_sample(fn, x0_, x1_, z_):
            return loss_fn(fn, interpolant, t, x0_, x1_, z_, antithetic=antithetic)

        mine = jax.vmap(lambda a, b, c: per_sample(estimate, a, b, c))(x0, y, z)
        if exact is None:
            return mine, jnp.zeros_like(mine)
        theirs = jax.vmap(lambda a, b, c: per_sample(exact, a, b, c))(x0, y, z)
        return mine, mine - theirs  # common random numbers: the same draws for both fields

    def at_time(inputs):
        t, k = inputs
        losses, excess = jax.vmap(lambda k_: one_repeat(t, k_))(jax.random.split(k, n_repeats))
        return jnp.mean(losses, axis=0), jnp.mean(excess, axis=0)

    keys = jax.random.split(key, times.shape[0])
    losses, excess = jax.lax.map(at_time, (times, keys))
    assert losses.shape == (times.shape[0], n)
    return losses, (None if oracle is None else excess)


def _summaries(per_point, weights):
    """Mean and se over data points at each time, and of the per-point time integrals."""
    n = per_point.shape[1]
    mean = jnp.mean(per_point, axis=1)
    se = jnp.std(per_point, axis=1, ddof=1) / jnp.sqrt(n) if n > 1 else jnp.full_like(mean, jnp.nan)
    integrals = weights @ per_point
    integrated_se = float(jnp.std(integrals, ddof=1) / jnp.sqrt(n)) if n > 1 else float("nan")
    return mean, se, float(jnp.mean(integrals)), integrated_se


# ----------------------------------------------------------------------------------------------
# KL bound
# ----------------------------------------------------------------------------------------------


def kl_bound(
    delta_velocity_loss: float | Float[ArrayLike, ""],
    delta_score_loss: float | Float[ArrayLike, ""],
    eps: float | Float[ArrayLike, "..."] | None = None,
    *,
    delta_velocity_loss_se: float | None = None,
    delta_score_loss_se: float | None = None,
) -> KLBound:
    """The Girsanov bound on the SDE sampler's KL divergence (docs/math.md section 5).

    For the forward SDE dX = (b^ + eps s^) dt + sqrt(2 eps) dW with constant eps, started at rho0,

        KL(rho1 || rho^1_SDE) <= DeltaL_b / eps + eps DeltaL_s,

    where DeltaL_b = L_b(b^) - min L_b and DeltaL_s = L_s(s^) - min L_s are the excess losses
    integrated over t in [0, 1] (= 1/2 int E|b^ - b|^2 dt and 1/2 int E|s^ - s|^2 dt). The bound
    is smallest at eps* = sqrt(DeltaL_b / DeltaL_s), where it equals 2 sqrt(DeltaL_b DeltaL_s).
    It bounds the continuous-time SDE; time discretisation adds its own error.

    The excess losses need min L, which is unknown in general: this function takes them as
    given (e.g. from a bound or an estimate of your own) and reports the bound in terms of them.
    For data from a Gaussian mixture, `kl_bound_from_oracle` computes them.

    **Arguments:**

    - `delta_velocity_loss`, `delta_score_loss`: the excess losses (non-negative).
    - `eps`: optional noise level(s) (positive; a float or an array) at which to also evaluate
      the bound.
    - `delta_velocity_loss_se`, `delta_score_loss_se`: optional standard errors of the excess
      losses, propagated (as independent estimates) to the bound.

    **Returns:** a `KLBound`.
    """
    b = _nonnegative_scalar(delta_velocity_loss, "delta_velocity_loss")
    s = _nonnegative_scalar(delta_score_loss, "delta_score_loss")
    b_se = None if delta_velocity_loss_se is None else float(delta_velocity_loss_se)
    s_se = None if delta_score_loss_se is None else float(delta_score_loss_se)
    with_se = b_se is not None and s_se is not None

    if b == 0 and s == 0:
        eps_star = math.nan  # every eps gives the bound 0
    elif s == 0:
        eps_star = math.inf
    else:
        eps_star = math.sqrt(b / s)
    bound_star = 2 * math.sqrt(b * s)
    bound_star_se = None
    if with_se:
        # delta method: d(2 sqrt(b s)) = sqrt(s / b) db + sqrt(b / s) ds
        bound_star_se = (
            math.nan if b == 0 or s == 0 else math.sqrt((s / b) * b_se**2 + (b / s) * s_se**2)
        )

    bound = bound_se = None
    if eps is not None:
        scalar = isinstance(eps, int | float)
        eps = jnp.asarray(eps, dtype=float)
        if not bool(jnp.all(jnp.isfinite(eps) & (eps > 0))):
            raise ValueError(
                "eps must be positive and finite (eps = 0 is the ODE, whose KL the losses do not"
                " control)."
            )
        bound = b / eps + eps * s
        if with_se:
            bound_se = jnp.sqrt(b_se**2 / eps**2 + eps**2 * s_se**2)
        if scalar:
            eps, bound = float(eps), float(bound)
            bound_se = None if bound_se is None else float(bound_se)
    return KLBound(b, s, b_se, s_se, eps_star, bound_star, bound_star_se, eps, bound, bound_se)


def _nonnegative_scalar(value, name) -> float:
    array = jnp.asarray(value)
    if array.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {array.shape}.")
    value = float(array)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(
            f"{name} must be a finite non-negative excess loss, got {value}. (An excess loss is"
            " 1/2 E|f^ - f|^2 >= 0; clip small negative Monte Carlo estimates to 0.)"
        )
    return value


def kl_bound_from_oracle(
    key: PRNGKeyArray,
    flow: SIFlow,
    oracle: GaussianMixtureOracle,
    data: Float[ArrayLike, "n d"] | None = None,
    *,
    n: int = 2048,
    times: int | Float[ArrayLike, " T"] | None = None,
    n_repeats: int = 4,
    eps: float | Float[ArrayLike, "..."] | None = None,
) -> KLBound:
    """The Girsanov KL bound of a flow's SDE sampler, with the excess losses computed against
    the Gaussian-mixture oracle, where min L is known (docs/math.md sections 5 and 6).

    DeltaL_b and DeltaL_s are the time-integrated excess losses of `loss_profile(...,
    oracle=oracle)` for the velocity and the score, each on its own `n` fresh draws of the target
    so that their standard errors propagate as independent (with user `data` both use the same
    points and the propagated se ignores that correlation). A Monte Carlo estimate slightly below
    zero (an essentially exact field) is clipped to 0 before entering the bound. Needs a two-sided
    flow with a score network: a one-sided flow's score comes from its velocity and is singular at
    t = 1, where this constant-eps bound does not apply. With the default times the integral
    covers [time_min, time_max] by the midpoint rule.

    **Arguments:**

    - `key`: a `jax.random` key.
    - `flow`: an `SIFlow` with a score network.
    - `oracle`: the exact fields for the data's distribution (`oracle.target` in data space).
    - `data`: held-out samples in data space; default: fresh draws from `oracle.target`.
    - `n`, `times`, `n_repeats`: Monte Carlo sizes (see `loss_profile`).
    - `eps`: optional noise level(s) at which to also evaluate the bound.

    **Returns:** a `KLBound` with standard errors.
    """
    if not isinstance(flow, SIFlow):
        raise TypeError(f"flow must be an SIFlow, got {type(flow).__name__}.")
    if flow.score is None:
        raise ValueError(
            "kl_bound_from_oracle needs a flow with a score network (a two-sided interpolant fitted"
            " with learn_score=True); a one-sided flow's score follows from its velocity and is"
            " singular at t = 1."
        )
    if not isinstance(oracle, GaussianMixtureOracle):
        raise TypeError(f"oracle must be a GaussianMixtureOracle, got {type(oracle).__name__}.")
    key_data_b, key_data_s, key_velocity, key_score = jax.random.split(key, 4)
    if data is None:
        data_velocity, _ = oracle.target.sample(key_data_b, n)
        data_score, _ = oracle.target.sample(key_data_s, n)
    else:
        data_velocity = data_score = data
    options = dict(times=times, n_repeats=n_repeats, oracle=oracle)
    velocity = loss_profile(key_velocity, flow, data_velocity, field="velocity", **options)
    score = loss_profile(key_score, flow, data_score, field="score", **options)
    return kl_bound(
        max(velocity.excess_integrated, 0.0),
        max(score.excess_integrated, 0.0),
        eps,
        delta_velocity_loss_se=velocity.excess_integrated_se,
        delta_score_loss_se=score.excess_integrated_se,
    )
