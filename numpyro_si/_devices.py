"""Devices: the one-axis device mesh that points and training batches are split over.

numpyro_si follows JAX's own device API: under `with jax.set_mesh(mesh):` (a mesh of one axis in
auto mode, `data_mesh()`), `train`/`fit` split each batch over the mesh's devices with the
parameters replicated, `log_prob`/`sample`/the transports split their points over them and
`adaptive.run` its chains. Without a mesh (or on a one-device mesh) everything runs on one device
as before, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from jax.sharding import AxisType, Mesh, PartitionSpec


def data_mesh(devices: Sequence[jax.Device] | int | None = None) -> Mesh:
    """A one-axis device mesh ("data") in auto mode over `devices` (default: every device JAX
    sees; an int: the first that many) for `with jax.set_mesh(nsi.data_mesh()):`, under which
    training splits each batch and `log_prob`/`sample`/`adaptive.run` split their points and
    chains over the devices."""
    if devices is None:
        devices = jax.devices()
    elif isinstance(devices, int):
        available = jax.devices()
        if not 1 <= devices <= len(available):
            raise ValueError(
                f"devices={devices}: JAX sees {len(available)} device(s) ({available})."
            )
        devices = available[:devices]
    devices = list(devices)
    if not devices:
        raise ValueError("devices is empty: give at least one device.")
    return jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,),
                         devices=devices)


def points_axis() -> str | None:
    """The axis name of the current device mesh (`jax.set_mesh`) that points and batches are
    split over: None without a mesh or on a one-device mesh; an error for a mesh that is not
    one axis in auto mode (`data_mesh`)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return None
    if len(mesh.axis_names) != 1 or mesh.axis_types[0] != AxisType.Auto:
        raise ValueError(
            "numpyro_si splits points and batches over a one-axis device mesh in auto mode:"
            " `with jax.set_mesh(nsi.data_mesh()):` (or jax.make_mesh((n,), ('data',),"
            " axis_types=(jax.sharding.AxisType.Auto,))). The current mesh has axes"
            f" {dict(mesh.shape)} of types {tuple(t.name for t in mesh.axis_types)}: its"
            " solvers and networks are not written for explicit sharding."
        )
    return mesh.axis_names[0]


def mesh_size() -> int:
    """Devices of the current mesh (1 without one)."""
    mesh = jax.sharding.get_abstract_mesh()
    return 1 if mesh.empty else mesh.size


def split_leading(x, axis: str):
    """`x` with its leading axis laid out over the mesh axis `axis` (a sharding constraint:
    XLA propagates the split through what follows)."""
    return jax.lax.with_sharding_constraint(x, PartitionSpec(axis))
