"""`fit` and `train`: history, early stopping, standardisation, score learning, custom networks
and bases, input validation, the key accuracy test (held-out KL to a Gaussian-mixture target);
the pieces of training on their own (`plan_steps`, `EarlyStopping`, `ema_update`,
`default_optimizer`, `TrainHistory`); `train` on built and trained flows of every kind."""

import math
import re
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import pytest
from helpers import array_leaves, mean_se
from numpyro.distributions import constraints

import numpyro_si as nsi
from numpyro_si.oracle import GaussianMixture

HISTORY_KEYS = {
    "train_loss", "val_loss", "val_loss_smoothed", "epoch", "best_epoch", "stopped_early",
    "num_steps", "steps_per_epoch", "opt_state", "interrupted",
}
# small, quiet networks for fast fits
SMALL = dict(network=nsi.FieldMLPSpec(width=32, depth=2), show_progress=False)
TINY = nsi.FieldMLPSpec(width=8, depth=1)
NO_VALIDATION = nsi.Validation(fraction=0.0)
EVERY_EPOCH = nsi.Validation(every=1)  # validate after every epoch
# Standardised Gaussian data are the base itself: under a variance-preserving interpolant
# (trigonometric) x_t stays N(0, I) and the optimal velocity is 0, so an untrained network is
# already nearly optimal. Tests that need a loss with something to learn on Gaussian data pin the
# linear interpolant (the default), whose optimal velocity is not zero.
LEARNABLE = dict(interpolant=nsi.OneSidedLinearInterpolant())
# an "optimiser" that adds 1 to every parameter per step: the parameters count the steps taken
ADD_ONE = optax.GradientTransformation(
    lambda params: optax.EmptyState(),
    lambda updates, state, params=None: (jax.tree.map(jnp.ones_like, updates), state),
)


def gaussian_data(key, n, shift=(10.0, -5.0), scale=(3.0, 0.5)):
    shift, scale = jnp.asarray(shift), jnp.asarray(scale)
    return shift + scale * jax.random.normal(key, (n, shift.shape[0]))


def gaussian_log_prob(x, shift=(10.0, -5.0), scale=(3.0, 0.5)):
    return dist.Normal(jnp.asarray(shift), jnp.asarray(scale)).to_event(1).log_prob(x)


def assert_same_velocity(flow_a, flow_b):
    """The two flows' velocity networks have bit-identical parameters."""
    for a, b in zip(array_leaves(flow_a.velocity), array_leaves(flow_b.velocity), strict=True):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------------------------
# history, progress, loss decrease
# ----------------------------------------------------------------------------------------------


def test_fit_returns_flow_and_documented_history(capfd):
    """Validation after every epoch (Validation(every=1)): one history entry per epoch, exact
    step counts (num_steps is a true cap: the 34th epoch stops after 3 of its 9 steps), and the
    loss goes down."""
    data = gaussian_data(jax.random.key(0), 1000)
    flow, history = nsi.fit(jax.random.key(1), data, num_steps=300, batch_size=100,
                            validation=EVERY_EPOCH, **LEARNABLE, **SMALL)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""  # show_progress=False prints nothing

    assert isinstance(flow, nsi.SIFlow) and flow.dim == 2
    default, _ = nsi.fit(jax.random.key(1), data, num_steps=1, batch_size=100, **SMALL)
    assert isinstance(default.interpolant, nsi.OneSidedLinearInterpolant)  # the default
    assert flow.score is None  # one-sided: the score follows from the velocity
    assert isinstance(history, nsi.TrainHistory) and set(history._fields) == HISTORY_KEYS
    for name in ("train_loss", "val_loss", "val_loss_smoothed", "epoch"):
        assert isinstance(getattr(history, name), np.ndarray)
    assert history.opt_state is not None
    # 900 training points (validation fraction 0.1), batches of 100: 9 steps per epoch,
    # ceil(300 / 9) = 34 epochs, the last one cut at 300 steps
    assert history.steps_per_epoch == 9
    np.testing.assert_array_equal(history.epoch, np.arange(1, 35))
    assert len(history.train_loss) == len(history.val_loss) == 34
    assert not history.stopped_early
    assert history.num_steps == 300
    assert np.all(np.isfinite(history.train_loss)) and np.all(np.isfinite(history.val_loss))
    assert history.best_epoch == history.epoch[np.argmin(history.val_loss_smoothed)]
    # the loss decreases: validation loss (common random numbers across epochs) and training loss
    val = history.val_loss
    assert val.min() < val[0] - 0.1
    assert history.train_loss[-5:].mean() < history.train_loss[0] - 0.1


def test_rounds_of_epochs_on_small_data():
    """Short epochs run in rounds between validations, as plan_steps lays them out; the history
    counts epochs, and the budget (num_steps or max_epochs) is met exactly."""
    data = gaussian_data(jax.random.key(0), 1000)
    _, history = nsi.fit(jax.random.key(1), data, num_steps=300, batch_size=100, **SMALL)
    # 34 epochs of 9 steps in 2 equal rounds of at least 100 steps; the last round stops at 300
    plan = nsi.plan_steps(900, batch_size=100, num_steps=300)
    assert plan == nsi.StepPlan(batch_size=100, steps_per_epoch=9, epochs_per_round=17,
                                n_rounds=2, num_steps=300) and plan.padded
    assert history.steps_per_epoch == 9
    np.testing.assert_array_equal(history.epoch, [17, 34])
    assert history.num_steps == 300
    assert history.best_epoch == history.epoch[np.argmin(history.val_loss_smoothed)]
    # an explicit max_epochs smaller than a round is honoured exactly
    _, history = nsi.fit(jax.random.key(1), data, max_epochs=5, batch_size=100, **SMALL)
    np.testing.assert_array_equal(history.epoch, [5])
    assert history.num_steps == 45


def test_show_progress_prints_a_bar(capfd):
    """The positive control for show_progress=False printing nothing."""
    data = gaussian_data(jax.random.key(0), 200)
    nsi.fit(jax.random.key(1), data, num_steps=20, batch_size=50, network=TINY,
            show_progress=True)
    captured = capfd.readouterr()
    assert "fit" in captured.err


def test_trained_flow_beats_the_initial_network_on_the_objective():
    """Paired comparison of L_b on fixed draws (standardised space): the trained velocity has a
    lower objective than the untrained one by many standard errors."""
    data = gaussian_data(jax.random.key(0), 2000)
    key = jax.random.key(3)
    init = nsi.FieldMLP(2, width=32, depth=2, key=jax.random.key(4))
    flow, _ = nsi.fit(key, data, velocity_network=init, num_steps=600, show_progress=False,
                      **LEARNABLE)
    interpolant = flow.interpolant
    y = flow.standardization.forward(gaussian_data(jax.random.key(5), 4000))
    k_t, k_c = jax.random.split(jax.random.key(6))
    t, _ = nsi.UniformTime().sample(k_t, y.shape[0])
    x0, z = nsi.sample_coupling(k_c, interpolant, y)

    def losses(net):
        return jax.vmap(lambda *a: nsi.velocity_loss(net, interpolant, *a))(t, x0, y, z)

    diff, se = mean_se(losses(flow.velocity) - losses(init))
    assert diff < -10 * se, (diff, se)


# ----------------------------------------------------------------------------------------------
# early stopping keeps the best parameters
# ----------------------------------------------------------------------------------------------


