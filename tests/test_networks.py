"""FieldMLP: shapes, batching, dtypes, validation and the config round trip; FieldMLPSpec, the
recipe build_flow makes its networks from."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import array_leaves

import numpyro_si as nsi

KEY = jax.random.key(0)


def leaves_equal(a, b):
    la, lb = array_leaves(a), array_leaves(b)
    return len(la) == len(lb) and all(
        x.shape == y.shape and x.dtype == y.dtype and np.array_equal(x, y)
        for x, y in zip(la, lb, strict=True)
    )


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("activation", sorted(nsi.ACTIVATIONS))
def test_output_shape_and_finiteness(residual, activation):
    dim = 3
    net = nsi.FieldMLP(dim, width=16, depth=2, residual=residual, activation=activation, key=KEY)
    out = net(0.3, jnp.array([0.1, -2.0, 0.5]))
    assert out.shape == (dim,)
    assert np.all(np.isfinite(out))
    # a field of (t, x): it depends on both
    assert not np.allclose(out, net(0.7, jnp.array([0.1, -2.0, 0.5])))
    assert not np.allclose(out, net(0.3, jnp.array([1.1, -2.0, 0.5])))


def test_activations_give_different_networks():
    """The activation is actually used: the same weights with another activation differ."""
    x = jnp.array([0.4, -1.3])
    outputs = {
        name: nsi.FieldMLP(2, width=8, depth=2, activation=name, key=KEY)(0.5, x)
        for name in nsi.ACTIVATIONS
    }
    names = sorted(outputs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not np.allclose(outputs[a], outputs[b]), (a, b)


@pytest.mark.parametrize("residual", [False, True])
def test_vmap_and_jit_match_the_loop(residual):
    dim, n = 2, 7
    net = nsi.FieldMLP(dim, width=16, depth=3, residual=residual, key=KEY)
    t = jnp.linspace(0.0, 1.0, n)
    x = jax.random.normal(jax.random.key(1), (n, dim))
    looped = jnp.stack([net(t[i], x[i]) for i in range(n)])
    batched = jax.vmap(net)(t, x)
    jitted = eqx.filter_jit(lambda model, t, x: jax.vmap(model)(t, x))(net, t, x)
    jitted_closure = jax.jit(jax.vmap(lambda t, x: net(t, x)))(t, x)
    # shared t across a batch of x
    shared = jax.vmap(net, in_axes=(None, 0))(t[2], x)
    assert batched.shape == (n, dim)
    np.testing.assert_allclose(batched, looped, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jitted, looped, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jitted_closure, looped, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(shared[3], net(t[2], x[3]), rtol=1e-5, atol=1e-6)


def test_residual_and_plain_architectures_differ():
    plain = nsi.FieldMLP(2, width=8, depth=3, residual=False, key=KEY)
    residual = nsi.FieldMLP(2, width=8, depth=3, residual=True, key=KEY)
    # plain: depth - 1 hidden layers; residual: depth blocks of two layers, each re-reading emb(t)
    assert len(plain.hidden) == 2
    assert len(residual.hidden) == 3 and all(len(block) == 2 for block in residual.hidden)
    n_embed = 1 + 2 * plain.n_frequencies
    assert residual.hidden[0][0].in_features == 8 + n_embed
    n_params = lambda m: sum(leaf.size for leaf in array_leaves(m))  # noqa: E731
    assert n_params(residual) > n_params(plain)


def test_depth_one_plain_network_has_no_hidden_layers():
    net = nsi.FieldMLP(2, width=8, depth=1, key=KEY)
    assert net.hidden == ()
    assert net(0.0, jnp.zeros(2)).shape == (2,)


def test_time_embedding():
    net = nsi.FieldMLP(2, width=8, n_frequencies=3, key=KEY)
    emb = net.time_embedding(0.25)
    assert emb.shape == (1 + 2 * 3,)
    k = np.arange(1, 4)
    np.testing.assert_allclose(
        emb, np.concatenate([[0.25], np.sin(2 * np.pi * k * 0.25), np.cos(2 * np.pi * k * 0.25)]),
        atol=1e-6,
    )
    # periodic features + t itself: t = 0 and t = 1 are told apart only by the raw t input
    np.testing.assert_allclose(net.time_embedding(0.0)[1:], net.time_embedding(1.0)[1:], atol=1e-5)
    assert net.time_embedding(0.0)[0] != net.time_embedding(1.0)[0]


def test_float64_under_x64(x64):
    net = nsi.FieldMLP(2, width=8, depth=2, residual=True, key=KEY)
    assert net.input_layer.weight.dtype == jnp.float64
    out = net(jnp.asarray(0.5), jnp.array([1.0, 2.0]))
    assert out.dtype == jnp.float64
    # float32 input is promoted to the network's dtype
    out32_in = net(jnp.float32(0.5), jnp.array([1.0, 2.0], dtype=jnp.float32))
    assert out32_in.dtype == jnp.float64
    np.testing.assert_allclose(out32_in, out, rtol=1e-6)


def test_explicit_dtype(x64):
    net = nsi.FieldMLP(2, width=8, key=KEY, dtype=jnp.float32)
    assert net.input_layer.weight.dtype == jnp.float32
    assert net(0.5, jnp.array([1.0, 2.0], dtype=jnp.float64)).dtype == jnp.float32


def test_default_dtype_is_float32_without_x64():
    net = nsi.FieldMLP(2, width=8, key=KEY)
    assert net(0.5, jnp.ones(2)).dtype == jnp.float32


@pytest.mark.parametrize("dim", [0, -1, 2.0, "2", None])
def test_bad_dim_raises(dim):
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        nsi.FieldMLP(dim, key=KEY)


@pytest.mark.parametrize(("width", "depth"), [(0, 2), (-4, 2), (8.0, 2), (8, 0), (8, -1), (8, 1.5)])
def test_bad_width_or_depth_raises(width, depth):
    with pytest.raises(ValueError, match="width and depth must be positive integers"):
        nsi.FieldMLP(2, width=width, depth=depth, key=KEY)


@pytest.mark.parametrize("activation", ["sigmoid", "ReLU", "", None])
def test_bad_activation_raises(activation):
    with pytest.raises(ValueError, match="activation must be one of"):
        nsi.FieldMLP(2, activation=activation, key=KEY)


@pytest.mark.parametrize("residual", [False, True])
def test_config_round_trip(residual):
    net = nsi.FieldMLP(
        3, width=12, depth=2, n_frequencies=2, residual=residual, activation="tanh", key=KEY
    )
    config = net.config()
    assert config == dict(dim=3, width=12, depth=2, n_frequencies=2, residual=residual,
                          activation="tanh", context_dim=0)
    rebuilt = nsi.FieldMLP(**config, key=jax.random.key(5))
    # same architecture: identical tree structure and leaf shapes, different initial weights
    assert jax.tree.structure(rebuilt) == jax.tree.structure(net)
    shapes = lambda m: [leaf.shape for leaf in array_leaves(m)]  # noqa: E731
    assert shapes(rebuilt) == shapes(net)
    assert not leaves_equal(rebuilt, net)
    # same key: the same network, bit for bit
    same = nsi.FieldMLP(**config, key=KEY)
    assert leaves_equal(same, net)
    x = jnp.array([0.3, -0.2, 1.0])
    np.testing.assert_array_equal(same(0.4, x), net(0.4, x))


def test_gradients_reach_every_parameter():
    """Every weight influences the output (nothing is accidentally detached or unused)."""
    net = nsi.FieldMLP(2, width=8, depth=2, residual=True, key=KEY)
    x = jax.random.normal(jax.random.key(2), (16, 2))
    t = jnp.linspace(0, 1, 16)

    @eqx.filter_grad
    def grad(model):
        return jnp.sum(jax.vmap(model)(t, x) ** 2)

    for leaf in jax.tree.leaves(grad(net)):
        assert np.any(np.asarray(leaf) != 0)


# ----------------------------------------------------------------------------------------------
# context (conditional fields)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("residual", [False, True])
def test_context_is_an_input(residual):
    net = nsi.FieldMLP(2, context_dim=3, width=8, depth=2, residual=residual, key=KEY)
    x, context = jnp.array([0.1, -0.4]), jnp.array([1.0, 0.0, -2.0])
    out = net(0.3, x, context)
    assert out.shape == (2,)
    assert not np.allclose(out, net(0.3, x, context + 0.5))
    n_embed = 1 + 2 * net.n_frequencies + 3
    assert net.input_layer.in_features == 2 + n_embed
    if residual:  # every block re-reads time embedding and context
        assert net.hidden[0][0].in_features == 8 + n_embed
    batched = jax.vmap(net)(jnp.full(4, 0.3), jnp.tile(x, (4, 1)), jnp.tile(context, (4, 1)))
    np.testing.assert_allclose(batched[2], out, rtol=1e-5, atol=1e-6)
    assert net.config()["context_dim"] == 3
    assert leaves_equal(nsi.FieldMLP(**net.config(), key=KEY), net)


def test_context_dim_zero_is_the_plain_network():
    """context_dim=0 (the default) builds the same layers from the same key as before."""
    plain = nsi.FieldMLP(2, width=8, depth=2, key=KEY)
    assert plain.context_dim == 0 and plain.input_layer.in_features == 2 + 1 + 2 * 4


def test_context_errors():
    net = nsi.FieldMLP(2, context_dim=3, width=8, key=KEY)
    with pytest.raises(ValueError, match=r"takes a context of shape \(3,\)"):
        net(0.5, jnp.zeros(2))
    with pytest.raises(ValueError, match=r"context must have shape \(3,\), got \(2,\)"):
        net(0.5, jnp.zeros(2), jnp.zeros(2))
    with pytest.raises(ValueError, match="has no context"):
        nsi.FieldMLP(2, width=8, key=KEY)(0.5, jnp.zeros(2), jnp.zeros(3))
    for bad in (-1, 1.5, "2"):
        with pytest.raises(ValueError, match="context_dim must be a non-negative integer"):
            nsi.FieldMLP(2, context_dim=bad, key=KEY)


# ----------------------------------------------------------------------------------------------
# default size and FieldMLPSpec
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [2, 16, 17])
def test_default_size_follows_the_dimension(dim):
    """FieldMLP(d) without width or depth takes default_network_size(d), as build_flow does; an
    explicit width or depth replaces only that part."""
    net = nsi.FieldMLP(dim, key=KEY)
    assert (net.width, net.depth) == nsi.default_network_size(dim)
    narrow = nsi.FieldMLP(dim, width=8, key=KEY)
    assert (narrow.width, narrow.depth) == (8, nsi.default_network_size(dim)[1])


@pytest.mark.parametrize("context_dim", [0, 3])
def test_spec_builds_the_same_network_as_fieldmlp(context_dim):
    spec = nsi.FieldMLPSpec(width=12, depth=3, residual=True, n_frequencies=2, activation="gelu")
    net = spec.build(2, context_dim=context_dim, key=KEY)
    same = nsi.FieldMLP(2, width=12, depth=3, residual=True, n_frequencies=2, activation="gelu",
                        context_dim=context_dim, key=KEY)
    assert net.config() == same.config() and leaves_equal(net, same)
    # the default spec: the dimension's default size, the FieldMLP defaults otherwise
    default = nsi.FieldMLPSpec().build(17, key=KEY)
    assert default.config() == nsi.FieldMLP(17, key=KEY).config()
    assert (default.width, default.depth) == nsi.default_network_size(17)


def test_spec_dtype(x64):
    spec = nsi.FieldMLPSpec(width=4, depth=1)
    assert spec.build(2, key=KEY, dtype=jnp.float32).input_layer.weight.dtype == jnp.float32
    assert spec.build(2, key=KEY).input_layer.weight.dtype == jnp.float64


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (dict(width=0), "width must be a positive integer or None, got 0"),
        (dict(width=8.0), "width must be a positive integer or None, got 8.0"),
        (dict(width=True), "width must be a positive integer or None, got True"),
        (dict(depth=-1), "depth must be a positive integer or None, got -1"),
        (dict(depth="3"), "depth must be a positive integer or None, got '3'"),
        (dict(activation="sigmoid"), "activation must be one of"),
    ],
    ids=["width-0", "width-float", "width-bool", "depth-negative", "depth-str", "activation"],
)
def test_bad_spec_raises(options, match):
    with pytest.raises(ValueError, match=match):
        nsi.FieldMLPSpec(**options)
