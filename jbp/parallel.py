"""Where a batch lives: data parallel training on a mesh of devices, in one process or many.

jbp builds no communication of its own. A ``jax.sharding.Mesh`` with an axis
named ``"batch"`` says which devices share each minibatch; the parameters,
the optimizer's state and the data set are replicated on every device; each
step's minibatch is split over the ``"batch"`` axis, every device runs the
forward and backward passes on its rows, and the Coursera sum
``Δ^l = Σ_i δ_i^l (ā_i^{l-1})ᵀ`` over the batch axis becomes, under ``jit``,
each device's partial sum and one all-reduce that XLA inserts. The mean
gradient, hence the update, is the same on every device.

Many processes (``jax.distributed``): each process holds its devices and
contributes only its share of every minibatch
(``jax.make_array_from_process_local_data``); the programs are the same.

Nothing else in jbp knows about devices: :func:`contract` is the one place a
pass asks how its batch is laid out, and :mod:`jbp.train` asks this module
where a batch goes.
"""

import os
import socket
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jbp.contract import contract, gram, rows_like  # noqa: F401 (their old home)

Array = jax.Array
BATCH = "batch"


def check_mesh(mesh: Any) -> Mesh:
    """A ``jax.sharding.Mesh`` with a ``"batch"`` axis, or a clear error."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (jax.make_mesh((n,), ('batch',))), got {type(mesh).__name__}")
    if BATCH not in mesh.axis_names:
        raise ValueError(f"the mesh needs an axis named 'batch' to split minibatches over; its axes are "
                         f"{tuple(mesh.axis_names)}")
    return mesh


def batch_devices(mesh: Mesh) -> int:
    """How many devices share each minibatch: the size of the mesh's ``"batch"`` axis."""
    return int(mesh.shape[BATCH])


def spans_processes(mesh: Mesh) -> bool:
    return len({d.process_index for d in mesh.devices.flat}) > 1


def make_mesh(devices: "int | None" = None) -> Mesh:
    """A one-axis ``"batch"`` mesh over the first ``devices`` devices of every process (all by default).

    In one process: ``jax.make_mesh((devices,), ("batch",))`` over
    ``jax.local_devices()[:devices]``. With ``jax.distributed`` running, the
    first ``devices`` local devices of each process, process by process.
    """
    local = jax.local_device_count()
    if devices is None:
        devices = local
    if isinstance(devices, bool) or not isinstance(devices, (int, np.integer)) or devices < 1:
        raise ValueError(f"devices must be a whole number ≥ 1, got {devices!r}")
    if devices > local:
        platform = jax.local_devices()[0].platform
        raise ValueError(f"{devices} devices asked for, but this process has {local} ({platform}); on a CPU, "
                         f"XLA_FLAGS=--xla_force_host_platform_device_count={devices} simulates more")
    chosen = [d for p in range(jax.process_count())
              for d in sorted((d for d in jax.devices() if d.process_index == p), key=lambda d: d.id)[:devices]]
    return jax.make_mesh((len(chosen),), (BATCH,), devices=chosen)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def split(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """The sharding that splits axis ``axis`` over the mesh's ``"batch"`` devices."""
    return NamedSharding(mesh, P(*([None] * axis), BATCH))


def shard_rows(x: Array, mesh: Mesh) -> Array:
    """Inside ``jit``: lay a minibatch's rows out over the ``"batch"`` devices.

    The data set is replicated, so each device takes its rows from its own
    copy: a slice, no communication. A minibatch whose rows do not divide
    evenly (an epoch's last, smaller one) stays replicated: every device
    computes it whole, the same numbers, still no communication."""
    if x.shape[0] % batch_devices(mesh):
        return x
    target = split(mesh)
    if mesh.axis_types[mesh.axis_names.index(BATCH)] == jax.sharding.AxisType.Explicit:
        return jax.sharding.reshard(x, target)
    return jax.lax.with_sharding_constraint(x, target)


def place(tree: Any, mesh: Mesh) -> Any:
    """Every leaf replicated on every device of the mesh, once (in every process, the same values)."""
    sharding = replicated(mesh)
    if not spans_processes(mesh):
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda leaf: jax.make_array_from_process_local_data(sharding, np.asarray(leaf)), tree)