def test_early_stopping_returns_the_best_epoch():
    """With patience=8 (validating every epoch) training stops eight epochs after the best
    validation loss, and the returned parameters are those of the best epoch: a replay of exactly
    best_epoch epochs (same key, same split, a schedule-free optimiser) ends on the same
    parameters, bit for bit."""
    data = gaussian_data(jax.random.key(0), 400)
    common = dict(optimizer=optax.adam(3e-3), batch_size=60, validation=EVERY_EPOCH,
                  **LEARNABLE, **SMALL)
    flow, history = nsi.fit(jax.random.key(7), data, max_epochs=200,
                            early_stopping=nsi.EarlyStopping(patience=8, window=1), **common)
    val = history.val_loss
    best = history.best_epoch  # epochs completed when the kept parameters were validated
    assert history.stopped_early
    assert len(val) < 200
    assert best == history.epoch[np.argmin(val)] == np.argmin(val) + 1
    assert len(val) - best == 8  # exactly `patience` epochs without improvement
    assert history.num_steps == len(val) * 6  # 360 training points, batches of 60
    assert np.all(val[best:] >= val[best - 1])
    assert best >= 2  # the kept parameters are not simply the first or the last ones

    replay, replay_history = nsi.fit(
        jax.random.key(7), data, max_epochs=best,
        early_stopping=nsi.EarlyStopping(patience=1000, window=1), **common
    )
    np.testing.assert_array_equal(replay_history.val_loss, val[:best])
    assert replay_history.best_epoch == best and not replay_history.stopped_early
    assert_same_velocity(replay, flow)


def test_early_stopping_counts_patience_in_epochs_across_rounds():
    """With rounds of several epochs, the patience (in epochs) becomes whole rounds."""
    data = gaussian_data(jax.random.key(0), 400)
    _, history = nsi.fit(jax.random.key(7), data, max_epochs=2000,
                         early_stopping=nsi.EarlyStopping(patience=1, window=1),
                         optimizer=optax.adam(3e-3), batch_size=60, **SMALL)
    val, epochs = history.val_loss, history.epoch
    assert history.stopped_early
    assert epochs[0] > 1  # several epochs per round (6 steps per epoch)
    assert len(val) - 1 - np.argmin(val) == 1  # one round without improvement
    assert history.best_epoch == epochs[np.argmin(val)]


def test_early_stopping_on_the_windowed_mean_of_validations():
    """The default decides on the mean of the last `window` validation losses: the history
    holds those means, the kept parameters are the last validated in the best window, and
    training stops `patience` validations after it."""
    data = gaussian_data(jax.random.key(0), 400)
    common = dict(optimizer=optax.adam(3e-3), batch_size=60, validation=EVERY_EPOCH,
                  **LEARNABLE, **SMALL)
    _, history = nsi.fit(jax.random.key(7), data, max_epochs=300,
                         early_stopping=nsi.EarlyStopping(patience=6, window=4), **common)
    val, smoothed = history.val_loss, history.val_loss_smoothed
    expected = [val[max(0, i - 3): i + 1].mean() for i in range(len(val))]
    np.testing.assert_allclose(smoothed, expected, rtol=1e-6)
    best = int(np.argmin(smoothed))
    assert history.stopped_early and len(val) - 1 - best == 6
    assert history.best_epoch == history.epoch[best]


def test_without_validation_the_last_epoch_is_kept():
    data = gaussian_data(jax.random.key(0), 300)
    flow, history = nsi.fit(jax.random.key(1), data, validation=NO_VALIDATION, max_epochs=5,
                            batch_size=100, **SMALL)
    assert len(history.val_loss) == len(history.val_loss_smoothed) == 0
    assert history.best_epoch == history.epoch[-1] == 5 and not history.stopped_early
    assert history.steps_per_epoch == 3  # all 300 points train
    assert history.num_steps == 15


def test_ema_decay_zero_returns_the_raw_parameters():
    data = gaussian_data(jax.random.key(0), 300)
    options = dict(validation=NO_VALIDATION, max_epochs=5, batch_size=100, **SMALL)
    raw, _ = nsi.fit(jax.random.key(1), data, **options)
    averaged, _ = nsi.fit(jax.random.key(1), data, ema_decay=0.0, **options)
    assert_same_velocity(raw, averaged)


def test_ema_is_the_documented_moving_average_of_the_iterates():
    """An optimiser that adds 1 to every parameter per step makes the iterates p0 + k, so the
    average after K steps is known: e <- d_k e + (1 - d_k) p_{k+1}, d_k = min(D, (1+k)/(10+k))."""
    data = gaussian_data(jax.random.key(0), 300)
    decay, n_steps = 0.9, 15
    options = dict(validation=NO_VALIDATION, max_epochs=5, batch_size=100, **SMALL)
    flow, history = nsi.fit(jax.random.key(1), data, optimizer=ADD_ONE, ema_decay=decay,
                            **options)
    assert history.num_steps == n_steps
    untrained, _ = nsi.fit(jax.random.key(1), data, optimizer=optax.sgd(0.0), **options)
    ema = 0.0  # offset of the average from p0
    for k in range(n_steps):
        d = min(decay, (1.0 + k) / (10.0 + k))
        ema = d * ema + (1 - d) * (k + 1)
    assert 0.5 < ema < n_steps - 1  # a real average, neither p0 nor the last iterate
    for p0, e in zip(array_leaves(untrained.velocity), array_leaves(flow.velocity), strict=True):
        np.testing.assert_allclose(e, p0 + ema, rtol=1e-5, atol=1e-4)


def test_weight_decay_shrinks_the_parameters_and_zero_is_plain_adam():
    data = gaussian_data(jax.random.key(0), 300)
    options = dict(validation=NO_VALIDATION, max_epochs=40, batch_size=100, **SMALL)
    plain, _ = nsi.fit(jax.random.key(1), data, **options)
    zero, _ = nsi.fit(jax.random.key(1), data, weight_decay=0.0, **options)
    assert_same_velocity(plain, zero)
    # a NumPy scalar is a number too
    decayed, _ = nsi.fit(jax.random.key(1), data, weight_decay=np.float32(2.0), **options)

    def norm(flow):
        return float(jnp.sqrt(sum(jnp.sum(a**2) for a in array_leaves(flow.velocity))))

    # 120 steps of decoupled decay at lr ~5e-3: every parameter shrinks by ~(1 - 0.01) a step
    assert norm(decayed) < 0.7 * norm(plain), (norm(decayed), norm(plain))


