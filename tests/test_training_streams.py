"""`train` on a stream of batches (data bigger than memory, or simulated on the fly) and
`nsi.batches`, the stream of random batches of an array or memmap."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import array_leaves, mean_se

import numpyro_si as nsi

SMALL = nsi.FieldMLPSpec(width=32, depth=2)
# an "optimiser" that adds 1 to every parameter per step: the parameters count the steps taken
ADD_ONE = optax.GradientTransformation(
    lambda params: optax.EmptyState(),
    lambda updates, state, params=None: (jax.tree.map(jnp.ones_like, updates), state),
)


def gaussian_data(n, seed=0):
    rng = np.random.default_rng(seed)
    return (np.array([10.0, -5.0]) + np.array([3.0, 0.5]) * rng.standard_normal((n, 2))).astype(
        np.float32)


def steps_taken(trained, initial):
    return {int(round(float(jnp.mean(a - b))))
            for a, b in zip(array_leaves(trained.velocity), array_leaves(initial.velocity),
                            strict=True)}


def test_batches_visit_every_row_once_per_epoch_in_file_order():
    data = np.arange(20.0).reshape(10, 2)
    drawn = list(nsi.batches(jax.random.key(0), data, 3, epochs=2))
    assert len(drawn) == 6  # 3 whole batches per epoch, the 10th row's partial batch dropped
    for epoch in (drawn[:3], drawn[3:]):
        rows = np.concatenate([batch[:, 0] / 2 for batch in epoch]).astype(int)
        assert len(set(rows)) == 9 and set(rows) <= set(range(10))
        for batch in epoch:  # rows of a batch in increasing order (memmap reads in file order)
            assert np.all(np.diff(batch[:, 0]) > 0)
    again = list(nsi.batches(jax.random.key(0), data, 3, epochs=2))
    np.testing.assert_array_equal(np.stack(drawn), np.stack(again))  # the key fixes the order


def test_batches_of_a_memmap_with_context(tmp_path):
    path = tmp_path / "data.f32"
    data = np.memmap(path, dtype=np.float32, mode="w+", shape=(50, 3))
    data[:] = np.arange(150, dtype=np.float32).reshape(50, 3)
    data.flush()
    mapped = np.memmap(path, dtype=np.float32, mode="r", shape=(50, 3))
    x, context = next(nsi.batches(jax.random.key(1), mapped, 8, context=mapped[:, :1] * 2))
    assert x.shape == (8, 3) and context.shape == (8, 1)
    np.testing.assert_array_equal(context[:, 0], 2 * x[:, 0])  # the same rows


def test_stream_training_takes_num_steps_or_what_a_finite_stream_holds():
    data = gaussian_data(1000)
    flow = nsi.build_flow(jax.random.key(0), data, network=SMALL)
    options = dict(optimizer=ADD_ONE, show_progress=False)
    stream = nsi.batches(jax.random.key(1), data, 100)  # no end
    trained, history = nsi.train(jax.random.key(2), flow, stream, num_steps=250, **options)
    assert steps_taken(trained, flow) == {250}  # the cap falls inside the third round
    assert history.num_steps == 250 and list(history.epoch) == [1, 2, 3]
    finite = nsi.batches(jax.random.key(1), data, 100, epochs=3)  # 30 batches, under one round
    trained, history = nsi.train(jax.random.key(2), flow, finite, num_steps=1000, **options)
    assert steps_taken(trained, flow) == {30} and history.num_steps == 30


def test_stream_training_is_reproducible_and_learns():
    data = gaussian_data(4000)
    flow = nsi.build_flow(jax.random.key(0), data, network=SMALL)

    def run():
        return nsi.train(jax.random.key(2), flow, nsi.batches(jax.random.key(1), data, 256),
                         num_steps=400, val_data=gaussian_data(500, seed=1),
                         show_progress=False)

    (a, history), (b, _) = run(), run()
    for x, y in zip(array_leaves(a.velocity), array_leaves(b.velocity), strict=True):
        np.testing.assert_array_equal(x, y)
    assert len(history.val_loss) == 4  # validated every 100 steps
    # paired L_b on fixed draws in the standardised space: lower than the untrained network's
    interpolant = a.interpolant
    y = a.standardization.forward(jnp.asarray(gaussian_data(4000, seed=2)))
    k_t, k_c = jax.random.split(jax.random.key(6))
    t, _ = nsi.UniformTime().sample(k_t, y.shape[0])
    x0, z = nsi.sample_coupling(k_c, interpolant, y)

    def losses(net):
        return jax.vmap(lambda *args: nsi.velocity_loss(net, interpolant, *args))(t, x0, y, z)

    diff, se = mean_se(losses(a.velocity) - losses(flow.velocity))
    assert diff < -10 * se, (diff, se)


def test_conditional_stream_yields_pairs():
    rng = np.random.default_rng(0)
    context = rng.standard_normal((400, 1)).astype(np.float32)
    theta = (context + 0.1 * rng.standard_normal((400, 1))).astype(np.float32)
    flow = nsi.build_flow(jax.random.key(0), theta, context=context, network=SMALL)
    stream = nsi.batches(jax.random.key(1), theta, 50, context=context)
    trained, history = nsi.train(jax.random.key(2), flow, stream, num_steps=20,
                                 show_progress=False)
    assert history.num_steps == 20
    with pytest.raises(TypeError, match=r"yields \(samples, context\) pairs; batch 0"):
        nsi.train(jax.random.key(2), flow, iter([theta[:50]]), show_progress=False)


@pytest.mark.parametrize("option, match", [
    (dict(batch_size=64), "takes no batch_size: the stream's batches set it"),
    (dict(max_epochs=2), "takes no max_epochs"),
    (dict(checkpoint="run.ckpt"), "cannot be rewound"),
    (dict(context=np.zeros((10, 1), np.float32)), r"takes no context: yield \(samples, context\)"),
])
def test_stream_options_that_do_not_apply_are_refused(option, match):
    data = gaussian_data(100)
    flow = nsi.build_flow(jax.random.key(0), data, network=SMALL)
    with pytest.raises(ValueError, match=match):
        nsi.train(jax.random.key(1), flow, nsi.batches(jax.random.key(1), data, 10),
                  show_progress=False, **option)


def test_bad_batches_are_named():
    data = gaussian_data(300)
    flow = nsi.build_flow(jax.random.key(0), data, network=SMALL)
    short = iter([data[:100], data[:50]])
    with pytest.raises(ValueError, match=r"batch 1 of data has shape \(50, 2\); every batch"):
        nsi.train(jax.random.key(1), flow, short, num_steps=5, show_progress=False)
    poisoned = data[:100].copy()
    poisoned[7, 1] = np.nan
    with pytest.raises(ValueError, match="batches 0-99 of data contains NaN or inf"):
        nsi.train(jax.random.key(1), flow, iter([poisoned] * 100), num_steps=5,
                  show_progress=False)
    with pytest.raises(ValueError, match="the stream of batches is empty"):
        nsi.train(jax.random.key(1), flow, iter([]), show_progress=False)
    with pytest.raises(TypeError, match="fit builds its flow from the samples"):
        nsi.fit(jax.random.key(1), nsi.batches(jax.random.key(1), data, 10))
