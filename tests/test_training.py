"""`fit`: history, early stopping, standardisation, score learning, custom networks and bases,
input validation, and the key accuracy test (held-out KL to a Gaussian-mixture target)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import pytest

import numpyro_si as nsi
from numpyro_si.oracle import GaussianMixture

HISTORY_KEYS = {
    "train_loss", "val_loss", "val_loss_smoothed", "epoch", "best_epoch", "stopped_early",
    "num_steps", "steps_per_epoch"
}
SMALL = dict(width=32, depth=2, show_progress=False)  # small, quiet networks for fast fits
# Standardised Gaussian data are the base itself: under a variance-preserving interpolant
# (trigonometric) x_t stays N(0, I) and the optimal velocity is 0, so an untrained network is
# already nearly optimal. Tests that need a loss with something to learn on Gaussian data pin the
# linear interpolant (the default), whose optimal velocity is not zero.
LEARNABLE = dict(interpolant=nsi.OneSidedLinearInterpolant())


def gaussian_data(key, n, shift=(10.0, -5.0), scale=(3.0, 0.5)):
    shift, scale = jnp.asarray(shift), jnp.asarray(scale)
    return shift + scale * jax.random.normal(key, (n, shift.shape[0]))


def gaussian_log_prob(x, shift=(10.0, -5.0), scale=(3.0, 0.5)):
    return dist.Normal(jnp.asarray(shift), jnp.asarray(scale)).to_event(1).log_prob(x)


def mean_se(values):
    values = np.asarray(values, dtype=np.float64)
    return values.mean(), values.std(ddof=1) / np.sqrt(values.size)


def array_leaves(tree):
    return jax.tree.leaves(eqx.filter(tree, eqx.is_array))


def assert_same_velocity(flow_a, flow_b):
    """The two flows' velocity networks have bit-identical parameters."""
    for a, b in zip(array_leaves(flow_a.velocity), array_leaves(flow_b.velocity), strict=True):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------------------------
# history, progress, loss decrease
# ----------------------------------------------------------------------------------------------


def test_fit_returns_flow_and_documented_history(capfd):
    """Validation after every epoch (min_steps_between_validations=1): one history entry per
    epoch, exact step counts, and the loss goes down."""
    data = gaussian_data(jax.random.key(0), 1000)
    flow, history = nsi.fit(jax.random.key(1), data, max_steps=300, batch_size=100,
                            min_steps_between_validations=1, **LEARNABLE, **SMALL)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""  # show_progress=False prints nothing

    assert isinstance(flow, nsi.SIFlow) and flow.dim == 2
    default, _ = nsi.fit(jax.random.key(1), data, max_steps=1, batch_size=100, **SMALL)
    assert isinstance(default.interpolant, nsi.OneSidedLinearInterpolant)  # the default
    assert flow.score is None  # one-sided: the score follows from the velocity
    assert HISTORY_KEYS <= set(history)
    for name in ("train_loss", "val_loss", "epoch"):
        assert isinstance(history[name], np.ndarray)
    # 900 training points (val_prop=0.1), batches of 100: 9 steps per epoch, ceil(300 / 9) epochs
    assert history["steps_per_epoch"] == 9
    np.testing.assert_array_equal(history["epoch"], np.arange(1, 35))
    assert len(history["train_loss"]) == len(history["val_loss"]) == 34
    assert not history["stopped_early"]
    assert history["num_steps"] == 34 * 9
    assert np.all(np.isfinite(history["train_loss"])) and np.all(np.isfinite(history["val_loss"]))
    assert history["best_epoch"] == history["epoch"][np.argmin(history["val_loss_smoothed"])]
    # the loss decreases: validation loss (common random numbers across epochs) and training loss
    val = history["val_loss"]
    assert val.min() < val[0] - 0.1
    assert history["train_loss"][-5:].mean() < history["train_loss"][0] - 0.1


def test_rounds_of_epochs_on_small_data():
    """Short epochs run in rounds between validations; the history counts epochs, the budget
    (max_steps or max_epochs) is met without overshooting by more than a round's rounding."""
    data = gaussian_data(jax.random.key(0), 1000)
    _, history = nsi.fit(jax.random.key(1), data, max_steps=300, batch_size=100, **SMALL)
    epochs = history["epoch"]
    assert history["steps_per_epoch"] == 9
    assert len(epochs) >= 1 and np.all(np.diff(epochs) == epochs[0])  # equal rounds
    assert 34 <= epochs[-1] < 34 + len(epochs)  # ceil(300 / 9) = 34 epochs asked for
    assert history["num_steps"] == epochs[-1] * 9
    assert history["best_epoch"] == epochs[np.argmin(history["val_loss_smoothed"])]
    # an explicit max_epochs smaller than a round is honoured exactly
    _, history = nsi.fit(jax.random.key(1), data, max_epochs=5, batch_size=100, **SMALL)
    np.testing.assert_array_equal(history["epoch"], [5])
    assert history["num_steps"] == 45