# ----------------------------------------------------------------------------------------------
# standardisation, data space
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_standardization_is_stored_and_samples_are_in_data_space(x64):
    """A scaled and shifted Gaussian: the flow stores the data mean and scale, samples and log
    densities come back in data space. Learning margin: 0.05 standard deviations for the sample
    mean and 5 % for the sample std (measured: about 0.01 and 1 %)."""
    shift, scale = np.array([10.0, -5.0]), np.array([3.0, 0.5])
    n = 4000
    data = gaussian_data(jax.random.key(0), n)
    flow, _ = nsi.fit(jax.random.key(1), data, num_steps=1500, **SMALL)
    standardization = flow.standardization
    assert standardization is not None
    n_train = int(0.9 * n)
    np.testing.assert_array_less(np.abs(standardization.shift - shift), 4 * scale / np.sqrt(n_train))
    np.testing.assert_array_less(np.abs(standardization.scale / scale - 1), 4 * np.sqrt(0.5 / n_train))

    m = 2000
    samples = np.asarray(flow.sample(jax.random.key(2), (m,)))
    assert samples.shape == (m, 2) and samples.dtype == np.float64
    se_mean = samples.std(axis=0, ddof=1) / np.sqrt(m)
    np.testing.assert_array_less(np.abs(samples.mean(axis=0) - shift), 4 * se_mean + 0.05 * scale)
    np.testing.assert_array_less(
        np.abs(samples.std(axis=0) / scale - 1), 4 * np.sqrt(0.5 / m) + 0.05
    )

    # log densities in data space, including the log-Jacobian of the standardisation
    # (log(3 * 0.5) = 0.41 nats, far outside the margin); paired KL estimate < 0.03 nats
    x_test = gaussian_data(jax.random.key(3), 1000)
    gap, se = mean_se(gaussian_log_prob(x_test) - flow.log_prob(x_test))
    assert abs(gap) < 0.03 + 3 * se, (gap, se)


def test_standardize_false_stores_nothing():
    data = gaussian_data(jax.random.key(0), 200, shift=(0.0, 0.0), scale=(1.0, 1.0))
    flow, _ = nsi.fit(jax.random.key(1), data, standardize=False, num_steps=30, batch_size=50,
                      **SMALL)
    assert flow.standardization is None


# ----------------------------------------------------------------------------------------------
# two-sided: learned score and SDE sampling, custom base
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "learn_score", [pytest.param(True, marks=pytest.mark.slow), None],
    ids=["explicit", "default-for-sde"],
)
def test_learn_score_two_sided_brownian_samples_with_sde(learn_score):
    data = gaussian_data(jax.random.key(0), 1000)
    interpolant = nsi.LinearInterpolant(nsi.BrownianGamma(1.0))
    flow, history = nsi.fit(
        jax.random.key(1), data, interpolant=interpolant, learn_score=learn_score,
        settings=nsi.SolverSettings(sampler=nsi.SDESampler(0.5)), num_steps=400, batch_size=128,
        **SMALL,
    )
    assert flow.score is not None
    assert isinstance(flow.score, nsi.FieldMLP)
    assert isinstance(flow.sampler, nsi.SDESampler)
    assert float(flow.sampler.eps(0.3)) == 0.5
    samples = np.asarray(flow.sample(jax.random.key(2), (500,)))
    assert samples.shape == (500, 2) and np.all(np.isfinite(samples))
    # a loose sanity check of location (the fit is short): within half a standard deviation
    np.testing.assert_array_less(np.abs(samples.mean(axis=0) - [10.0, -5.0]), [1.5, 0.25])
    # the score is trained too: it differs from a fresh network with fit's initialisation
    assert np.all(np.isfinite(history.val_loss))


def test_learn_score_false_with_ode_two_sided():
    data = gaussian_data(jax.random.key(0), 200)
    flow, _ = nsi.fit(jax.random.key(1), data, interpolant=nsi.LinearInterpolant(nsi.BrownianGamma()),
                      num_steps=30, batch_size=50, **SMALL)
    assert flow.score is None and isinstance(flow.sampler, nsi.ODESampler)


class LinearField(eqx.Module):
    """A user-defined velocity: f(t, x) = A x + b + t c."""

    A: jax.Array
    b: jax.Array
    c: jax.Array

    def __init__(self, dim):
        self.A = jnp.zeros((dim, dim))
        self.b = jnp.zeros(dim)
        self.c = jnp.zeros(dim)

    def __call__(self, t, x):
        return self.A @ x + self.b + t * self.c


def test_user_velocity_network_is_used():
    data = gaussian_data(jax.random.key(0), 500)
    custom = LinearField(2)
    flow, _ = nsi.fit(jax.random.key(1), data, velocity_network=custom, num_steps=200,
                      batch_size=100, show_progress=False)
    assert isinstance(flow.velocity, LinearField)
    assert np.any(np.asarray(flow.velocity.A) != 0)  # trained away from its zero initialisation
    # and a user FieldMLP keeps its own architecture, not fit's width/depth defaults
    net = nsi.FieldMLP(2, width=8, depth=1, activation="tanh", key=jax.random.key(2))
    flow, _ = nsi.fit(jax.random.key(1), data, velocity_network=net, num_steps=50, batch_size=100,
                      show_progress=False)
    assert flow.velocity.config() == net.config()
    assert not np.array_equal(flow.velocity.output_layer.weight, net.output_layer.weight)


@pytest.mark.parametrize("dim, size", [(2, (64, 6)), (16, (64, 6)), (17, (128, 3))])
def test_default_network_size_depends_on_the_dimension(dim, size):
    # the documented rule: deep and narrow up to 16 dimensions, wide and shallow above
    assert nsi.default_network_size(dim) == size
    data = jax.random.normal(jax.random.key(0), (200, dim))
    flow, _ = nsi.fit(jax.random.key(1), data, num_steps=1, batch_size=100,
                      validation=NO_VALIDATION, show_progress=False)
    assert (flow.velocity.width, flow.velocity.depth) == size
    # an explicit width or depth overrides only that part of the default
    flow, _ = nsi.fit(jax.random.key(1), data, network=nsi.FieldMLPSpec(width=8), num_steps=1,
                      batch_size=100, validation=NO_VALIDATION, show_progress=False)
    assert (flow.velocity.width, flow.velocity.depth) == (8, size[1])


def test_two_sided_fit_with_a_custom_base():
    """base= (in data space) for a two-sided interpolant: the flow's base has event shape (d,),
    sampling and log_prob work in data space."""
    data = gaussian_data(jax.random.key(0), 1000)
    base = dist.Normal(jnp.array([8.0, -4.0]), jnp.array([2.0, 1.0])).to_event(1)
    flow, _ = nsi.fit(jax.random.key(1), data, interpolant=nsi.LinearInterpolant(), base=base,
                      num_steps=400, batch_size=128, **SMALL)
    assert tuple(flow.base.event_shape) == (2,)
    assert tuple(flow.event_shape) == (2,)
    # the stored base lives in the standardised space: its draws are (base - shift) / scale
    std = flow.standardization
    base_draws = np.asarray(flow.base.sample(jax.random.key(2), (4000,)))
    expected_mean = (np.array([8.0, -4.0]) - std.shift) / std.scale
    expected_sd = np.array([2.0, 1.0]) / std.scale
    np.testing.assert_array_less(np.abs(base_draws.mean(0) - expected_mean), 4 * expected_sd / np.sqrt(4000))
    samples = np.asarray(flow.sample(jax.random.key(3), (300,)))
    assert samples.shape == (300, 2) and np.all(np.isfinite(samples))
    np.testing.assert_array_less(np.abs(samples.mean(axis=0) - [10.0, -5.0]), [1.5, 0.25])
    log_prob = flow.log_prob(samples[:20])
    assert log_prob.shape == (20,) and np.all(np.isfinite(log_prob))


# ----------------------------------------------------------------------------------------------
# the key test: held-out KL to a Gaussian mixture
# ----------------------------------------------------------------------------------------------


