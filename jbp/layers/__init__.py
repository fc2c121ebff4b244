"""Layer types, one file each with all of its mathematics: :mod:`jbp.layers.base` holds the protocol
and the defaults every reduction falls back on, :mod:`jbp.layers.dense` the dense layer."""

from jbp.layers.base import Layer
from jbp.layers.dense import Dense, DenseLayer, dense

__all__ = ["Dense", "DenseLayer", "Layer", "dense"]
