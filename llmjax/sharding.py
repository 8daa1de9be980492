"""The ONE table of sharding decisions: logical axis names -> mesh axes ('data', 'fsdp', 'tensor').

Parameters carry logical axis names in their `out_sharding` Variable metadata (set by the model,
e.g. ('embed', 'mlp') for an MLP input matrix; scan_layers prepends 'layers'); activations are
annotated with `constrain(x, ('batch', 'length', 'act_embed'))`. Both go through
`LOGICAL_AXIS_RULES` below and nothing else, MaxText style.

Typical use (what the training loop does):

    mesh = make_mesh(data=-1, fsdp=1, tensor=1)
    graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
    shardings = state_shardings(mesh, abstract_state)  # the state's tree, NamedSharding leaves
    with jax.set_mesh(mesh):  # makes constrain() active while tracing
        step = jax.jit(step_fn, in_shardings=(shardings, ...), out_shardings=(shardings, ...))

Without a mesh (one device) nothing here needs to be called: `constrain` is a no-op.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from llmjax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated).
# Params: embed is split over fsdp (ZeRO-3 style), the "wide" axes over tensor (Megatron style).
# Activations: batch over data*fsdp; the residual stream's width ('act_embed') stays replicated,
# since fsdp is already used by batch and a spec may not name a mesh axis twice.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("layers", None),
    ("norm", None),
)
_RULES = dict(LOGICAL_AXIS_RULES)


def fill_mesh(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) with the one -1 filled so the product is `num_devices`.

    The only place mesh sizes are resolved; UserError naming the mesh fields otherwise.
    """
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    for name, v in sizes.items():
        if not isinstance(v, int) or isinstance(v, bool) or v == 0 or v < -1:
            raise UserError(f"mesh.{name}={v!r}: allowed values are positive integers or -1 "
                            "(fill)")
    fill = [n for n, v in sizes.items() if v == -1]
    if len(fill) > 1:
        raise UserError(f"mesh.{fill[1]}=-1: at most one mesh axis may be -1 "
                        f"(mesh.{fill[0]} is already -1)")
    known = math.prod(v for v in sizes.values() if v != -1)
    divisors = [d for d in range(1, num_devices + 1) if num_devices % d == 0]
    if fill:
        if num_devices % known:
            raise UserError(
                f"mesh: {' x '.join(f'{n}={v}' for n, v in sizes.items())} cannot fill "
                f"{num_devices} devices; the fixed axes' product must divide {num_devices} "
                f"(allowed products: {divisors})")
        sizes[fill[0]] = num_devices // known
    elif known != num_devices:
        raise UserError(
            f"mesh.data*mesh.fsdp*mesh.tensor = {data}*{fsdp}*{tensor} = {known} does not match "
            f"the {num_devices} devices; allowed: sizes whose product is {num_devices} "
            "(or set one axis to -1 to fill)")
    return sizes["data"], sizes["fsdp"], sizes["tensor"]


def make_mesh(data: int, fsdp: int, tensor: int, devices: Sequence[Any] | None = None) -> Mesh:
    """A 3-axis mesh ('data', 'fsdp', 'tensor'); one size may be -1 to take the remaining devices.

    Axis types are Auto: shardings propagate through jit (GSPMD) and `constrain` only hints.
    Raises UserError (naming `mesh`) when the sizes do not multiply to the device count.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = fill_mesh(data, fsdp, tensor, len(devices))
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=axis_types)


def _mesh_axis_size(mesh: Any, axes: str | tuple[str, ...]) -> int:
    names = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in names)


def logical_to_spec(
    logical_axes: Sequence[str | None],
    shape: Sequence[int] | None = None,
    mesh: Any | None = None,
) -> PartitionSpec:
    """Map logical axis names to a PartitionSpec through LOGICAL_AXIS_RULES.

    Unknown names and None map to None (replicated). A mesh axis already used by an earlier
    dimension is dropped (a spec may not name it twice). With `mesh`, mesh axes absent from it
    or of size 1 are dropped; with `shape` too, so are axes not dividing the dimension (e.g. 2 kv
    heads on tensor=4, which are then replicated), so every returned spec is valid for the array.
    """
    used: set[str] = set()
    spec = []
    for i, name in enumerate(logical_axes):
        target = _RULES.get(name) if name is not None else None
        axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
        kept = []
        for axis in axes:
            if axis in used:
                continue
            if mesh is not None and mesh.shape.get(axis, 1) == 1:
                continue  # absent or size-1 mesh axes shard nothing; leave them out of the spec
            kept.append(axis)
        if mesh is not None and shape is not None and kept:
            # Drop trailing mesh axes until the product divides the dimension.
            while kept and shape[i] % _mesh_axis_size(mesh, tuple(kept)):
                kept.pop()
        used.update(kept)
        spec.append(None if not kept else (kept[0] if len(kept) == 1 else tuple(kept)))
    while spec and spec[-1] is None:
        spec.pop()
    return PartitionSpec(*spec)


def active_mesh() -> Any | None:
    """The mesh set by `jax.set_mesh` (abstract inside jit), or None when none is active."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return None
    return mesh


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Sharding hint for an activation; a no-op when no mesh is active (single device)."""
    mesh = active_mesh()
    if mesh is None:
        return x
    spec = logical_to_spec(logical_axes, x.shape, mesh)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def variable_logical_axes(v: nnx.Variable) -> tuple[str | None, ...] | None:
    """Logical axis names stored on a Variable (its `out_sharding` metadata), or None."""
    meta = v.get_metadata()
    axes = meta.get("out_sharding")
    return tuple(axes) if axes else None


def state_shardings(mesh: Mesh, abstract_state: Any) -> Any:
    """NamedShardings for every leaf of an nnx.State (or any pytree holding nnx Variables).

    Works on params, on optax states built from an nnx.State (their mu/nu keep the Variables and
    metadata) and on abstract states from `nnx.eval_shape`. Variables with logical axis metadata
    are sharded by LOGICAL_AXIS_RULES; everything else (step counters, rng keys) is replicated.
    The result has the input's tree structure, so it can be passed to jit in/out_shardings.
    """

    def leaf_sharding(x: Any) -> Any:
        if isinstance(x, nnx.Variable):
            axes = variable_logical_axes(x)
            value = x.get_value()
            shape = getattr(value, "shape", None)
            if axes is not None and shape is not None and len(axes) == len(shape):
                spec = logical_to_spec(axes, shape, mesh)
            else:
                spec = PartitionSpec()
            return x.replace(NamedSharding(mesh, spec))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(
        leaf_sharding, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )


def state_specs(abstract_state: Any, mesh: Mesh) -> Any:
    """Like `state_shardings` but PartitionSpecs (for shard_map or printing)."""
    return jax.tree.map(lambda s: s.spec, state_shardings(mesh, abstract_state))