def heldout_kl(n_train, num_steps, width, fit_key):
    """Train on a 2-d, 3-component mixture and return the paired estimate of
    KL(rho1 || rho^1) = mean[log rho1(x) - log rho^1(x)] on 2000 held-out points, its standard
    error and the model's held-out NLL."""
    target = GaussianMixture.random(jax.random.key(0), 2, 3)
    x_train, _ = target.sample(jax.random.key(1), n_train)
    x_test, _ = target.sample(jax.random.key(2), 2000)
    flow, _ = nsi.fit(fit_key, x_train, num_steps=num_steps,
                      network=nsi.FieldMLPSpec(width=width, depth=3), show_progress=False)
    model_log_prob = flow.log_prob(x_test)
    assert np.all(np.isfinite(model_log_prob))
    kl, se = mean_se(target.log_prob(x_test) - model_log_prob)
    return kl, se, -float(np.mean(model_log_prob))


def test_heldout_kl_to_mixture_fast(x64):
    """5000 steps, width 64, 10^4 training points. Measured (float64, fit keys 3, 4, 5):
    KL = 0.019, 0.018, 0.023 nats (se ~0.003-0.004). Margin 0.1 nats."""
    kl, se, nll = heldout_kl(10_000, 5000, 64, jax.random.key(3))
    assert kl < 0.1 + 3 * se, (kl, se, nll)
    assert kl > -3 * se  # a normalised model cannot beat the truth (catches log-det errors)


@pytest.mark.slow
def test_heldout_kl_to_mixture_tight(x64):
    """10^4 steps, width 128, 2 x 10^4 training points (~40 s). Measured (float64, fit keys 3, 4,
    5): KL = 0.014, 0.022, 0.019 nats (se ~0.003). Margin 0.04 nats."""
    kl, se, nll = heldout_kl(20_000, 10_000, 128, jax.random.key(3))
    assert kl < 0.04 + 3 * se, (kl, se, nll)
    assert kl > -3 * se


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------

GOOD = np.random.default_rng(0).normal(size=(100, 2))


def fit_quick(data=GOOD, **kwargs):
    return nsi.fit(jax.random.key(0), data, num_steps=1, show_progress=False, **kwargs)


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (np.zeros(10), ValueError, r"shape \(N, d\), got shape \(10,\)"),
        (np.zeros((4, 3, 2)), ValueError, r"shape \(N, d\), got shape \(4, 3, 2\)"),
        (np.zeros((0, 2)), ValueError, "empty"),
        (np.zeros((5, 0)), ValueError, "zero dimensions"),
        (np.arange(20).reshape(10, 2), TypeError, "floating-point"),
        (np.ones((10, 2), dtype=bool), TypeError, "floating-point"),
    ],
    ids=["1d", "3d", "empty", "no-dims", "int", "bool"],
)
def test_bad_data_shape_or_dtype(data, error, match):
    with pytest.raises(error, match=match):
        fit_quick(data)


def test_nan_and_inf_in_data_name_the_row():
    data = GOOD.copy()
    data[7, 1] = np.nan
    data[12, 0] = np.inf
    with pytest.raises(ValueError, match=r"NaN or inf in 2 row\(s\), first at row 7"):
        fit_quick(data)
    data = GOOD.copy()
    data[42, 0] = -np.inf
    with pytest.raises(ValueError, match="first at row 42"):
        fit_quick(data)


def test_check_data_accepts_good_data():
    out = nsi.check_data(GOOD.astype(np.float32))
    assert out.shape == (100, 2) and out.dtype == jnp.float32
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        nsi.check_data(GOOD, dim=3)


def test_one_sided_interpolant_rejects_base():
    with pytest.raises(ValueError, match="one-sided"):
        fit_quick(base=dist.Normal(jnp.zeros(2), 1.0).to_event(1))


@pytest.mark.parametrize(
    "base",
    [dist.Normal(jnp.zeros(3), 1.0).to_event(1), dist.Normal(0.0, 1.0), dist.Normal(jnp.zeros(2), 1.0)],
    ids=["wrong-dim", "scalar", "batch-not-event"],
)
def test_base_with_wrong_event_shape(base):
    with pytest.raises(ValueError, match=r"base must have event shape \(2,\)"):
        fit_quick(interpolant=nsi.LinearInterpolant(), base=base)


def test_mirror_interpolant_rejected():
    with pytest.raises(ValueError, match="MirrorInterpolant"):
        fit_quick(interpolant=nsi.MirrorInterpolant())


def test_not_an_interpolant():
    with pytest.raises(TypeError, match="AbstractInterpolant"):
        fit_quick(interpolant="linear")


@pytest.mark.parametrize(
    "interpolant", [nsi.LinearInterpolant(), nsi.OneSidedLinearInterpolant()],
    ids=["two-sided-deterministic", "one-sided"],
)
def test_learn_score_needs_a_stochastic_interpolant(interpolant):
    with pytest.raises(ValueError, match=r"needs a stochastic interpolant \(gamma > 0\)"):
        fit_quick(interpolant=interpolant, learn_score=True)


SDE = nsi.SolverSettings(sampler=nsi.SDESampler())


def test_sde_for_deterministic_two_sided_interpolant():
    # default learn_score for SDE settings on a two-sided interpolant is True: no gamma, no score
    with pytest.raises(ValueError, match="needs a stochastic interpolant"):
        fit_quick(interpolant=nsi.LinearInterpolant(), settings=SDE)
    with pytest.raises(ValueError, match="SDE sampling of a two-sided interpolant needs learn_score"):
        fit_quick(interpolant=nsi.LinearInterpolant(), settings=SDE, learn_score=False)
    with pytest.raises(ValueError, match="SDE sampling of a two-sided interpolant needs learn_score"):
        fit_quick(interpolant=nsi.LinearInterpolant(nsi.BrownianGamma()), settings=SDE,
                  learn_score=False)


def test_bad_sampler_name():
    """A sampler is "ode", "sde" or a sampler object, in SolverSettings, its replace and
    with_settings; another kind of object is a TypeError."""
    for make in (nsi.SolverSettings, nsi.SolverSettings().replace):
        with pytest.raises(ValueError, match="sampler must be 'ode', 'sde' or a sampler object,"
                                             " got 'euler'"):
            make(sampler="euler")
        with pytest.raises(TypeError, match="sampler must be 'ode', 'sde' or a numpyro_si"
                                            " sampler object, got 3"):
            make(sampler=3)


@pytest.mark.parametrize(
    ("option", "value", "new"),
    [
        ("max_steps", 10, "num_steps (optimiser steps, a true cap)"),
        ("val_prop", 0.2, "validation=nsi.Validation(fraction=...)"),
        ("val_repeats", 4, "validation=nsi.Validation(repeats=...)"),
        ("min_steps_between_validations", 1, "validation=nsi.Validation(every=...)"),
        ("max_patience", 5, "early_stopping=nsi.EarlyStopping(patience=...)"),
        ("val_window", 1, "early_stopping=nsi.EarlyStopping(window=...)"),
        ("time_sampler", nsi.UniformTime(), "objective=nsi.Objective(time_sampler=...)"),
        ("antithetic", False, "objective=nsi.Objective(antithetic=...)"),
        ("width", 8, "network=nsi.FieldMLPSpec(width=...)"),
        ("depth", 2, "network=nsi.FieldMLPSpec(depth=...)"),
        ("residual", True, "network=nsi.FieldMLPSpec(residual=...)"),
        ("n_frequencies", 2, "network=nsi.FieldMLPSpec(n_frequencies=...)"),
        ("activation", "tanh", "network=nsi.FieldMLPSpec(activation=...)"),
        ("sampler", "sde", "settings=nsi.SolverSettings(sampler=...)"),
        ("eps", 0.5, "settings=nsi.SolverSettings(sampler=nsi.SDESampler(eps))"),
        ("rtol", 1e-6, "settings=nsi.SolverSettings(rtol=...)"),
        ("atol", 1e-6, "settings=nsi.SolverSettings(atol=...)"),
    ],
)
def test_old_option_names_say_what_they_are_now(option, value, new):
    message = f"fit got the option '{option}', which is now {new}."
    with pytest.raises(TypeError, match=re.escape(message)):
        fit_quick(**{option: value})


