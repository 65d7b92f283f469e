"""Equinox networks for time-dependent vector fields f(t, x): R x R^d -> R^d, optionally
conditioned on a context vector, f(t, x, c) (conditional flows, amortised inference)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

__all__ = ["FieldMLP", "FieldMLPSpec", "ACTIVATIONS", "default_network_size"]

ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu": jax.nn.gelu,
    "tanh": jnp.tanh,
    "softplus": jax.nn.softplus,
    "relu": jax.nn.relu,
}


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
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}."
            )
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
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}."
            )

    def build(self, dim: int, *, context_dim: int = 0, key: PRNGKeyArray, dtype=None) -> FieldMLP:
        """A `FieldMLP` for `dim`-dimensional data (and a context of `context_dim`)."""
        return FieldMLP(
            dim, width=self.width, depth=self.depth, residual=self.residual,
            n_frequencies=self.n_frequencies, activation=self.activation,
            context_dim=context_dim, key=key, dtype=dtype,
        )
