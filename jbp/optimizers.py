"""Optimizers by name: optax's, with the options users reach for on day one.

:func:`make` builds one ``optax.GradientTransformation`` from plain values
(what ``jbp train`` takes on its command line and keeps in a run's
``config.json``), so that a run's optimizer can be rebuilt exactly from its
configuration (:func:`jbp.load_run`):

- any optax optimizer that takes a learning rate first and needs nothing
  else (:func:`names`), with ``momentum`` and ``nesterov`` for those that
  take them (``sgd``);
- a learning-rate schedule from optax: ``constant``, ``cosine``
  (``cosine_decay_schedule`` to 0 over the run), ``warmup-cosine``
  (``warmup_cosine_decay_schedule``, a linear warm-up then the cosine) and
  ``exponential`` (``exponential_decay``, times ``decay_rate`` every epoch);
- ``weight_decay``: the optimizer's own decoupled one where it has one
  (``adamw``, ``lion``, …), else ``optax.add_decayed_weights`` before it; on
  the weights only, never the biases, like ``l2``;
- ``clip_norm``: ``optax.clip_by_global_norm`` first.

Nothing here is new arithmetic: it is optax, chained.
"""

import inspect
import math
from typing import Any

import jax
import optax

EXCLUDED = {"lbfgs", "scale_by_learning_rate", "scale_by_rprop"}
SCHEDULES = ("constant", "cosine", "warmup-cosine", "exponential")


def names() -> list[str]:
    """optax's optimizers that take a learning rate first and need nothing else."""
    found = []
    for name in sorted(dir(optax)):
        fn = getattr(optax, name)
        if name.startswith("_") or name in EXCLUDED or not inspect.isfunction(fn):
            continue
        params = list(inspect.signature(fn).parameters.values())
        if params and params[0].name == "learning_rate" and all(
            p.default is not inspect.Parameter.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            for p in params[1:]
        ):
            found.append(name)
    return found


def schedule(name: str, learning_rate: float, *, epochs: int, steps_per_epoch: int,
             warmup_epochs: float = 1.0, decay_rate: float = 0.9) -> "float | optax.Schedule":
    """The learning rate as optax gives it, step by step.

    Args:
      name: one of :data:`SCHEDULES`.
      learning_rate: the peak (or constant) rate.
      epochs, steps_per_epoch: the run's length, which a decaying schedule spans.
      warmup_epochs: for ``warmup-cosine``, how long the linear rise from 0 lasts.
      decay_rate: for ``exponential``, the factor per epoch.
    """
    total = max(1, epochs * steps_per_epoch)
    if name == "constant":
        return learning_rate
    if name == "cosine":
        return optax.cosine_decay_schedule(learning_rate, decay_steps=total)
    if name == "warmup-cosine":
        warmup = min(total - 1, max(1, round(warmup_epochs * steps_per_epoch)))
        return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps=warmup, decay_steps=total)
    if name == "exponential":
        return optax.exponential_decay(learning_rate, transition_steps=steps_per_epoch, decay_rate=decay_rate)
    raise ValueError(f"unknown schedule {name!r}; expected one of {', '.join(SCHEDULES)}")


def _weights_only(params: Any) -> Any:
    """A mask for the weights: every parameter array of two axes or more (a dense layer's ``W``,
    as :meth:`jbp.Layer.decayed` marks it); biases and other vectors are not decayed."""
    return jax.tree.map(lambda leaf: len(leaf.shape) >= 2, params)


def make(
    name: str,
    learning_rate: float,
    *,
    epochs: int = 1,
    steps_per_epoch: int = 1,
    schedule_name: str = "constant",
    warmup_epochs: float = 1.0,
    decay_rate: float = 0.9,
    momentum: "float | None" = None,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    clip_norm: "float | None" = None,
    key: "jax.Array | None" = None,
) -> optax.GradientTransformation:
    """One optax transformation from a name and plain options (see the module docstring).

    Args:
      name: an optimizer from :func:`names`.
      learning_rate: finite and > 0.
      epochs, steps_per_epoch: the run's length, for the schedule.
      schedule_name, warmup_epochs, decay_rate: see :func:`schedule`.
      momentum, nesterov: for optimizers that take them (``sgd``).
      weight_decay: ≥ 0, on the weights only.
      clip_norm: the largest global norm of a step's gradient, or None.
      key: for optimizers that draw random numbers (``noisy_sgd``).

    Raises:
      ValueError: for an unknown name or schedule, an option the optimizer
        does not take (``momentum`` with ``adam``), or values out of range.

    Example:
      >>> import jbp.optimizers
      >>> opt = jbp.optimizers.make("sgd", 0.1, momentum=0.9, nesterov=True, epochs=10, steps_per_epoch=5,
      ...                           schedule_name="cosine", weight_decay=1e-4, clip_norm=1.0)
      >>> type(opt).__name__
      'GradientTransformationExtraArgs'
    """
    known = names()
    if name not in known:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(known)}")
    for label, value, low in (("learning rate", learning_rate, 0.0), ("weight decay", weight_decay, None),
                              ("warm-up epochs", warmup_epochs, None), ("decay rate", decay_rate, 0.0)):
        ok = isinstance(value, (int, float)) and math.isfinite(value) and (value > low if low is not None else value >= 0)
        if not ok:
            raise ValueError(f"the {label} must be a finite number {'> 0' if low is not None else '≥ 0'}, got {value!r}")
    if clip_norm is not None and not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ValueError(f"the clipping norm must be a finite number > 0, got {clip_norm!r}")
    factory = getattr(optax, name)
    takes = inspect.signature(factory).parameters
    kwargs = {}
    if momentum is not None or nesterov:
        if "momentum" not in takes:
            raise ValueError(f"{name} takes no momentum; momentum and Nesterov go with sgd")
        if momentum is not None and not (math.isfinite(momentum) and 0 <= momentum < 1):
            raise ValueError(f"momentum must lie in [0, 1), got {momentum!r}")
        kwargs["momentum"] = momentum if momentum is not None else 0.9
        if nesterov:
            kwargs["nesterov"] = True
    decay_inside = "weight_decay" in takes
    if weight_decay and decay_inside:
        kwargs["weight_decay"] = weight_decay
        if "mask" in takes:
            kwargs["mask"] = _weights_only
    if key is not None and "key" in takes:
        kwargs["key"] = key
    rate = schedule(schedule_name, learning_rate, epochs=epochs, steps_per_epoch=steps_per_epoch,
                    warmup_epochs=warmup_epochs, decay_rate=decay_rate)
    parts = []
    if clip_norm is not None:
        parts.append(optax.clip_by_global_norm(clip_norm))
    if weight_decay and not decay_inside:
        parts.append(optax.add_decayed_weights(weight_decay, mask=_weights_only))
    parts.append(factory(rate, **kwargs))
    return parts[0] if len(parts) == 1 else optax.chain(*parts)
