"""Matt Mazur's "A Step by Step Backpropagation Example", every number, with jbp.

The 2-2-2 network of the article: sigmoid hidden and output layers, squared
error ``E = Σ ½ (target - out)²``, one sample, learning rate 0.5. jbp's public
API computes the forward pass, BP1-BP4 and the update (optax SGD, with the
biases frozen by an optax mask, as the article never updates them), and the
script prints each quantity under the article's name with jbp's value and the
article's, to the digits the article prints.

Where the article slipped, the corrected figure is used and the row says so:
``∂E/∂out_h1`` is 0.036350306 (printed 0.36350306), the error after one update
is 0.291027774 (printed 0.291027924: the article's script used the updated
output weights for the hidden deltas), and after 10,000 updates 3.51018778e-05
(printed 0.0000351085, the figure after 9,999). The article prints only two
of the eight gradients; the other six are read back from the updated weights
it prints, ``∂E/∂w = (w - w⁺) / η``, and the row says so.

Everything is computed in float64 (the article's figures have 9 to 10
digits), inside ``jax.enable_x64``. Run it as ``jbp mazur`` or ``python
experiments/mazur.py``; the exit status is 1 if any figure disagrees.
"""

import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jbp.activations import sigmoid
from jbp.batch import cost, loss_and_grads
from jbp.explain import explain
from jbp.losses import squared_error
from jbp.network import Dense, backward, forward, mlp

LEARNING_RATE = 0.5
UPDATES = 10_000

NET = mlp([2, 2, 2], hidden=sigmoid, output=sigmoid)
# Rows are the neuron fed: net_h1 = w1 i1 + w2 i2 + b1, net_o1 = w5 out_h1 + w6 out_h2 + b2, ...
W1 = [[0.15, 0.20], [0.25, 0.30]]
W2 = [[0.40, 0.45], [0.50, 0.55]]
B1, B2 = 0.35, 0.60
INPUTS = [0.05, 0.10]  # i1, i2
TARGETS = [0.01, 0.99]  # target_o1, target_o2
WEIGHTS = {  # the article's w1..w8 as (layer, row, column)
    "w1": (0, 0, 0), "w2": (0, 0, 1), "w3": (0, 1, 0), "w4": (0, 1, 1),
    "w5": (1, 0, 0), "w6": (1, 0, 1), "w7": (1, 1, 0), "w8": (1, 1, 1),
}

# The figures as the article prints them (strings, so that their digits are
# the precision), with a note where the figure is not the printed one.
ARTICLE = {
    "net_h1": ("0.3775", ""),
    "out_h1": ("0.593269992", ""),
    "net_h2": ("0.3925", ""),
    "out_h2": ("0.596884378", ""),
    "net_o1": ("1.105905967", ""),
    "out_o1": ("0.75136507", ""),
    "net_o2": ("1.2249214039", "from the rounded out_h1, out_h2: ±5e-10"),
    "out_o2": ("0.772928465", ""),
    "E_o1": ("0.274811083", ""),
    "E_o2": ("0.023560026", ""),
    "E_total": ("0.298371109", ""),
    "∂E/∂out_o1": ("0.74136507", ""),
    "∂out_o1/∂net_o1": ("0.186815602", ""),
    "δ_o1 = ∂E/∂net_o1": ("0.138498562", ""),
    "δ_o2 = ∂E/∂net_o2": ("-0.0380982365", "not in the article; from the notes' README"),
    "∂E/∂w5": ("0.082167041", ""),
    **{f"∂E/∂{w}": (None, f"({w} - {w}⁺)/η") for w in ("w6", "w7", "w8")},
    "w5⁺": ("0.35891648", ""),
    "w6⁺": ("0.408666186", ""),
    "w7⁺": ("0.511301270", ""),
    "w8⁺": ("0.561370121", ""),
    "∂E_o1/∂out_h1": ("0.055399425", ""),
    "∂E_o2/∂out_h1": ("-0.019049119", ""),
    "∂E/∂out_h1": ("0.036350306", "printed 0.36350306, a slip"),
    "∂out_h1/∂net_h1": ("0.241300709", ""),
    "δ_h1 = ∂E/∂net_h1": ("0.00877135469", "not in the article; from the notes' README"),
    "δ_h2 = ∂E/∂net_h2": ("0.00995425471", "not in the article; from the notes' README"),
    "∂E/∂w1": ("0.000438568", ""),
    **{f"∂E/∂{w}": (None, f"({w} - {w}⁺)/η") for w in ("w2", "w3", "w4")},
    "w1⁺": ("0.149780716", ""),
    "w2⁺": ("0.19956143", ""),
    "w3⁺": ("0.24975114", ""),
    "w4⁺": ("0.29950229", ""),
    "E_total after 1 update": ("0.291027774", "printed 0.291027924, see the docstring"),
    f"E_total after {UPDATES:,} updates": ("3.51018778e-05", "printed 0.0000351085, see the docstring"),
}


def _read_back_gradients() -> None:
    """Fills in the gradients the article does not print from the updated
    weights it does: ``∂E/∂w = (w - w⁺)/η``, to the weight's digits."""
    for w, (layer, row, col) in WEIGHTS.items():
        printed, note = ARTICLE[f"∂E/∂{w}"]
        if printed is None:
            w_plus = ARTICLE[f"{w}⁺"][0]
            digits = len(w_plus.partition(".")[2])
            w_before = (W1, W2)[layer][row][col]
            ARTICLE[f"∂E/∂{w}"] = (f"{(w_before - float(w_plus)) / LEARNING_RATE:.{digits}f}", note)


_read_back_gradients()


