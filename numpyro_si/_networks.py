"""Equinox networks for time-dependent vector fields f(t, x): R x R^d -> R^d, optionally
conditioned on a context vector, f(t, x, c) (conditional flows, amortised inference)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

__all__ = ["FieldMLP", "FieldMLPSpec", "FieldUNet", "ACTIVATIONS", "default_network_size"]

ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu": jax.nn.gelu,
    "tanh": jnp.tanh,
    "softplus": jax.nn.softplus,
    "relu": jax.nn.relu,
}


def _check_activation(activation) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}.")


# Dimensions up to which the default network is deep and narrow (see `default_network_size`).
DEEP_NETWORK_MAX_DIM = 16


def default_network_size(dim: int) -> tuple[int, int]:
    """`(width, depth)` of the default `FieldMLP` for `dim`-dimensional data: width 64, depth 6
    up to `DEEP_NETWORK_MAX_DIM` (16) dimensions, width 128, depth 3 above.

    Deep, narrow networks fit sharp low-dimensional densities better at less cost per step, but
    overfit small high-dimensional data sets; the density benchmark's configuration study
    (docs/benchmarks.md) is the evidence.
    """
    return (64, 6) if dim <= DEEP_NETWORK_MAX_DIM else (128, 3)


class FieldMLP(eqx.Module):
    """An MLP for a field f(t, x) on one unbatched point, with a Fourier time embedding.

    The input is [x, t, sin(2 pi k t), cos(2 pi k t) for k = 1..n_frequencies, c], where the
    context c is present only when `context_dim > 0`. With `residual=True` the hidden layers are
    residual blocks h <- h + W2 act(W1 [h, emb(t), c]), which re-inject the time embedding (and
    the context) in every block.

    **Arguments:**

    - `dim`: d, the dimension of x and of the output.
    - `context_dim`: k, the dimension of the context vector (0, the default: no context).
    - `width`: hidden width. `depth`: number of hidden layers (or residual blocks). Default
      (`None`): `default_network_size(dim)`.
    - `n_frequencies`: Fourier frequencies of the time embedding.
    - `residual`: residual blocks instead of a plain MLP.
    - `activation`: one of `ACTIVATIONS` ("silu", "gelu", "tanh", "softplus", "relu").
    - `key`: a `jax.random` key (keyword-only).

    **Returns:** `__call__(t, x)` (or `__call__(t, x, context)` with a context of shape `(k,)`)
    gives an array of shape `(d,)`.
    """

    input_layer: eqx.nn.Linear
    hidden: tuple
    output_layer: eqx.nn.Linear
    dim: int = eqx.field(static=True)
    width: int = eqx.field(static=True)
    depth: int = eqx.field(static=True)
    n_frequencies: int = eqx.field(static=True)
    residual: bool = eqx.field(static=True)
    activation: str = eqx.field(static=True)
    context_dim: int = eqx.field(static=True)

    def __init__(
        self, dim: int, *, width: int | None = None, depth: int | None = None,
        n_frequencies: int = 4, residual: bool = False, activation: str = "silu",
        context_dim: int = 0, key: PRNGKeyArray, dtype=None,
    ):
        if not (isinstance(dim, int) and dim >= 1):
            raise ValueError(f"dim must be a positive integer, got {dim!r}.")
        default_width, default_depth = default_network_size(dim)
        width = default_width if width is None else width
        depth = default_depth if depth is None else depth
        if not (isinstance(context_dim, int) and context_dim >= 0):
            raise ValueError(f"context_dim must be a non-negative integer, got {context_dim!r}.")
        if not (isinstance(width, int) and width >= 1 and isinstance(depth, int) and depth >= 1):
            raise ValueError(f"width and depth must be positive integers, got {width}, {depth}.")
        _check_activation(activation)
        self.dim, self.width, self.depth = dim, width, depth
        self.n_frequencies, self.residual, self.activation = n_frequencies, residual, activation
        self.context_dim = context_dim
        n_embed = 1 + 2 * n_frequencies + context_dim  # time embedding and context
        keys = jax.random.split(key, 2 * depth + 2)
        self.input_layer = eqx.nn.Linear(dim + n_embed, width, key=keys[0], dtype=dtype)
        if residual:
            self.hidden = tuple(
                (
                    eqx.nn.Linear(width + n_embed, width, key=keys[1 + 2 * i], dtype=dtype),
                    _scaled(eqx.nn.Linear(width, width, key=keys[2 + 2 * i], dtype=dtype), 0.1),
                )
                for i in range(depth)
            )
        else:
            self.hidden = tuple(
                eqx.nn.Linear(width, width, key=keys[1 + i], dtype=dtype) for i in range(depth - 1)
            )
        self.output_layer = eqx.nn.Linear(width, dim, key=keys[-1], dtype=dtype)

    def time_embedding(self, t: Float[ArrayLike, ""]) -> Float[Array, " e"]:
        t = jnp.asarray(t, dtype=self.input_layer.weight.dtype)
        frequencies = 2 * jnp.pi * jnp.arange(1, self.n_frequencies + 1, dtype=t.dtype)
        return jnp.concatenate([t[None], jnp.sin(frequencies * t), jnp.cos(frequencies * t)])

    def __call__(
        self, t: Float[ArrayLike, ""], x: Float[Array, " d"],
        context: Float[ArrayLike, " k"] | None = None,
    ) -> Float[Array, " d"]:
        act = ACTIVATIONS[self.activation]
        dtype = self.input_layer.weight.dtype
        x = jnp.asarray(x).astype(dtype)
        embedding = self.time_embedding(t)
        if self.context_dim:
            if context is None:
                raise ValueError(
                    f"This FieldMLP takes a context of shape ({self.context_dim},):"
                    " call it as net(t, x, context)."
                )
            context = jnp.asarray(context).astype(dtype)
            if context.shape != (self.context_dim,):
                raise ValueError(
                    f"context must have shape ({self.context_dim},), got {context.shape}."
                )
            embedding = jnp.concatenate([embedding, context])
        elif context is not None:
            raise ValueError("This FieldMLP has no context (context_dim=0); call it as net(t, x).")
        h = act(self.input_layer(jnp.concatenate([x, embedding])))
        if self.residual:
            for first, second in self.hidden:
                h = h + second(act(first(jnp.concatenate([h, embedding]))))
        else:
            for layer in self.hidden:
                h = act(layer(h))
        return self.output_layer(h)

    def config(self) -> dict:
        """The constructor arguments (without key), for saving."""
        return dict(
            dim=self.dim, width=self.width, depth=self.depth, n_frequencies=self.n_frequencies,
            residual=self.residual, activation=self.activation, context_dim=self.context_dim,
        )


def _scaled(linear: eqx.nn.Linear, factor: float) -> eqx.nn.Linear:
    """Shrink a layer's initial weights (residual branches start near the identity)."""
    return eqx.tree_at(lambda layer: layer.weight, linear, linear.weight * factor)