def test_unknown_options_are_listed_with_the_accepted_ones():
    with pytest.raises(TypeError, match=r"fit got unexpected option\(s\) \['lr'\]\. It accepts:"
                                        r" base, batch_size, checkpoint, context, early_stopping,"
                                        r" ema_decay"):
        fit_quick(lr=1e-3)
    flow = nsi.build_flow(jax.random.key(0), GOOD, network=TINY)
    with pytest.raises(TypeError, match=re.escape(
        "train got the option 'max_steps', which is now num_steps (optimiser steps, a true cap)."
    )):
        nsi.train(jax.random.key(0), flow, GOOD, max_steps=1)
    # the flow is built: train takes no network options
    with pytest.raises(TypeError, match=r"train got unexpected option\(s\) \['network'\]\. It"
                                        r" accepts: batch_size, checkpoint, early_stopping,"
                                        r" ema_decay"):
        nsi.train(jax.random.key(0), flow, GOOD, network=TINY)


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_validation_fraction(fraction):
    with pytest.raises(ValueError, match=r"Validation\.fraction must be a finite number in"
                                         r" \[0\.0, 1\.0\), got"):
        nsi.Validation(fraction=fraction)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (dict(repeats=0), r"Validation\.repeats must be an int >= 1, got 0"),
        (dict(every=0), r"Validation\.every must be an int >= 1, got 0"),
        (dict(every=2.5), r"Validation\.every must be an int >= 1, got 2\.5"),
    ],
)
def test_bad_validation_options(options, match):
    with pytest.raises(ValueError, match=match):
        nsi.Validation(**options)


@pytest.mark.parametrize(("n", "fraction"), [(1, 0.1), (3, 0.1), (1, 0.5), (2, 0.9)])
def test_too_little_data_for_the_validation_split(n, fraction):
    with pytest.raises(ValueError, match="cannot be split into training and validation"):
        fit_quick(GOOD[:n], validation=nsi.Validation(fraction=fraction))


@pytest.mark.parametrize(
    ("option", "value"),
    [("batch_size", 0), ("batch_size", -3), ("batch_size", 64.0), ("num_steps", 0),
     ("num_steps", 2.5), ("num_steps", True), ("max_epochs", 0), ("max_epochs", 1.5)],
)
def test_bad_step_counts(option, value):
    options = dict(num_steps=1) | {option: value}
    with pytest.raises(ValueError, match=re.escape(f"{option} must be an int >= 1, got {value!r}.")):
        nsi.fit(jax.random.key(0), GOOD, show_progress=False, **options)


@pytest.mark.parametrize("learning_rate", [0.0, -1e-3, float("nan"), float("inf"), True, "1e-3"])
def test_bad_learning_rate(learning_rate):
    with pytest.raises(ValueError, match=r"learning_rate must be a (finite number in \(0\.0, 1\.0\]|real"
                                         r" number), got"):
        fit_quick(learning_rate=learning_rate)


@pytest.mark.parametrize("weight_decay", [-0.1, float("nan"), float("inf"), True, "0.1"])
def test_bad_weight_decay(weight_decay):
    with pytest.raises(ValueError, match=r"weight_decay must be a (finite number >= 0\.0|real"
                                         r" number), got"):
        fit_quick(weight_decay=weight_decay)


def test_own_optimizer_takes_no_default_optimizer_options():
    for options in (dict(weight_decay=0.1), dict(learning_rate=1e-3)):
        with pytest.raises(ValueError, match="configure the default optimiser; with your own"
                                             " `optimizer`, set them there"):
            fit_quick(optimizer=optax.adam(1e-3), **options)


def test_opt_state_needs_its_optimizer_and_a_flow_to_continue():
    optimizer = nsi.default_optimizer(1e-3, 10)
    state = optimizer.init({"w": jnp.zeros(2)})
    with pytest.raises(ValueError, match="opt_state continues a run of a given optimiser: pass"
                                         " that `optimizer` too"):
        fit_quick(opt_state=state)
    with pytest.raises(ValueError, match=r"fit builds a new flow; continue a run with"
                                         r" nsi\.train\(\.\.\., opt_state=\)"):
        fit_quick(optimizer=optimizer, opt_state=state)


@pytest.mark.parametrize("ema_decay", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_ema_decay(ema_decay):
    with pytest.raises(ValueError, match=r"ema_decay must be a finite number in \[0\.0, 1\.0\),"
                                         r" got"):
        fit_quick(ema_decay=ema_decay)


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("objective", nsi.UniformTime(), "objective must be an nsi.Objective, got UniformTime"),
        ("validation", 0.1, "validation must be an nsi.Validation, got 0.1"),
        ("early_stopping", 5, "early_stopping must be an nsi.EarlyStopping, got 5"),
        ("network", dict(width=8), "network must be a FieldMLPSpec, got {'width': 8}"),
        ("settings", "sde", "settings must be a SolverSettings, got 'sde'"),
    ],
)
def test_settings_objects_of_the_wrong_kind(option, value, match):
    with pytest.raises(TypeError, match=re.escape(match)):
        fit_quick(**{option: value})


def test_bad_objective():
    with pytest.raises(TypeError, match="time_sampler must be an AbstractTimeSampler, got 'beta'"):
        nsi.Objective(time_sampler="beta")


# ----------------------------------------------------------------------------------------------
# the pieces, without training: plan_steps
# ----------------------------------------------------------------------------------------------


def test_plan_steps_in_whole_rounds():
    """900 points, batches of 100, 270 steps: 30 epochs of 9 steps, in 2 rounds of 15 epochs
    (at least 100 steps between validations, spread evenly); exactly the budget, not padded."""
    plan = nsi.plan_steps(900, batch_size=100, num_steps=270)
    assert plan == nsi.StepPlan(batch_size=100, steps_per_epoch=9, epochs_per_round=15,
                                n_rounds=2, num_steps=270)
    assert not plan.padded and plan.n_epochs == 30
    # NumPy integers are integers too
    assert nsi.plan_steps(np.int64(900), batch_size=np.int32(100), num_steps=np.int64(270)) == plan
    # points left over after whole batches are not a batch: 950 points, the same 9 steps
    assert nsi.plan_steps(950, batch_size=100, num_steps=270) == plan


