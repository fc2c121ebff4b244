"""What the subcommands share: option types that refuse bad values at once,
optimizers by name, seeds as keys, and the memory a network will need."""

import argparse
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jbp.activations import ACTIVATIONS
from jbp.checks import available_memory  # noqa: F401 (where the subcommands look for it)
from jbp.files import parse_size
from jbp.network import Dense
from jbp.optimizers import make, names as optimizer_names
from jbp.run import SEED_LIMIT, key_from_seed  # noqa: F401 (the seed's key, for the subcommands)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (status 2) and no abbreviated options:
    ``--epoch`` is refused rather than taken for ``--epochs``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def optimizers() -> list[str]:
    """optax's optimizers that take a learning rate first and need nothing else."""
    return optimizer_names()


def make_optimizer(name: str, learning_rate: float, key: "jax.Array | None" = None) -> optax.GradientTransformation:
    """``optax.<name>(learning_rate)`` for a name from :func:`optimizers` (an optimizer that draws
    random numbers, ``noisy_sgd``, gets ``key``)."""
    return make(name, learning_rate, key=key)


def _whole(text: str, low: int) -> int:
    what = "a positive integer" if low == 1 else f"a whole number ≥ {low}"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
    return value


def positive_int(text: str) -> int:
    return _whole(text, 1)


def non_negative_int(text: str) -> int:
    return _whole(text, 0)


def _number(text: str, ok, expected: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"must {expected}, got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (``inf`` and ``nan`` refused)."""
    return _number(text, lambda v: v > 0, "be a finite number > 0")


def unit_interval(text: str) -> float:
    """A number in [0, 1)."""
    return _number(text, lambda v: 0 <= v < 1, "lie in [0, 1)")


def open_unit_interval(text: str) -> float:
    """A number in (0, 1)."""
    return _number(text, lambda v: 0 < v < 1, "lie in (0, 1)")


def non_negative_float(text: str) -> float:
    """A finite number ≥ 0."""
    return _number(text, lambda v: v >= 0, "be a finite number ≥ 0")


def seed(text: str) -> int:
    """A whole number in ``[0, 2^64)``: every one of them gives its own key (:func:`key_from_seed`)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must lie in [0, 2^64), got {text}")
    return value


def size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def sizes(text: str) -> list[int]:
    try:
        widths = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 64,32,10, got {text!r}") from None
    if len(widths) < 2 or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"expected at least two positive widths, got {text!r}")
    return widths


def choice(kind: str, known: Sequence[str]):
    def parse(text: str) -> str:
        if text not in known:
            raise argparse.ArgumentTypeError(f"unknown {kind} {text!r}; expected one of {', '.join(known)}")
        return text

    return parse


def activations(text: str) -> list[str]:
    names = text.split(",")
    for name in names:
        choice("activation", list(ACTIVATIONS))(name)
    return names


def per_layer(hidden: Sequence[str], sizes_: Sequence[int]) -> list[str]:
    """One hidden activation for every hidden layer, or one each."""
    n_hidden = len(sizes_) - 2
    if len(hidden) == 1:
        return list(hidden) * n_hidden
    if len(hidden) != n_hidden:
        raise ValueError(f"--hidden names {len(hidden)} activations for {n_hidden} hidden layers")
    return list(hidden)


def check_memory(widths: Sequence[int], optimizer: "optax.GradientTransformation | None", batch_size: int,
                 dtype=jnp.float32, copies: int = 3, samples: int = 0) -> None:
    """Refuses a network whose training state cannot fit in the memory left.

    Counted without allocating anything: the parameters, ``copies`` arrays of
    their size (gradients, updates, the new parameters), the optimizer's
    state (its shapes from ``jax.eval_shape``), the activations and deltas
    of one minibatch, and the data set of ``samples`` rows placed on the
    device: their inputs and their targets, one-hot over the output width
    (``samples × (widths[0] + widths[-1])`` numbers: 30,000 classes make
    every row 120 kB).

    Raises:
      ValueError: naming the bytes needed and the bytes available.
    """
    itemsize = jnp.dtype(dtype).itemsize
    count = sum((n_in + 1) * n_out for n_in, n_out in zip(widths[:-1], widths[1:]))
    state = 0
    if optimizer is not None and count * itemsize < available_memory():
        shapes = tuple(
            Dense(jax.ShapeDtypeStruct((n_out, n_in), dtype), jax.ShapeDtypeStruct((n_out,), dtype))
            for n_in, n_out in zip(widths[:-1], widths[1:])
        )
        state = sum(
            math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
            for leaf in jax.tree.leaves(jax.eval_shape(optimizer.init, shapes))
            if not jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)
        )
    data = samples * (widths[0] + widths[-1]) * itemsize
    needed = count * itemsize * (1 + copies) + state + 4 * batch_size * sum(widths) * itemsize + data
    available = available_memory()
    if needed > available:
        held = f" and {samples:,} rows of data ({data / 1e9:.3g} GB, targets one-hot over {widths[-1]:,} outputs)" \
            if samples else ""
        raise ValueError(
            f"the network {','.join(map(str, widths))} has {count:,} parameters; training it needs about "
            f"{needed / 1e9:.3g} GB (parameters, gradients, updates and the optimizer's state{held}), "
            f"and this machine has {available / 1e9:.3g} GB available"
        )
