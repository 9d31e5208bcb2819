"""Device mesh and shardings: the batch is split over a ``data`` axis, the model is replicated.

Multi-host runs call ``initialize()`` first (``jax.distributed.initialize``); everything else is the same on one
CPU, eight forced CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``), a GPU box or a TPU pod.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Join a multi-process job when one is described (by the arguments, or by JAX_COORDINATOR_ADDRESS /
    JAX_NUM_PROCESSES / JAX_PROCESS_ID); a no-op for one process. On TPU pods and Slurm/Kubernetes GPU jobs JAX
    finds the coordinator itself when ``JAX_COORDINATOR_ADDRESS`` is set to anything (see docs/SCALING.md)."""
    address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("COORDINATOR_ADDRESS")
    if not address or jax.distributed.is_initialized():
        return
    num = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    pid = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    jax.distributed.initialize(address, num_processes=num, process_id=pid)


def machine() -> str:
    """What the run's seconds were measured on, for the rows: the accelerators (``"8 x TPU v5 lite"``, ``"1 x NVIDIA
    H200"``) or, on the CPU, the processor's model name and the cores this process may use."""
    devices = jax.local_devices()
    if devices[0].platform != "cpu":
        return f"{len(devices)} x {devices[0].device_kind}"
    name = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    import platform

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name or platform.processor() or platform.machine() or 'CPU'}, {cores} cores"


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def barrier(name: str) -> None:
    """Wait until every process of a multi-process job reaches this point (a no-op for one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def make_mesh(num_devices: int | None = None, local: bool = False) -> Mesh:
    """A 1-D ``data`` mesh over all (or the first ``num_devices``) devices; ``local``: this process's only."""
    devices = jax.local_devices() if local else jax.devices()
    n = len(devices) if num_devices is None else num_devices
    if not 1 <= n <= len(devices):
        raise ValueError(f"asked for {n} devices, {len(devices)} available")
    return jax.make_mesh((n,), (DATA,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices[:n])


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA))


def replicate(tree, mesh: Mesh):
    """Put every array of ``tree`` on all devices of the mesh. In a multi-process job every process must pass the
    same values (e.g. weights initialised from the same seed); arrays already replicated on the mesh are kept."""
    sharding = replicated(mesh)
    if jax.process_count() == 1 or all(d.process_index == jax.process_index() for d in mesh.devices.flat):
        return jax.device_put(tree, sharding)

    def put(a):
        if isinstance(a, jax.Array) and a.sharding.is_equivalent_to(sharding, a.ndim):
            return a
        if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            data = jax.make_array_from_process_local_data(sharding, np.asarray(jax.random.key_data(a)))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(a))
        return jax.make_array_from_process_local_data(sharding, np.asarray(a))

    return jax.tree.map(put, tree)


def global_batch(local: dict, rows: int, mesh: Mesh) -> dict:
    """Assemble a global batch of ``rows`` rows, split over the ``data`` axis, from this process's contiguous part
    of it (all of it in a one-process run): process i holds rows ``[i * rows / P, (i + 1) * rows / P)``."""
    sharding = batch_sharded(mesh)
    return {name: jax.make_array_from_process_local_data(sharding, a, (rows, *a.shape[1:]))
            for name, a in local.items()}


def local_rows(rows: int) -> slice:
    """This process's contiguous share of a global batch of ``rows`` rows (see ``global_batch``)."""
    world, rank = jax.process_count(), jax.process_index()
    if rows % world:
        raise ValueError(f"a batch of {rows} rows does not split over {world} processes")
    per = rows // world
    return slice(rank * per, (rank + 1) * per)


def to_local(tree, mesh: Mesh):
    """This process's copy of a replicated tree, placed on the process's own devices (``mesh`` a local mesh)."""
    def get(a):
        return a.addressable_data(0) if isinstance(a, jax.Array) else a

    return jax.device_put(jax.tree.map(get, tree), replicated(mesh))


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
    """Pad the leading axis of ``a`` with copies of its first row up to ``rows`` (static batch shapes)."""
    if len(a) > rows:
        raise ValueError(f"{len(a)} rows do not fit a batch of {rows}")
    if len(a) == rows:
        return a
    filler = np.repeat(a[:1], rows - len(a), axis=0) if len(a) else np.zeros((rows, *a.shape[1:]), a.dtype)
    return np.concatenate([a, filler])