def test_plan_steps_cuts_the_last_round_at_num_steps():
    """1800 points, batches of 256, 300 steps: 7 steps per epoch, 43 epochs in 2 rounds of 22
    (308 steps planned); the last round stops at step 300."""
    plan = nsi.plan_steps(1800, batch_size=256, num_steps=300)
    assert plan == nsi.StepPlan(batch_size=256, steps_per_epoch=7, epochs_per_round=22,
                                n_rounds=2, num_steps=300)
    assert plan.padded and plan.n_epochs == 43  # the last one partial (6 of 7 steps)
    # fewer steps than an epoch: one round of one epoch, cut
    plan = nsi.plan_steps(900, batch_size=100, num_steps=5)
    assert plan == nsi.StepPlan(100, 9, 1, 1, 5) and plan.padded and plan.n_epochs == 1
    # validating every step: rounds of one epoch
    plan = nsi.plan_steps(900, batch_size=100, num_steps=300, validate_every=1)
    assert plan == nsi.StepPlan(100, 9, 1, 34, 300) and plan.padded
    # the defaults: batches of 512, 10 000 steps, validations at least 100 steps apart
    plan = nsi.plan_steps(9000)
    assert plan == nsi.StepPlan(512, 17, 7, 85, 10_000) and plan.padded


def test_plan_steps_max_epochs_caps_the_steps():
    plan = nsi.plan_steps(900, batch_size=100, max_epochs=5)  # below the default 10 000 steps
    assert plan == nsi.StepPlan(100, 9, 5, 1, 45) and not plan.padded
    # a cap above the step budget changes nothing; one below it cuts the steps
    assert nsi.plan_steps(900, batch_size=100, num_steps=270, max_epochs=1000) == \
        nsi.plan_steps(900, batch_size=100, num_steps=270)
    plan = nsi.plan_steps(900, batch_size=100, num_steps=270, max_epochs=29)
    assert plan == nsi.StepPlan(100, 9, 15, 2, 261) and plan.padded  # 30 epochs laid out
    assert plan.n_epochs == 29  # 29 run


def test_plan_steps_batch_larger_than_the_data():
    plan = nsi.plan_steps(50, batch_size=512, num_steps=10)
    assert plan == nsi.StepPlan(batch_size=50, steps_per_epoch=1, epochs_per_round=10, n_rounds=1,
                                num_steps=10)
    assert not plan.padded


@pytest.mark.parametrize(
    ("option", "value"),
    [("n_train", 0), ("n_train", 10.0), ("batch_size", 0), ("num_steps", 0), ("num_steps", 2.5),
     ("num_steps", True), ("max_epochs", 0), ("max_epochs", -2)],
)
def test_plan_steps_refuses_bad_counts(option, value):
    arguments = dict(n_train=900, batch_size=100, num_steps=270) | {option: value}
    n_train = arguments.pop("n_train")
    with pytest.raises(ValueError, match=re.escape(f"{option} must be an int >= 1, got {value!r}.")):
        nsi.plan_steps(n_train, **arguments)


# ----------------------------------------------------------------------------------------------
# EarlyStopping
# ----------------------------------------------------------------------------------------------


def test_early_stopping_on_window_means():
    """Window 3, patience 2 (in validations): the smoothed loss is the mean of the last three
    losses (fewer at the start), a strictly lower mean is an improvement, and training stops at
    the second validation in a row without one."""
    stopping = nsi.EarlyStopping(patience=2, window=3)
    state = stopping.init()
    assert state == nsi.StoppingState((), (), math.inf, 0, False, False)
    losses = [5.0, 4.0, 6.0, 3.0, 7.0, 8.0]
    means = [5.0, 4.5, 5.0, 13.0 / 3.0, 16.0 / 3.0, 6.0]
    improved = [True, True, False, True, False, False]
    waited = [0, 0, 1, 0, 1, 2]
    best = [5.0, 4.5, 4.5, 13.0 / 3.0, 13.0 / 3.0, 13.0 / 3.0]
    for i, loss in enumerate(losses):
        state = stopping.update(state, loss, patience=2)
        assert state.val_losses == tuple(losses[: i + 1])
        np.testing.assert_allclose(state.smoothed, means[: i + 1], rtol=1e-15)
        assert state.improved == improved[i] and state.waited == waited[i]
        assert state.best == pytest.approx(best[i], rel=1e-15)
        assert state.stop == (i == len(losses) - 1)
    # window 1 decides on single validations; an equal loss is no improvement
    single = nsi.EarlyStopping(window=1)
    state = single.update(single.update(single.init(), 2.0, 5), 2.0, 5)
    assert state.smoothed == (2.0, 2.0) and not state.improved and state.waited == 1


def test_patience_in_validations():
    """The patience (epochs) counts whole validations, rounded up; None: a fifth of the planned
    epochs, at least 20 validations."""
    rounds_of_15 = nsi.StepPlan(100, 9, 15, 2, 270)
    assert nsi.EarlyStopping().patience_in_validations(rounds_of_15) == 20
    for patience, validations in ((1, 1), (8, 1), (15, 1), (16, 2), (31, 3)):
        stopping = nsi.EarlyStopping(patience=patience)
        assert stopping.patience_in_validations(rounds_of_15) == validations
    every_epoch = nsi.StepPlan(60, 6, 1, 200, 1200)  # 200 validations planned
    assert nsi.EarlyStopping().patience_in_validations(every_epoch) == 40
    assert nsi.EarlyStopping(patience=8).patience_in_validations(every_epoch) == 8


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (dict(patience=0), r"EarlyStopping\.patience must be an int >= 1, got 0"),
        (dict(patience=2.5), r"EarlyStopping\.patience must be an int >= 1, got 2\.5"),
        (dict(window=0), r"EarlyStopping\.window must be an int >= 1, got 0"),
        (dict(window=True), r"EarlyStopping\.window must be an int >= 1, got True"),
    ],
)
def test_bad_early_stopping(options, match):
    with pytest.raises(ValueError, match=match):
        nsi.EarlyStopping(**options)


# ----------------------------------------------------------------------------------------------
# ema_update, default_optimizer, TrainHistory
# ----------------------------------------------------------------------------------------------


def test_ema_update_is_the_documented_average():
    """Two steps against the hand formula e <- r_k e + (1 - r_k) p, r_k = min(D, (1+k)/(10+k))."""
    ema0 = {"a": jnp.array([1.0, -2.0]), "b": jnp.array(3.0)}
    p1 = {"a": jnp.array([0.5, 0.0]), "b": jnp.array(-1.0)}
    p2 = {"a": jnp.array([0.25, 4.0]), "b": jnp.array(2.0)}
    decay = 0.9
    e1 = nsi.ema_update(ema0, p1, decay, jnp.asarray(0), jnp.float32)
    e2 = nsi.ema_update(e1, p2, decay, jnp.asarray(1), jnp.float32)
    r0, r1 = 1.0 / 10.0, 2.0 / 11.0  # both below the decay
    for name in ("a", "b"):
        e0, q1, q2 = (np.asarray(tree[name], np.float64) for tree in (ema0, p1, p2))
        expected = r1 * (r0 * e0 + (1 - r0) * q1) + (1 - r1) * q2
        assert e2[name].dtype == jnp.float32
        np.testing.assert_allclose(e2[name], expected, rtol=1e-6)
    # late steps: the rate is the decay; decay 0: the parameters themselves
    late = nsi.ema_update(ema0, p1, decay, jnp.asarray(1000), jnp.float32)
    np.testing.assert_allclose(late["a"], 0.9 * np.array([1.0, -2.0]) + 0.1 * np.array([0.5, 0.0]),
                               rtol=1e-6)
    none = nsi.ema_update(ema0, p1, 0.0, jnp.asarray(3), jnp.float32)
    np.testing.assert_array_equal(none["a"], p1["a"])


