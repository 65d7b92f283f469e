"""FieldUNet, the image network: shapes, batching, validation, dtypes, training inside a flow and
the save/load round trip."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import array_leaves

import numpyro_si as nsi

KEY = jax.random.key(0)


@pytest.mark.parametrize("shape, widths, patch", [
    ((1, 8, 8), (8, 16), 1), ((2, 4, 8), (8,), 1), ((1, 12, 12), (4, 8, 8), 1),
    ((1, 8, 8), (8, 16), 2), ((3, 12, 6), (4,), 3),
])
def test_output_shape_and_vmap(shape, widths, patch):
    net = nsi.FieldUNet(shape, widths=widths, patch=patch, key=KEY)
    size = int(np.prod(shape))
    x = jax.random.normal(jax.random.key(1), (3, size))
    t = jnp.array([0.0, 0.4, 1.0])
    out = jax.vmap(net)(t, x)
    assert out.shape == (3, size) and bool(jnp.all(jnp.isfinite(out)))
    np.testing.assert_allclose(out[1], net(t[1], x[1]), rtol=1e-5, atol=1e-6)
    # the field depends on t and on x
    assert not np.allclose(net(0.1, x[0]), net(0.9, x[0]))
    assert not np.allclose(net(0.5, x[0]), net(0.5, x[1]))


@pytest.mark.parametrize("patch", [1, 2])
def test_a_pixel_acts_mostly_near_itself(patch):
    """Convolutions are local: changing one pixel changes the output most within the network's
    receptive field around that pixel (four 3x3 convolutions on patches of `patch` pixels), far
    from its mirror image across the diagonal (checks that the patches are folded into channels
    and unfolded back in place)."""
    net = nsi.FieldUNet((1, 32, 32), widths=(4,), patch=patch, key=KEY)
    x = jax.random.normal(jax.random.key(1), (1024,))
    reach = 5 * patch
    for row, col in ((3, 27), (24, 5)):
        bumped = x.at[32 * row + col].add(3.0)
        change = jnp.abs(net(0.5, bumped) - net(0.5, x)).reshape(32, 32)
        r, c = np.unravel_index(int(jnp.argmax(change)), (32, 32))
        assert abs(r - row) <= reach and abs(c - col) <= reach, (row, col, r, c)


def test_gradients_reach_every_parameter():
    import equinox as eqx

    net = nsi.FieldUNet((1, 8, 8), widths=(4, 8), key=KEY)
    x = jax.random.normal(jax.random.key(1), (64,))
    grads = eqx.filter_grad(lambda n: jnp.sum(n(0.3, x) ** 2))(net)
    assert all(bool(jnp.any(g != 0)) for g in array_leaves(grads))


@pytest.mark.parametrize("kwargs, match", [
    (dict(shape=(8, 8)), "channels, height, width"),
    (dict(shape=(1, 8, 8), widths=()), "non-empty"),
    (dict(shape=(1, 6, 6), widths=(4, 8, 8)), "divisible by 4"),
    (dict(shape=(1, 8, 8), activation="swish"), "activation"),
    (dict(shape=(1, 12, 12), widths=(4, 8, 8), patch=2), "divisible by 8"),
    (dict(shape=(1, 8, 8), patch=0), "patch must be a positive int"),
])
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nsi.FieldUNet(**kwargs, key=KEY)


def test_bad_input_and_context_raise():
    net = nsi.FieldUNet((1, 4, 4), widths=(4,), key=KEY)
    with pytest.raises(ValueError, match=r"shape \(16,\)"):
        net(0.5, jnp.ones(15))
    with pytest.raises(ValueError, match="no context"):
        net(0.5, jnp.ones(16), jnp.ones(2))


def test_float64_under_x64(x64):
    net = nsi.FieldUNet((1, 4, 4), widths=(4,), key=KEY)
    assert net.conv_in.weight.dtype == jnp.float64
    assert net(0.5, jnp.ones(16, dtype=jnp.float32)).dtype == jnp.float64


def _blobs(rng, n):
    """n 8x8 images of a Gaussian bump at a random place, plus pixel noise, flattened."""
    grid = np.arange(8.0)
    centres = rng.uniform(1.5, 5.5, (n, 2))
    bump = np.exp(-((grid[None, :, None] - centres[:, 0, None, None]) ** 2
                    + (grid[None, None, :] - centres[:, 1, None, None]) ** 2) / 3.0)
    noisy = bump + 0.05 * rng.standard_normal(bump.shape)
    return jnp.asarray(noisy.reshape(n, 64), dtype=jnp.float32)


@pytest.mark.slow  # ~20 s; the guide's snippet trains a FieldUNet flow in the fast suite
def test_trains_in_a_flow_and_saves_exactly(tmp_path):
    """A flow on 8x8 images with a FieldUNet velocity: the training loss falls, log_prob and
    samples are finite, and a saved flow reloads bit for bit."""
    images = _blobs(np.random.default_rng(0), 256)
    net = nsi.FieldUNet((1, 8, 8), widths=(8, 16), key=jax.random.key(1))
    flow = nsi.build_flow(jax.random.key(2), images, velocity_network=net)
    flow, history = nsi.train(jax.random.key(3), flow, images, num_steps=60, batch_size=64,
                              validation=nsi.Validation(every=20), show_progress=False)
    assert len(history.val_loss) >= 2 and history.val_loss[-1] < history.val_loss[0]
    fast = flow.with_settings(sampler=nsi.ODESampler(n_steps=4))
    draws = fast.sample(jax.random.key(4), (3,))
    assert draws.shape == (3, 64) and bool(jnp.all(jnp.isfinite(draws)))
    assert bool(jnp.all(jnp.isfinite(flow.log_prob(images[:2]))))
    path = tmp_path / "digits.nsi"
    nsi.save(path, flow)
    loaded = nsi.load(path)
    assert isinstance(loaded.velocity, nsi.FieldUNet)
    for a, b in zip(array_leaves(flow), array_leaves(loaded), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    np.testing.assert_array_equal(fast.sample(jax.random.key(4), (3,)),
                                  loaded.with_settings(sampler=nsi.ODESampler(n_steps=4)).sample(
                                      jax.random.key(4), (3,)))