def local_rows(mesh: Mesh, shape: tuple[int, int]) -> slice:
    """The columns of a ``(steps, batch)`` array of row numbers whose rows this process feeds."""
    indices = split(mesh, axis=1).addressable_devices_indices_map(shape).values()
    starts = sorted(index[1].start or 0 for index in indices)
    stops = sorted(shape[1] if index[1].stop is None else index[1].stop for index in indices)
    if any(b != a for a, b in zip(stops[:-1], starts[1:])):
        raise ValueError("this process's devices are not neighbours on the mesh's 'batch' axis; "
                         "build the mesh process by process (jbp.parallel.make_mesh)")
    return slice(starts[0], stops[-1])


def batches(mesh: Mesh, host: np.ndarray, rows: np.ndarray) -> Array:
    """``host[rows]`` for a ``(steps, batch)`` array of row numbers, as one global array split over the
    ``"batch"`` devices: this process gathers and sends only the rows its own devices hold."""
    share = local_rows(mesh, rows.shape)
    local = np.asarray(host[rows[:, share]])
    return jax.make_array_from_process_local_data(split(mesh, axis=1), local, (*rows.shape, *host.shape[1:]))


def remainder(mesh: Mesh, host: np.ndarray, rows: np.ndarray) -> Array:
    """An epoch's last, smaller minibatch: split when its rows divide over the devices, else replicated."""
    if len(rows) % batch_devices(mesh):
        return jax.make_array_from_process_local_data(replicated(mesh), np.asarray(host[rows]))
    return batches(mesh, host, rows[None])[0]


# ---------------------------------------------------------------------------- many processes

def parse_coordinator(address: str) -> tuple[str, int]:
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--coordinator must be HOST:PORT with a port in 1…65535, got {address!r}")
    return host, int(port)


def initialize(coordinator: str, num_processes: int, process_id: int, timeout: float = 60.0) -> None:
    """``jax.distributed.initialize``, with the checks it does not make and a time limit it keeps.

    Process 0 hosts the coordinator at ``HOST:PORT``; every other process
    first waits, up to ``timeout`` seconds, for that address to answer, and
    says so in one line if it never does. Then all of them hand over to
    jax; if the processes have not all met within ``timeout`` (a wrong
    ``--num-processes`` somewhere, a process that never started), this
    raises ``TimeoutError`` instead of the crash dump jax's own timeout ends in.
    """
    host, port = parse_coordinator(coordinator)
    for name, value in (("num_processes", num_processes), ("process_id", process_id)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be a whole number, got {value!r}")
    if num_processes < 1:
        raise ValueError(f"--num-processes must be at least 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"--process-id must lie in 0…{num_processes - 1} for {num_processes} processes, got {process_id}")
    if not np.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"the timeout must be a number of seconds > 0, got {timeout!r}")
    deadline = time.monotonic() + timeout
    if process_id == 0:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as err:
                raise ValueError(f"process 0 hosts the coordinator, but {host}:{port} cannot be used here: "
                                 f"{err.strerror or err}") from None
    else:
        while True:
            try:
                socket.create_connection((host, port), timeout=1.0).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no coordinator answered at {host}:{port} within {timeout:g} s "
                                       "(is process 0 running, with the same --coordinator?)") from None
                time.sleep(0.2)
    failure: list = []

    def handover():
        try:
            jax.distributed.initialize(f"{host}:{port}", int(num_processes), int(process_id),
                                       initialization_timeout=int(timeout) + 60)
        except Exception as err:  # reported by the caller's thread
            failure.append(err)

    thread = threading.Thread(target=handover, daemon=True)
    thread.start()
    thread.join(max(deadline - time.monotonic(), 1.0))
    if thread.is_alive():
        raise TimeoutError(f"the {num_processes} processes did not all meet at {host}:{port} within {timeout:g} s "
                           "(does every process say the same --num-processes, and a different --process-id?)")
    if failure:
        raise RuntimeError(f"jax.distributed could not start: {failure[0]}") from failure[0]
    # The CPU collectives (gloo) connect the processes on their first collective, and give up if
    # one process gets there seconds after another (it may still be compiling); make that first
    # collective here, while every process is at the same line.
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("jbp: every process has started")


def abandon(status: int) -> None:
    """Leave at once: a process whose peers are gone cannot shut jax.distributed down cleanly."""
    os._exit(status)