def test_show_progress_prints_a_bar(capfd):
    """The positive control for show_progress=False printing nothing."""
    data = gaussian_data(jax.random.key(0), 200)
    nsi.fit(jax.random.key(1), data, max_steps=20, batch_size=50, width=8, depth=1,
            show_progress=True)
    captured = capfd.readouterr()
    assert "fit" in captured.err


def test_trained_flow_beats_the_initial_network_on_the_objective():
    """Paired comparison of L_b on fixed draws (standardised space): the trained velocity has a
    lower objective than the untrained one by many standard errors."""
    data = gaussian_data(jax.random.key(0), 2000)
    key = jax.random.key(3)
    init = nsi.FieldMLP(2, width=32, depth=2, key=jax.random.key(4))
    flow, _ = nsi.fit(key, data, velocity_network=init, max_steps=600, show_progress=False,
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
    """With max_patience=8 (validating every epoch) training stops eight epochs after the best
    validation loss, and the returned parameters are those of the best epoch: a replay of exactly
    best_epoch epochs (same key, same split, a schedule-free optimiser) ends on the same
    parameters, bit for bit."""
    data = gaussian_data(jax.random.key(0), 400)
    common = dict(optimizer=optax.adam(3e-3), batch_size=60, min_steps_between_validations=1,
                  **LEARNABLE, **SMALL)
    flow, history = nsi.fit(jax.random.key(7), data, max_epochs=200, max_patience=8, val_window=1,
                            **common)
    val = history["val_loss"]
    best = history["best_epoch"]  # epochs completed when the kept parameters were validated
    assert history["stopped_early"]
    assert len(val) < 200
    assert best == history["epoch"][np.argmin(val)] == np.argmin(val) + 1
    assert len(val) - best == 8  # exactly max_patience epochs without improvement
    assert np.all(val[best:] >= val[best - 1])
    assert best >= 2  # the kept parameters are not simply the first or the last ones

    replay, replay_history = nsi.fit(
        jax.random.key(7), data, max_epochs=best, max_patience=1000, val_window=1, **common
    )
    np.testing.assert_array_equal(replay_history["val_loss"], val[:best])
    assert replay_history["best_epoch"] == best and not replay_history["stopped_early"]
    assert_same_velocity(replay, flow)


def test_early_stopping_counts_patience_in_epochs_across_rounds():
    """With rounds of several epochs, max_patience (in epochs) becomes whole rounds."""
    data = gaussian_data(jax.random.key(0), 400)
    _, history = nsi.fit(jax.random.key(7), data, max_epochs=2000, max_patience=1, val_window=1,
                         optimizer=optax.adam(3e-3), batch_size=60, **SMALL)
    val, epochs = history["val_loss"], history["epoch"]
    assert history["stopped_early"]
    assert epochs[0] > 1  # several epochs per round (6 steps per epoch)
    assert len(val) - 1 - np.argmin(val) == 1  # one round without improvement
    assert history["best_epoch"] == epochs[np.argmin(val)]


def test_early_stopping_on_the_windowed_mean_of_validations():
    """The default decides on the mean of the last val_window validation losses: the history
    holds those means, the kept parameters are the last validated in the best window, and
    training stops max_patience validations after it."""
    data = gaussian_data(jax.random.key(0), 400)
    common = dict(optimizer=optax.adam(3e-3), batch_size=60, min_steps_between_validations=1,
                  **LEARNABLE, **SMALL)
    _, history = nsi.fit(jax.random.key(7), data, max_epochs=300, max_patience=6, val_window=4,
                         **common)
    val, smoothed = history["val_loss"], history["val_loss_smoothed"]
    expected = [val[max(0, i - 3): i + 1].mean() for i in range(len(val))]
    np.testing.assert_allclose(smoothed, expected, rtol=1e-6)
    best = int(np.argmin(smoothed))
    assert history["stopped_early"] and len(val) - 1 - best == 6
    assert history["best_epoch"] == history["epoch"][best]
    with pytest.raises(ValueError, match="val_window"):
        nsi.fit(jax.random.key(7), data, val_window=0, max_steps=1, **SMALL)


def test_without_validation_the_last_epoch_is_kept():
    data = gaussian_data(jax.random.key(0), 300)
    flow, history = nsi.fit(jax.random.key(1), data, val_prop=0.0, max_epochs=5, batch_size=100,
                            **SMALL)
    assert len(history["val_loss"]) == 0
    assert history["best_epoch"] == history["epoch"][-1] == 5 and not history["stopped_early"]
    assert history["steps_per_epoch"] == 3  # all 300 points train
    assert history["num_steps"] == 15


def test_ema_decay_zero_returns_the_raw_parameters():
    data = gaussian_data(jax.random.key(0), 300)
    options = dict(val_prop=0.0, max_epochs=5, batch_size=100, **SMALL)
    raw, _ = nsi.fit(jax.random.key(1), data, **options)
    averaged, _ = nsi.fit(jax.random.key(1), data, ema_decay=0.0, **options)
    assert_same_velocity(raw, averaged)


def test_ema_is_the_documented_moving_average_of_the_iterates():
    """An optimiser that adds 1 to every parameter per step makes the iterates p0 + k, so the
    average after K steps is known: e <- d_k e + (1 - d_k) p_{k+1}, d_k = min(D, (1+k)/(10+k))."""
    add_one = optax.GradientTransformation(
        lambda params: optax.EmptyState(),
        lambda updates, state, params=None: (jax.tree.map(jnp.ones_like, updates), state),
    )
    data = gaussian_data(jax.random.key(0), 300)
    decay, n_steps = 0.9, 15
    flow, history = nsi.fit(jax.random.key(1), data, val_prop=0.0, max_epochs=5, batch_size=100,
                            optimizer=add_one, ema_decay=decay, **SMALL)
    assert history["num_steps"] == n_steps
    untrained, _ = nsi.fit(jax.random.key(1), data, val_prop=0.0, max_epochs=5, batch_size=100,
                           optimizer=optax.sgd(0.0), **SMALL)
    ema = 0.0  # offset of the average from p0
    for k in range(n_steps):
        d = min(decay, (1.0 + k) / (10.0 + k))
        ema = d * ema + (1 - d) * (k + 1)
    assert 0.5 < ema < n_steps - 1  # a real average, neither p0 nor the last iterate
    for p0, e in zip(array_leaves(untrained.velocity), array_leaves(flow.velocity), strict=True):
        np.testing.assert_allclose(e, p0 + ema, rtol=1e-5, atol=1e-4)


def test_weight_decay_shrinks_the_parameters_and_zero_is_plain_adam():
    data = gaussian_data(jax.random.key(0), 300)
    options = dict(val_prop=0.0, max_epochs=40, batch_size=100, **SMALL)
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
    flow, _ = nsi.fit(jax.random.key(1), data, max_steps=1500, **SMALL)
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
    flow, _ = nsi.fit(jax.random.key(1), data, standardize=False, max_steps=30, batch_size=50,
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
        jax.random.key(1), data, interpolant=interpolant, learn_score=learn_score, sampler="sde",
        eps=0.5, max_steps=400, batch_size=128, **SMALL,
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
    assert np.all(np.isfinite(history["val_loss"]))


def test_learn_score_false_with_ode_two_sided():
    data = gaussian_data(jax.random.key(0), 200)
    flow, _ = nsi.fit(jax.random.key(1), data, interpolant=nsi.LinearInterpolant(nsi.BrownianGamma()),
                      max_steps=30, batch_size=50, **SMALL)
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
    flow, _ = nsi.fit(jax.random.key(1), data, velocity_network=custom, max_steps=200,
                      batch_size=100, show_progress=False)
    assert isinstance(flow.velocity, LinearField)
    assert np.any(np.asarray(flow.velocity.A) != 0)  # trained away from its zero initialisation
    # and a user FieldMLP keeps its own architecture, not fit's width/depth defaults
    net = nsi.FieldMLP(2, width=8, depth=1, activation="tanh", key=jax.random.key(2))
    flow, _ = nsi.fit(jax.random.key(1), data, velocity_network=net, max_steps=50, batch_size=100,
                      show_progress=False)
    assert flow.velocity.config() == net.config()
    assert not np.array_equal(flow.velocity.output_layer.weight, net.output_layer.weight)


@pytest.mark.parametrize("dim, size", [(2, (64, 6)), (16, (64, 6)), (17, (128, 3))])
def test_default_network_size_depends_on_the_dimension(dim, size):
    # the documented rule: deep and narrow up to 16 dimensions, wide and shallow above
    assert nsi.default_network_size(dim) == size
    data = jax.random.normal(jax.random.key(0), (200, dim))
    flow, _ = nsi.fit(jax.random.key(1), data, max_steps=1, batch_size=100, val_prop=0.0,
                      show_progress=False)
    assert (flow.velocity.width, flow.velocity.depth) == size
    # an explicit width or depth overrides only that part of the default
    flow, _ = nsi.fit(jax.random.key(1), data, width=8, max_steps=1, batch_size=100,
                      val_prop=0.0, show_progress=False)
    assert (flow.velocity.width, flow.velocity.depth) == (8, size[1])


def test_two_sided_fit_with_a_custom_base():
    """base= (in data space) for a two-sided interpolant: the flow's base has event shape (d,),
    sampling and log_prob work in data space."""
    data = gaussian_data(jax.random.key(0), 1000)
    base = dist.Normal(jnp.array([8.0, -4.0]), jnp.array([2.0, 1.0])).to_event(1)
    flow, _ = nsi.fit(jax.random.key(1), data, interpolant=nsi.LinearInterpolant(), base=base,
                      max_steps=400, batch_size=128, **SMALL)
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


def heldout_kl(n_train, max_steps, width, fit_key):
    """Train on a 2-d, 3-component mixture and return the paired estimate of
    KL(rho1 || rho^1) = mean[log rho1(x) - log rho^1(x)] on 2000 held-out points, its standard
    error and the model's held-out NLL."""
    target = GaussianMixture.random(jax.random.key(0), 2, 3)
    x_train, _ = target.sample(jax.random.key(1), n_train)
    x_test, _ = target.sample(jax.random.key(2), 2000)
    flow, _ = nsi.fit(fit_key, x_train, max_steps=max_steps, width=width, depth=3,
                      show_progress=False)
    model_log_prob = flow.log_prob(x_test)
    assert np.all(np.isfinite(model_log_prob))
    kl, se = mean_se(target.log_prob(x_test) - model_log_prob)
    return kl, se, -float(np.mean(model_log_prob))


def test_heldout_kl_to_mixture_fast(x64):
    """5000 steps, width 64, 10^4 training points. Measured (float64, fit keys 3, 4, 5):
    KL = 0.041, 0.059, 0.047 nats (se ~0.005-0.007). Margin 0.1 nats."""
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
    return nsi.fit(jax.random.key(0), data, max_steps=1, show_progress=False, **kwargs)


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


def test_sde_for_deterministic_two_sided_interpolant():
    # default learn_score for sampler="sde" on a two-sided interpolant is True: no gamma, no score
    with pytest.raises(ValueError, match="needs a stochastic interpolant"):
        fit_quick(interpolant=nsi.LinearInterpolant(), sampler="sde")
    with pytest.raises(ValueError, match="SDE sampling of a two-sided interpolant needs learn_score"):
        fit_quick(interpolant=nsi.LinearInterpolant(), sampler="sde", learn_score=False)
    with pytest.raises(ValueError, match="SDE sampling of a two-sided interpolant needs learn_score"):
        fit_quick(interpolant=nsi.LinearInterpolant(nsi.BrownianGamma()), sampler="sde",
                  learn_score=False)


def test_bad_sampler_name():
    with pytest.raises(ValueError, match="sampler must be 'ode' or 'sde'"):
        fit_quick(sampler="euler")


@pytest.mark.parametrize("val_prop", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_val_prop(val_prop):
    with pytest.raises(ValueError, match=r"val_prop must be in \[0, 1\)"):
        fit_quick(val_prop=val_prop)


@pytest.mark.parametrize(("n", "val_prop"), [(1, 0.1), (3, 0.1), (1, 0.5), (2, 0.9)])
def test_too_little_data_for_the_validation_split(n, val_prop):
    with pytest.raises(ValueError, match="cannot be split into training and validation"):
        fit_quick(GOOD[:n], val_prop=val_prop)


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size must be positive"):
        fit_quick(batch_size=0)


@pytest.mark.parametrize("weight_decay", [-0.1, float("nan"), float("inf"), True, "0.1"])
def test_bad_weight_decay(weight_decay):
    with pytest.raises(ValueError, match="weight_decay must be a non-negative number"):
        fit_quick(weight_decay=weight_decay)


def test_weight_decay_with_own_optimizer():
    with pytest.raises(ValueError, match="default optimiser"):
        fit_quick(weight_decay=0.1, optimizer=optax.adam(1e-3))


@pytest.mark.parametrize("ema_decay", [-0.1, 1.0, 1.5])
def test_bad_ema_decay(ema_decay):
    with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\)"):
        fit_quick(ema_decay=ema_decay)