def run_optimizer(optimizer, params, gradient, n):
    """The parameters after each of n updates with a constant gradient."""
    state = optimizer.init(params)
    trajectory = []
    for _ in range(n):
        updates, state = optimizer.update(gradient, state, params)
        params = optax.apply_updates(params, updates)
        trajectory.append(np.asarray(params))
    return np.array(trajectory), state


def documented_rate(k, peak, num_steps):
    """Linear warm-up from 0 over min(500, num_steps // 10) steps, then a cosine decay to 1 % of
    the peak at num_steps."""
    warmup, end = min(500, num_steps // 10), 0.01 * peak
    if k < warmup:
        return peak * k / warmup
    k = min(k, num_steps)
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * (k - warmup) / (num_steps - warmup)))


def test_default_optimizer_is_adam_on_the_documented_schedule():
    """With a constant gradient Adam's step is the rate times sign(g): the steps trace the
    schedule (warm-up over 5 of 50 steps, cosine decay to 1 %, constant after)."""
    peak, num_steps = 1e-2, 50
    gradient = jnp.array([1.0, -2.0, 0.5])
    path, _ = run_optimizer(nsi.default_optimizer(peak, num_steps), jnp.zeros(3), gradient, 60)
    steps = np.diff(np.concatenate([np.zeros((1, 3)), path]), axis=0)
    rates = np.array([documented_rate(k, peak, num_steps) for k in range(60)])
    # (differences of float32 parameters of size ~0.3: absolute error ~3e-8)
    np.testing.assert_allclose(steps, -rates[:, None] * np.sign(gradient)[None], rtol=1e-4,
                               atol=5e-8)
    assert rates[0] == 0 and rates[5] == peak and rates[50] == rates[59] == pytest.approx(1e-4)


def test_default_optimizer_with_weight_decay_is_adamw():
    """weight_decay > 0: decoupled decay, p <- p - rate_k (sign(g) + weight_decay p) with a
    constant gradient (the decay is not normalised by Adam), as optax.adamw; 0: plain Adam."""
    peak, num_steps, decay = 1e-2, 50, 0.5
    p0 = jnp.array([1.0, -2.0, 3.0])
    gradient = jnp.array([1.0, -2.0, 0.5])
    path, state = run_optimizer(nsi.default_optimizer(peak, num_steps, weight_decay=decay), p0,
                                gradient, 8)
    expected, p = [], np.asarray(p0, np.float64)
    for k in range(8):
        p = p - documented_rate(k, peak, num_steps) * (np.sign(gradient) + decay * p)
        expected.append(p)
    np.testing.assert_allclose(path, expected, rtol=1e-5)
    reference, _ = run_optimizer(
        optax.chain(optax.clip_by_global_norm(10.0), optax.adamw(
            optax.warmup_cosine_decay_schedule(0.0, peak, 5, num_steps, end_value=peak / 100),
            weight_decay=decay)),
        p0, gradient, 8,
    )
    np.testing.assert_array_equal(path, reference)
    plain, _ = run_optimizer(nsi.default_optimizer(peak, num_steps), p0, gradient, 8)
    expected = np.asarray(p0) - np.cumsum(
        [documented_rate(k, peak, num_steps) for k in range(8)])[:, None] * np.sign(gradient)
    np.testing.assert_allclose(plain, expected, rtol=1e-5)


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ((0.0, 100), r"learning_rate must be a finite number in \(0\.0, 1\.0\], got 0\.0"),
        ((-1e-3, 100), r"learning_rate must be a finite number in \(0\.0, 1\.0\], got -0\.001"),
        ((float("nan"), 100), r"learning_rate must be a finite number in \(0\.0, 1\.0\], got nan"),
        ((True, 100), r"learning_rate must be a real number, got True"),
        ((1e-3, 100, -0.1), r"weight_decay must be a finite number >= 0\.0, got -0\.1"),
        ((1e-3, 100, float("inf")), r"weight_decay must be a finite number >= 0\.0, got inf"),
        ((1e-3, 0), r"num_steps must be an int >= 1, got 0"),
        ((1e-3, 10.0), r"num_steps must be an int >= 1, got 10\.0"),
    ],
)
def test_default_optimizer_refuses_bad_settings(arguments, match):
    with pytest.raises(ValueError, match=match):
        nsi.default_optimizer(*arguments)


def test_train_history_dict_access_warns_and_returns_the_attribute():
    history = nsi.TrainHistory(
        train_loss=np.array([2.0, 1.0]), val_loss=np.array([2.5, 1.5]),
        val_loss_smoothed=np.array([2.5, 2.0]), epoch=np.array([3, 6]), best_epoch=6,
        stopped_early=False, num_steps=18, steps_per_epoch=3,
    )
    assert history.opt_state is None
    for name in nsi.TrainHistory._fields:
        with pytest.warns(FutureWarning, match=rf"history\['{name}'\] is history\.{name} now"):
            value = history[name]
        assert value is getattr(history, name)
    # positions are the tuple's, without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert history[0] is history.train_loss and history[-4] == 18
        assert history[4:6] == (6, False)


# ----------------------------------------------------------------------------------------------
# train: any flow, further
# ----------------------------------------------------------------------------------------------

QUIET = dict(batch_size=100, validation=NO_VALIDATION, show_progress=False)


def schedule_counts(opt_state):
    """The step counts held in an optimiser state (Adam's and the schedule's)."""
    return [int(count) for _, count in optax.tree_utils.tree_get_all_with_path(opt_state, "count")]


def test_train_continues_an_optimiser_run():
    """optimizer= with opt_state=history.opt_state continues the run: the state counts every
    step taken (so the schedule goes on), where a fresh state starts it again."""
    data = gaussian_data(jax.random.key(0), 300)
    flow = nsi.build_flow(jax.random.key(1), data, network=TINY)
    optimizer = nsi.default_optimizer(5e-3, 100)
    first, history = nsi.train(jax.random.key(2), flow, data, num_steps=60, optimizer=optimizer,
                               **QUIET)
    assert schedule_counts(history.opt_state) == [60, 60]
    second, continued = nsi.train(jax.random.key(3), first, data, num_steps=40,
                                  optimizer=optimizer, opt_state=history.opt_state, **QUIET)
    assert continued.num_steps == 40 and schedule_counts(continued.opt_state) == [100, 100]
    fresh, restarted = nsi.train(jax.random.key(3), first, data, num_steps=40,
                                 optimizer=optimizer, **QUIET)
    assert schedule_counts(restarted.opt_state) == [40, 40]
    assert not np.array_equal(second.velocity.output_layer.weight,
                              fresh.velocity.output_layer.weight)