class Row(NamedTuple):
    name: str
    jbp: float
    article: str
    note: str

    @property
    def tolerance(self) -> float:
        """One unit in the last printed digit: the article rounds each figure
        and computes the next ones from the rounded figures, so its last digit
        can be off by one. A gradient read back from a weight, ``(w - w⁺)/η``,
        carries the weight's unit divided by η. ``net_o2`` is printed with ten
        decimals but computed from the nine-decimal ``out_h1`` and ``out_h2``:
        (0.5 + 0.55) · 0.5e-9 ≈ 5e-10."""
        if self.name == "net_o2":
            return 5.25e-10
        mantissa, _, exponent = self.article.partition("e")
        digits = len(mantissa.partition(".")[2])
        unit = 10.0 ** (-digits + int(exponent or 0))
        return (unit / LEARNING_RATE if self.note.endswith("/η") else unit) + 1e-15

    @property
    def agrees(self) -> bool:
        return abs(self.jbp - float(self.article)) <= self.tolerance


def problem():
    """The article's parameters, input and target as float64 arrays (call inside ``jax.enable_x64``)."""
    params = (
        Dense(W=jnp.array(W1, jnp.float64), b=jnp.full(2, B1, jnp.float64)),
        Dense(W=jnp.array(W2, jnp.float64), b=jnp.full(2, B2, jnp.float64)),
    )
    return params, jnp.array(INPUTS, jnp.float64), jnp.array(TARGETS, jnp.float64)


def optimizer() -> optax.GradientTransformation:
    """Plain SGD on the weights; the biases frozen by a mask, as in the article."""
    biases = (Dense(W=False, b=True), Dense(W=False, b=True))
    return optax.chain(optax.sgd(LEARNING_RATE), optax.masked(optax.set_to_zero(), biases))


def train(params, x, y, steps: int):
    """``steps`` full-batch updates of the single sample, in one compiled scan."""
    opt = optimizer()

    def step(carry, _):
        params, state = carry
        _, grads = loss_and_grads(NET, params, x[None], y[None], squared_error)
        updates, state = opt.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), length=steps)
    return params


def walkthrough() -> list[Row]:
    """Every quantity of the article, computed with jbp's public API in float64."""
    with jax.enable_x64(True):
        return _walkthrough()


def _walkthrough() -> list[Row]:
    params, X, Y = problem()
    trace = forward(NET, params, X)
    grads, (delta_h, delta_o) = backward(NET, params, trace, Y, squared_error)
    (net_h, net_o), (_, out_h, out_o) = trace.zs, trace.activations
    W_o = params[1].W

    dE_dout_o = squared_error.grad(out_o, Y)  # ∇_a C
    dout_dnet_o = sigmoid.backward(net_o, out_o, jnp.ones(2))  # σ'(z^L)
    dout_dnet_h = sigmoid.backward(net_h, out_h, jnp.ones(2))
    dE_dout_h1_parts = W_o[:, 0] * delta_o  # the two terms of (W^2)^T δ^2 for h1
    stepped = train(params, X, Y, 1)

    values = {
        "net_h1": net_h[0], "out_h1": out_h[0], "net_h2": net_h[1], "out_h2": out_h[1],
        "net_o1": net_o[0], "out_o1": out_o[0], "net_o2": net_o[1], "out_o2": out_o[1],
        "E_o1": squared_error.fn(out_o[0], Y[0]),
        "E_o2": squared_error.fn(out_o[1], Y[1]),
        "E_total": cost(NET, params, X[None], Y[None], squared_error),
        "∂E/∂out_o1": dE_dout_o[0],
        "∂out_o1/∂net_o1": dout_dnet_o[0],
        "δ_o1 = ∂E/∂net_o1": delta_o[0],
        "δ_o2 = ∂E/∂net_o2": delta_o[1],
        "∂E_o1/∂out_h1": dE_dout_h1_parts[0],
        "∂E_o2/∂out_h1": dE_dout_h1_parts[1],
        "∂E/∂out_h1": (W_o.T @ delta_o)[0],
        "∂out_h1/∂net_h1": dout_dnet_h[0],
        "δ_h1 = ∂E/∂net_h1": delta_h[0],
        "δ_h2 = ∂E/∂net_h2": delta_h[1],
        "E_total after 1 update": cost(NET, stepped, X[None], Y[None], squared_error),
        f"E_total after {UPDATES:,} updates": cost(
            NET, train(params, X, Y, UPDATES), X[None], Y[None], squared_error
        ),
    }
    for w, (layer, row, col) in WEIGHTS.items():
        values[f"∂E/∂{w}"] = grads[layer].W[row, col]
        values[f"{w}⁺"] = stepped[layer].W[row, col]
    frozen = all(bool(jnp.all(new.b == old.b)) for new, old in zip(stepped, params))
    assert frozen, "the mask should have kept the biases"
    return [Row(name, float(values[name]), article, note) for name, (article, note) in ARTICLE.items()]


def main() -> int:
    print(f"Mazur's 2-2-2 example: sigmoid layers, squared error, float64, η = {LEARNING_RATE}, "
          "biases frozen\n")
    with jax.enable_x64(True):
        explain(NET, *problem(), squared_error, learning_rate=LEARNING_RATE, update_biases=False)
    rows = walkthrough()
    width = max(len(row.name) for row in rows)
    print("\nAgainst the article\n")
    print(f"{'quantity':<{width}}  {'jbp':>18}  {'article':>15}  ok")
    for row in rows:
        mark = "✓" if row.agrees else "✗"
        note = f"  {row.note}" if row.note else ""
        print(f"{row.name:<{width}}  {row.jbp:>18.12g}  {row.article:>15}  {mark}{note}")
    failed = [row.name for row in rows if not row.agrees]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} figures agree with the article "
          "to one unit in the last digit it prints.")
    if failed:
        print("disagree: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