class FieldMLPSpec(eqx.Module):
    """How `build_flow` makes its default networks: a `FieldMLP` per field with these options.

    **Arguments:**

    - `width`, `depth`: the hidden width and number of layers; `None` (default) picks them by the
      data's dimension (`default_network_size`).
    - `residual`, `n_frequencies`, `activation`: as for `FieldMLP`.
    """

    width: int | None = None
    depth: int | None = None
    residual: bool = False
    n_frequencies: int = 4
    activation: str = "silu"

    def __check_init__(self):
        for name in ("width", "depth"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}.")
        _check_activation(self.activation)

    def build(self, dim: int, *, context_dim: int = 0, key: PRNGKeyArray, dtype=None) -> FieldMLP:
        """A `FieldMLP` for `dim`-dimensional data (and a context of `context_dim`)."""
        return FieldMLP(
            dim, width=self.width, depth=self.depth, residual=self.residual,
            n_frequencies=self.n_frequencies, activation=self.activation,
            context_dim=context_dim, key=key, dtype=dtype,
        )


class _ConvBlock(eqx.Module):
    """x + conv(act(norm(conv(act(norm(x)))) (1 + a(t)) + b(t))): the time scales and shifts each
    channel after the normalisation (which would remove a shift made before it), with a 1x1
    convolution on the skip path when the channel count changes."""

    norm1: eqx.nn.GroupNorm
    conv1: eqx.nn.Conv2d
    time: eqx.nn.Linear
    norm2: eqx.nn.GroupNorm
    conv2: eqx.nn.Conv2d
    skip: eqx.nn.Conv2d | None

    def __init__(self, c_in, c_out, n_embed, *, key, dtype):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.norm1 = eqx.nn.GroupNorm(_groups(c_in), c_in, dtype=dtype)
        self.conv1 = eqx.nn.Conv2d(c_in, c_out, 3, padding=1, key=k1, dtype=dtype)
        self.time = eqx.nn.Linear(n_embed, 2 * c_out, key=k2, dtype=dtype)
        self.norm2 = eqx.nn.GroupNorm(_groups(c_out), c_out, dtype=dtype)
        conv2 = eqx.nn.Conv2d(c_out, c_out, 3, padding=1, key=k3, dtype=dtype)
        self.conv2 = eqx.tree_at(lambda c: c.weight, conv2, conv2.weight * 0.1)
        self.skip = None if c_in == c_out else eqx.nn.Conv2d(c_in, c_out, 1, key=k4, dtype=dtype)

    def __call__(self, x, embedding, act):
        h = self.conv1(act(self.norm1(x)))
        scale, shift = jnp.split(self.time(embedding)[:, None, None], 2)
        h = self.conv2(act(self.norm2(h) * (1 + scale) + shift))
        return (x if self.skip is None else self.skip(x)) + h


