"""jbp: backpropagation written by hand, compiled by JAX.

The forward and backward passes of a network are pure functions that
implement the delta equations BP1–BP4 for one sample, each layer type with its
own hand-derived steps (:mod:`jbp.layers`); batches
are ``jax.vmap`` of them, reduced as Coursera's regularized cost prescribes,
and compiled with ``jax.jit``. No JAX autodiff is used anywhere in the
package: the tests compare every gradient with ``jax.grad``.
"""

from jbp.activations import (
    ACTIVATIONS,
    Activation,
    elementwise,
    elu,
    get_activation,
    identity,
    leaky_relu,
    relu,
    sigmoid,
    softmax,
    softplus,
    tanh,
)
from jbp.batch import cost, loss_and_grads, per_example_grad_norms, per_example_grads, predict
from jbp.feedback import (
    Feedback,
    backprop,
    direct_feedback_alignment,
    feedback_alignment,
    kolen_pollack,
    sign_symmetry,
)
from jbp.gradcheck import GradCheck, check_grads, numerical_grads, relative_difference
from jbp.losses import (
    LOSSES,
    Loss,
    binary_cross_entropy,
    get_loss,
    output_cost,
    output_delta,
    softmax_cross_entropy,
    squared_error,
)
from jbp.layers import Layer, dense
from jbp.network import MLP, Dense, Network, Trace, backpropagate, backward, deltas, forward, init, mlp, network
from jbp.quantities import (
    QUANTITIES,
    KronFactors,
    diag_ggn,
    diag_ggn_mc,
    grad_variance,
    kfac_factors,
    one_pass,
    per_example_grad_gram,
    sum_grad_squared,
)
from jbp.privacy import DPSGD, clipped_grads, dp_noise, dp_sgd
from jbp.metrics import confusion_matrix, evaluate, predicted_classes
from jbp.train import FitResult, TrainingDiverged, fit
from jbp.run import Run, load_run
from jbp.explain import Explanation, explain
from jbp import checkpoint, data, feedback, layers, optimizers, privacy

from jbp._version import __version__

__all__ = [
    # activations
    "ACTIVATIONS",
    "Activation",
    "elementwise",
    "elu",
    "get_activation",
    "identity",
    "leaky_relu",
    "relu",
    "sigmoid",
    "softmax",
    "softplus",
    "tanh",
    # losses
    "LOSSES",
    "Loss",
    "binary_cross_entropy",
    "get_loss",
    "output_cost",
    "output_delta",
    "softmax_cross_entropy",
    "squared_error",
    # layers and networks: one sample
    "Layer",
    "dense",
    "network",
    "Network",
    "MLP",
    "Dense",
    "Trace",
    "backpropagate",
    "backward",
    "deltas",
    "forward",
    "init",
    "mlp",
    # batch
    "cost",
    "loss_and_grads",
    "per_example_grad_norms",
    "per_example_grads",
    "predict",
    # quantities from the deltas
    "QUANTITIES",
    "KronFactors",
    "diag_ggn",
    "diag_ggn_mc",
    "grad_variance",
    "kfac_factors",
    "one_pass",
    "per_example_grad_gram",
    "sum_grad_squared",
    # credit assignment
    "Feedback",
    "backprop",
    "direct_feedback_alignment",
    "feedback_alignment",
    "kolen_pollack",
    "sign_symmetry",
    # private training
    "DPSGD",
    "clipped_grads",
    "dp_noise",
    "dp_sgd",
    # finite differences
    "GradCheck",
    "check_grads",
    "numerical_grads",
    "relative_difference",
    # training
    "FitResult",
    "TrainingDiverged",
    "confusion_matrix",
    "evaluate",
    "fit",
    "predicted_classes",
    # runs read back
    "Run",
    "load_run",
    # teaching
    "Explanation",
    "explain",
    # modules
    "checkpoint",
    "data",
    "feedback",
    "layers",
    "optimizers",
    "privacy",
]