def test_train_trains_the_networks_and_keeps_the_rest():
    """train on a built flow: the same kind of flow, every velocity parameter moved, the
    interpolant, standardisation (measured by build_flow, not again) and settings unchanged."""
    data = gaussian_data(jax.random.key(0), 300)
    settings = nsi.SolverSettings(rtol=1e-6, atol=1e-7)
    flow = nsi.build_flow(jax.random.key(1), data, network=TINY, settings=settings)
    std = nsi.Standardization.from_data(data)
    np.testing.assert_array_equal(flow.standardization.shift, std.shift)
    np.testing.assert_array_equal(flow.standardization.scale, std.scale)
    trained, history = nsi.train(jax.random.key(2), flow, data[:200], num_steps=30, **QUIET)
    assert type(trained) is nsi.SIFlow and trained.dim == 2 and trained.score is None
    assert trained.settings == flow.settings and trained.interpolant == flow.interpolant
    np.testing.assert_array_equal(trained.standardization.shift, std.shift)
    np.testing.assert_array_equal(trained.standardization.scale, std.scale)
    assert trained.velocity.config() == flow.velocity.config()
    for before, after in zip(array_leaves(flow.velocity), array_leaves(trained.velocity),
                             strict=True):
        assert np.all(np.asarray(before) != np.asarray(after))
    assert history.num_steps == 30 and history.steps_per_epoch == 2  # 200 points, batches of 100
    # held-out data given: the training set is all of `data`
    _, history = nsi.train(jax.random.key(2), flow, data[:200], val_data=data[200:], num_steps=4,
                           batch_size=100, show_progress=False)
    assert history.steps_per_epoch == 2 and len(history.val_loss) == 1


@pytest.mark.parametrize(
    ("num_steps", "every", "rounds", "epochs"),
    [(7, 100, 1, [3]), (8, 100, 1, [3]), (13, 4, 2, [3, 5])],
    ids=["7-of-9", "8-of-9", "13-of-18"],
)
def test_num_steps_is_a_true_cap(num_steps, every, rounds, epochs):
    """An optimiser that adds 1 to every parameter per step counts the steps: a plan of rounds
    of 3 epochs of 3 steps cut at num_steps takes exactly that many; the history counts the
    epochs begun (the last one partial)."""
    data = gaussian_data(jax.random.key(0), 300)
    flow = nsi.build_flow(jax.random.key(1), data, network=TINY)
    initial = [np.asarray(leaf) for leaf in array_leaves(flow.velocity)]
    plan = nsi.plan_steps(300, batch_size=100, num_steps=num_steps, validate_every=every)
    assert plan == nsi.StepPlan(100, 3, 3, rounds, num_steps) and plan.padded
    trained, history = nsi.train(
        jax.random.key(2), flow, data, num_steps=num_steps, optimizer=ADD_ONE, batch_size=100,
        validation=nsi.Validation(fraction=0.0, every=every), show_progress=False,
    )
    assert history.num_steps == num_steps
    np.testing.assert_array_equal(history.epoch, epochs)
    assert history.best_epoch == epochs[-1]
    for p0, p in zip(initial, array_leaves(trained.velocity), strict=True):
        expected = p0.copy()
        for _ in range(num_steps):
            expected = expected + np.float32(1.0)
        np.testing.assert_array_equal(p, expected)


def test_num_steps_cap_with_the_default_optimizer():
    """7 steps of a 9-step plan: the optimiser state counts 7, and the flow differs from 8."""
    data = gaussian_data(jax.random.key(0), 300)
    flow = nsi.build_flow(jax.random.key(1), data, network=TINY)
    seven, history = nsi.train(jax.random.key(2), flow, data, num_steps=7, **QUIET)
    eight, _ = nsi.train(jax.random.key(2), flow, data, num_steps=8, **QUIET)
    assert schedule_counts(history.opt_state) == [7, 7]
    assert not np.array_equal(seven.velocity.output_layer.weight,
                              eight.velocity.output_layer.weight)


def test_train_a_constrained_flow():
    """A ConstrainedSIFlow trains on points of its support: exactly the inner flow trained on
    their unconstrained images (log x for positive)."""
    data = jnp.exp(jnp.array([1.0, -2.0]) + 0.5 * jax.random.normal(jax.random.key(0), (300, 2)))
    flow = nsi.build_flow(jax.random.key(1), data, support=constraints.positive, network=TINY)
    assert type(flow) is nsi.ConstrainedSIFlow
    np.testing.assert_allclose(flow.standardization.shift, jnp.log(data).mean(0), rtol=1e-5)
    trained, history = nsi.train(jax.random.key(2), flow, data, num_steps=12, **QUIET)
    inner, _ = nsi.train(jax.random.key(2), flow.flow, jnp.log(data), num_steps=12, **QUIET)
    assert type(trained) is nsi.ConstrainedSIFlow and trained.constraint is flow.constraint
    assert history.num_steps == 12
    for a, b in zip(jax.tree.leaves(trained.flow), jax.tree.leaves(inner), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(trained.velocity.output_layer.weight,
                              flow.velocity.output_layer.weight)
    with pytest.raises(ValueError, match=r"1 row\(s\) \(rows 4\) outside the support"):
        nsi.train(jax.random.key(2), flow, data.at[4, 0].set(-1.0), num_steps=1, **QUIET)


def test_train_a_conditional_flow():
    """A ConditionalSIFlow trains on (data, context) pairs; the context is required, checked,
    and refused for a flow without one."""
    y = jax.random.normal(jax.random.key(0), (300, 3))
    theta = y[:, :2] + 0.1 * jax.random.normal(jax.random.key(1), (300, 2))
    flow = nsi.build_flow(jax.random.key(2), theta, context=y, network=TINY)
    assert type(flow) is nsi.ConditionalSIFlow and flow.context_dim == 3
    trained, history = nsi.train(jax.random.key(3), flow, theta, context=y, num_steps=12, **QUIET)
    assert type(trained) is nsi.ConditionalSIFlow and trained.context_dim == 3
    assert history.num_steps == 12 and trained.settings == flow.settings
    for name in ("shift", "scale"):
        np.testing.assert_array_equal(getattr(trained.context_standardization, name),
                                      getattr(flow.context_standardization, name))
    assert not np.array_equal(trained.velocity.output_layer.weight,
                              flow.velocity.output_layer.weight)
    # held-out pairs as a (data, context) pair
    _, history = nsi.train(jax.random.key(3), flow, theta[:200], context=y[:200],
                           val_data=(theta[200:], y[200:]), num_steps=4, batch_size=100,
                           show_progress=False)
    assert len(history.val_loss) == 1 and np.isfinite(history.val_loss[0])
    with pytest.raises(ValueError, match=r"a ConditionalSIFlow trains on \(data, context\) pairs:"
                                         r" pass context="):
        nsi.train(jax.random.key(3), flow, theta, **QUIET)
    with pytest.raises(ValueError, match=r"context has 299 row\(s\) but data has 300"):
        nsi.train(jax.random.key(3), flow, theta, context=y[:299], **QUIET)
    with pytest.raises(ValueError, match=r"context must have shape \(N, 3\), got \(300, 2\)"):
        nsi.train(jax.random.key(3), flow, theta, context=y[:, :2], **QUIET)
    plain = nsi.build_flow(jax.random.key(2), theta, network=TINY)
    with pytest.raises(ValueError, match="context is only for a ConditionalSIFlow; this flow is"
                                         " a SIFlow"):
        nsi.train(jax.random.key(3), plain, theta, context=y, **QUIET)


def test_train_refuses_what_is_not_a_flow_or_does_not_fit_it():
    data = gaussian_data(jax.random.key(0), 300)
    with pytest.raises(TypeError, match="train needs a flow from build_flow .*, got Normal"):
        nsi.train(jax.random.key(0), dist.Normal(0.0, 1.0), data)
    flow = nsi.build_flow(jax.random.key(1), data, network=TINY)
    with pytest.raises(ValueError, match=r"data must have shape \(N, 2\), got \(300, 3\)"):
        nsi.train(jax.random.key(0), flow, jnp.ones((300, 3)), **QUIET)