def _groups(channels: int) -> int:
    """Group-norm groups: 8 when they divide the channels, else the largest divisor below."""
    return max(g for g in range(1, min(8, channels) + 1) if channels % g == 0)


class FieldUNet(eqx.Module):
    """A small U-Net for a field f(t, x) on images flattened to vectors (a network that suits
    images, e.g. 8x8 or 28x28 digits: `build_flow(key, images.reshape(n, -1),
    velocity_network=nsi.FieldUNet((1, 28, 28), key=key))`).

    x of shape `(C * H * W,)` is read as a `(C, H, W)` image; each resolution level has a
    residual convolution block (group norm, the time embedding scaling and shifting each
    channel), a stride-2
    convolution halves the resolution between levels, and the way up doubles it again
    (nearest-neighbour upsampling and a convolution) and joins the skip connection of the same
    level.

    **Arguments:**

    - `shape`: `(C, H, W)`; H and W must be divisible by `patch` * 2^(levels - 1).
    - `widths`: channels per level, e.g. `(16, 32)` (default) or `(32, 64, 64)`.
    - `patch`: side of the pixel patches folded into channels before the first convolution
      (space to depth: a `(C, H, W)` image becomes `(C p^2, H / p, W / p)`, and back at the
      end). Default 1; 2 makes every convolution four times cheaper, which large images on a
      CPU need.
    - `n_frequencies`: Fourier frequencies of the time embedding.
    - `activation`: one of `ACTIVATIONS`.
    - `key`: a `jax.random` key (keyword-only).

    **Returns:** `__call__(t, x)` gives an array of shape `(C * H * W,)`. No context.
    """

    conv_in: eqx.nn.Conv2d
    embed: eqx.nn.Linear
    down: tuple
    middle: _ConvBlock
    up: tuple
    norm_out: eqx.nn.GroupNorm
    conv_out: eqx.nn.Conv2d
    shape: tuple = eqx.field(static=True)
    widths: tuple = eqx.field(static=True)
    patch: int = eqx.field(static=True)
    n_frequencies: int = eqx.field(static=True)
    activation: str = eqx.field(static=True)

    def __init__(self, shape, *, widths=(16, 32), patch: int = 1, n_frequencies: int = 4,
                 activation: str = "silu", key: PRNGKeyArray, dtype=None):
        shape, widths = tuple(shape), tuple(widths)
        if len(shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in shape):
            raise ValueError(
                f"shape must be (channels, height, width) of positive ints, got {shape}."
            )
        if not widths or not all(isinstance(w, int) and w >= 1 for w in widths):
            raise ValueError(
                f"widths must be a non-empty sequence of positive ints, got {widths}."
            )
        if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1:
            raise ValueError(f"patch must be a positive int, got {patch!r}.")
        factor = patch * 2 ** (len(widths) - 1)
        if shape[1] % factor or shape[2] % factor:
            raise ValueError(
                f"an image of {shape[1]}x{shape[2]} cannot be cut into {patch}x{patch} patches"
                f" and halved {len(widths) - 1} times (height and width must be divisible by"
                f" {factor}); use fewer widths or a smaller patch."
            )
        _check_activation(activation)
        self.shape, self.widths, self.patch = shape, widths, patch
        self.n_frequencies, self.activation = n_frequencies, activation
        channels = shape[0] * patch * patch
        n_embed = 4 * widths[0]
        keys = iter(jax.random.split(key, 4 * len(widths) + 4))
        self.conv_in = eqx.nn.Conv2d(channels, widths[0], 3, padding=1, key=next(keys),
                                     dtype=dtype)
        self.embed = eqx.nn.Linear(1 + 2 * n_frequencies, n_embed, key=next(keys), dtype=dtype)
        down = []
        for i, w in enumerate(widths):
            block = _ConvBlock(w, w, n_embed, key=next(keys), dtype=dtype)
            halve = None if i == len(widths) - 1 else eqx.nn.Conv2d(
                w, widths[i + 1], 3, stride=2, padding=1, key=next(keys), dtype=dtype)
            down.append((block, halve))
        self.down = tuple(down)
        self.middle = _ConvBlock(widths[-1], widths[-1], n_embed, key=next(keys), dtype=dtype)
        up = []
        for i in reversed(range(len(widths) - 1)):
            double = eqx.nn.Conv2d(widths[i + 1], widths[i], 3, padding=1, key=next(keys),
                                   dtype=dtype)
            up.append((double, _ConvBlock(2 * widths[i], widths[i], n_embed, key=next(keys),
                                          dtype=dtype)))
        self.up = tuple(up)
        self.norm_out = eqx.nn.GroupNorm(_groups(widths[0]), widths[0], dtype=dtype)
        conv_out = eqx.nn.Conv2d(widths[0], channels, 3, padding=1, key=next(keys), dtype=dtype)
        self.conv_out = eqx.tree_at(lambda c: c.weight, conv_out, conv_out.weight * 0.1)

    def __call__(self, t: Float[ArrayLike, ""], x: Float[Array, " d"],
                 context: Float[ArrayLike, " k"] | None = None) -> Float[Array, " d"]:
        if context is not None:
            raise ValueError("FieldUNet takes no context; call it as net(t, x).")
        act = ACTIVATIONS[self.activation]
        dtype = self.conv_in.weight.dtype
        size = self.shape[0] * self.shape[1] * self.shape[2]
        x = jnp.asarray(x).astype(dtype)
        if x.shape != (size,):
            raise ValueError(f"x must have shape ({size},) (an image of shape {self.shape}"
                             f" flattened), got {x.shape}.")
        t = jnp.asarray(t, dtype=dtype)
        frequencies = 2 * jnp.pi * jnp.arange(1, self.n_frequencies + 1, dtype=dtype)
        embedding = act(self.embed(
            jnp.concatenate([t[None], jnp.sin(frequencies * t), jnp.cos(frequencies * t)])))
        c, height, width, p = *self.shape, self.patch
        image = x.reshape(c, height // p, p, width // p, p).transpose(0, 2, 4, 1, 3)
        h = self.conv_in(image.reshape(c * p * p, height // p, width // p))
        skips = []
        for block, halve in self.down:
            h = block(h, embedding, act)
            if halve is not None:
                skips.append(h)
                h = halve(h)
        h = self.middle(h, embedding, act)
        for (double, block), skip in zip(self.up, reversed(skips), strict=True):
            h = double(jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2))
            h = block(jnp.concatenate([h, skip]), embedding, act)
        out = self.conv_out(act(self.norm_out(h))).reshape(c, p, p, height // p, width // p)
        return out.transpose(0, 3, 1, 4, 2).reshape(size)

    def config(self) -> dict:
        """The constructor arguments (without key), for saving."""
        return dict(shape=list(self.shape), widths=list(self.widths), patch=self.patch,
                    n_frequencies=self.n_frequencies, activation=self.activation)
