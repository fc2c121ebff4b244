"""The worked example as one self-contained HTML page, for the projector and for print.

:func:`render` draws the network (an inline SVG: each neuron with its ``z``,
``a`` and ``δ``, each edge with its weight, then its gradient, then its
updated value) beside the steps of :class:`~jbp.explain.example.Example`:
the sample, the forward pass layer by layer, the cost, BP1, BP2 per layer,
BP3 and BP4 per layer, the update. Each step names its equation (MathML),
shows its numbers neuron by neuron with the arithmetic for small layers, and
names the lines of jbp that computed them.

The page fetches nothing: its style, its script and its drawing are inline,
and it holds no address of any kind. Every number is in the document as
loaded; the steps not reached yet are only hidden by a class, so a search in
the page or a screen reader finds them, and without a script (or in print)
every step shows. Previous and Next buttons, the arrow keys, Page Up and Page
Down (a presenter's remote), Home and End move between steps; ``#step-N`` in
the address opens step N.
"""

import html
import math
import os
import pathlib
from typing import NamedTuple

import numpy as np

from jbp.explain.example import Example, Quantity, Step
from jbp.files import atomic_write

MAX_PARAMETERS = 30_000
"""The largest network a page shows (each weight appears three times, with its gradient and update)."""
MAX_DRAWN = 16
"""The widest layer the drawing takes; a wider network gets its numbers in tables only."""
MAX_EDGE_LABELS = 6
"""Edges get their numbers written on them where two layers are joined by at most this many edges."""
MAX_TERMS = 6
"""The arithmetic of a sum (``z_j = Σ_k W_jk a_k + b_j``) is written out up to this many terms."""
MAX_WORKED_CELLS = 12
"""The arithmetic of a matrix's cells is written out up to this many cells."""


def number(value) -> str:
    """A number as the page shows it: nine decimals, as Mazur's article prints its figures.

    Short numbers keep their short form (``0.05``, ``0.3775``); below ``1e-4``
    and from ``1e5`` on, nine significant digits in exponent form.

    Example:
      >>> [number(v) for v in (0.7513650695523157, 0.05, 0.3775, 0.08216704056423078, -3.2e-06, 0.0)]
      ['0.751365070', '0.05', '0.3775', '0.082167041', '-3.2e-06', '0']
    """
    v = float(value)
    if not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    if 1e-4 <= abs(v) < 1e5:
        text = f"{v:.9f}"
        if text.endswith("00000"):
            text = text.rstrip("0").rstrip(".")
        return text
    return f"{v:.9g}"


def _term(value) -> str:
    """A number inside written-out arithmetic: negative ones in parentheses."""
    text = number(value)
    return f"({text})" if text.startswith("-") else text


def _esc(text: str) -> str:
    """Escaped for HTML; any ``scheme://`` in text that came from code is broken up, so the page
    holds no address at all."""
    return html.escape(str(text)).replace("://", ":/\u200b/")


def _rich(text: str) -> str:
    """Plain-text notation as HTML: ``W^{l+1}`` and ``z^1`` as superscripts, ``∇_a``, ``C_k`` as subscripts."""
    out, i, text = [], 0, str(text)
    while i < len(text):
        c = text[i]
        word = c == "_" and i >= 2 and text[i - 1].isalpha() and text[i - 2].isalpha()  # squared_error
        if c in "^_" and i + 1 < len(text) and not word:
            tag = "sup" if c == "^" else "sub"
            if text[i + 1] == "{":
                end = text.find("}", i + 2)
                end = len(text) if end < 0 else end
                out.append(f"<{tag}>{_esc(text[i + 2:end])}</{tag}>")
                i = end + 1
                continue
            j = i + 1
            while j < len(text) and (text[j].isalnum()):
                j += 1
            if j > i + 1:
                out.append(f"<{tag}>{_esc(text[i + 1:j])}</{tag}>")
                i = j
                continue
        out.append(_esc(c))
        i += 1
    return "".join(out)


def _num(value) -> str:
    """A number in the page, with every digit in its tooltip."""
    v = float(value)
    return f'<span class="num" title="{_esc(repr(v))}">{_esc(number(v))}</span>'


# --- equations as MathML (MathML Core: every current browser draws it)


def _mi(name: str) -> str:
    return f"<mi>{_esc(name)}</mi>"


def _mo(op: str) -> str:
    return f"<mo>{_esc(op)}</mo>"


def _index(index) -> str:
    if isinstance(index, int):
        return f"<mn>{index}</mn>"
    return f"<mrow>{''.join(_mo(c) if c in '+-' else (f'<mn>{c}</mn>' if c.isdigit() else _mi(c)) for c in index)}</mrow>"


TIMES = "<mo>\u2062</mo>"  # invisible times: W a is a product


def _v(name: str, index) -> str:
    return f"<msup>{_mi(name)}{_index(index)}</msup>"


def _transposed(inner: str) -> str:
    return f"<msup><mrow>{_mo('(')}{inner}{_mo(')')}</mrow>{_mi('T')}</msup>"


def _partial(by: str) -> str:
    return f"<mfrac><mrow>{_mo('∂')}{_mi('C')}</mrow><mrow>{_mo('∂')}{by}</mrow></mfrac>"


def _math(*rows: str) -> str:
    body = "".join(f"<mrow>{row}</mrow>" + (_mo(",") + "<mspace width='1em'></mspace>" if i < len(rows) - 1 else "")
                   for i, row in enumerate(rows))
    return f'<math display="block">{body}</math>'


def _sigma_prime(index) -> str:
    return f"<msup>{_mi('σ')}{_mo('′')}</msup>{_mo('(')}{_v('z', index)}{_mo(')')}"


LOSS_MATH = {
    "squared_error": f"{_mi('C')}{_mo('=')}<mfrac><mn>1</mn><mn>2</mn></mfrac><munder>{_mo('∑')}{_mi('k')}</munder>"
                     f"<msup><mrow>{_mo('(')}<msub>{_mi('y')}{_mi('k')}</msub>{_mo('−')}<msub>{_mi('a')}{_mi('k')}"
                     f"</msub>{_mo(')')}</mrow><mn>2</mn></msup>",
    "binary_cross_entropy": f"{_mi('C')}{_mo('=')}{_mo('−')}<munder>{_mo('∑')}{_mi('k')}</munder>{_mo('[')}"
                            f"<msub>{_mi('y')}{_mi('k')}</msub>{_mi('log')}<msub>{_mi('a')}{_mi('k')}</msub>{_mo('+')}"
                            f"{_mo('(')}<mn>1</mn>{_mo('−')}<msub>{_mi('y')}{_mi('k')}</msub>{_mo(')')}{_mi('log')}"
                            f"{_mo('(')}<mn>1</mn>{_mo('−')}<msub>{_mi('a')}{_mi('k')}</msub>{_mo(')')}{_mo(']')}",
    "softmax_cross_entropy": f"{_mi('C')}{_mo('=')}{_mo('−')}<munder>{_mo('∑')}{_mi('k')}</munder>"
                             f"<msub>{_mi('y')}{_mi('k')}</msub>{_mi('log')}<msub>{_mi('a')}{_mi('k')}</msub>",
}


def law(step: Step, example: Example) -> str:
    """The step's equation as MathML, with its layer's numbers in the indices."""
    l, L = step.layer, example.net.depth
    if step.kind == "start":
        return _math(f"{_v('a', 0)}{_mo('=')}{_mi('x')}")
    if step.kind == "forward":
        return _math(f"{_v('z', l)}{_mo('=')}{_v('W', l)}{TIMES}{_v('a', l - 1)}{_mo('+')}{_v('b', l)}",
                     f"{_v('a', l)}{_mo('=')}{_mi('σ')}{_mo('(')}{_v('z', l)}{_mo(')')}")
    if step.kind == "cost":
        fallback = (f"{_mi('C')}{_mo('=')}{_mi(example.loss.name)}{_mo('(')}{_v('a', L)}{_mo(',')}{_mi('y')}"
                    f"{_mo(')')}")
        return _math(LOSS_MATH.get(example.loss.name, fallback))
    if step.kind == "BP1":
        row = (f"{_v('δ', L)}{_mo('=')}<msub>{_mo('∇')}{_mi('a')}</msub>{_mi('C')}{_mo('⊙')}{_sigma_prime(L)}")
        if example.net.activations[-1] == example.loss.canonical:
            row += f"{_mo('=')}{_v('a', L)}{_mo('−')}{_mi('y')}"
        return _math(row)
    if step.kind == "BP2":
        carried = _transposed(_v("W", l + 1)) + _mo("⁢") + _v("δ", l + 1)
        return _math(f"{_v('δ', l)}{_mo('=')}{_mo('(')}{carried}{_mo(')')}{_mo('⊙')}{_sigma_prime(l)}")
    if step.kind == "BP3/BP4":
        return _math(f"{_partial(_v('b', l))}{_mo('=')}{_v('δ', l)}",
                     f"{_partial(_v('W', l))}{_mo('=')}{_v('δ', l)}{TIMES}{_transposed(_v('a', l - 1))}")
    if step.kind == "update":
        rows = [f"{_v('W', l)}{_mo('←')}{_v('W', l)}{_mo('−')}{_mi('η')}{_partial(_v('W', l))}"]
        if example.update_biases:
            rows.append(f"{_v('b', l)}{_mo('←')}{_v('b', l)}{_mo('−')}{_mi('η')}{_partial(_v('b', l))}")
        return _math(*rows)
    return f"<p>{_rich(step.law)}</p>"


LAW_NAMES = {"start": "the input", "forward": "forward pass", "cost": "the cost", "BP1": "BP1",
             "BP2": "BP2", "BP3/BP4": "BP3 and BP4", "update": "gradient descent"}


# --- the neurons' names, as in the drawing


def neuron_name(example: Example, layer: int, j: int) -> str:
    """``x1`` for inputs, ``o1`` for outputs, ``h1`` for hidden neurons (counted from 1), and
    ``h2.1`` for neuron 1 of hidden layer 2 where there are several."""
    L = example.net.depth
    if layer == 0:
        return f"x{j + 1}"
    if layer == L:
        return f"o{j + 1}"
    return f"h{j + 1}" if L == 2 else f"h{layer}.{j + 1}"


# --- the arithmetic written out


def _quantity(step: Step, role: str) -> "Quantity | None":
    return next((q for q in step.quantities if q.role == role), None)


def work(example: Example, step: Step, q: Quantity) -> "list | None":
    """The arithmetic behind each entry of ``q``, as text (``None`` where it is not written out).

    A list of strings for a vector, a list of lists for a matrix. Written from
    the example's own numbers; the result shown after it is jbp's.
    """
    e, l = example.explanation, q.layer
    n = np.ndim(q.value)
    if n == 2 and np.size(q.value) > MAX_WORKED_CELLS:
        return None
    if q.role == "z" and example.net.sizes[l - 1] <= MAX_TERMS:
        W, b, a_prev = example.params[l - 1].W, example.params[l - 1].b, e.activations[l - 1]
        return [" + ".join([f"{_term(W[j, k])} × {_term(a_prev[k])}" for k in range(W.shape[1])] + [_term(b[j])])
                for j in range(W.shape[0])]
    if q.role == "a":
        name = example.net.activations[l - 1].name
        return [f"{name}({number(z)})" for z in e.zs[l - 1]]
    if q.role == "delta" and step.kind == "BP1":
        if example.net.activations[-1] == example.loss.canonical:
            return [f"{number(a)} - {_term(y)}" for a, y in zip(e.activations[-1], example.y)]
        grad_a, sp = _quantity(step, "grad_a"), _quantity(step, "sigma_prime")
        if grad_a is not None and sp is not None:
            return [f"{number(g)} × {_term(s)}" for g, s in zip(grad_a.value, sp.value)]
        return None
    if q.role == "carried" and example.net.sizes[l + 1] <= MAX_TERMS:
        W, delta = example.params[l].W, e.deltas[l]
        rows = []
        for j in range(W.shape[1]):
            products = " + ".join(f"{_term(W[k, j])} × {_term(delta[k])}" for k in range(W.shape[0]))
            terms = " + ".join(_term(W[k, j] * delta[k]) for k in range(W.shape[0]))
            rows.append(products if W.shape[0] == 1 else f"{products} = {terms}")
        return rows
    if q.role == "delta" and step.kind == "BP2":
        carried, sp = _quantity(step, "carried"), _quantity(step, "sigma_prime")
        if sp is not None:
            return [f"{number(c)} × {_term(s)}" for c, s in zip(carried.value, sp.value)]
        return None
    if q.role == "grad_W":
        delta, a_prev = e.deltas[l - 1], e.activations[l - 1]
        return [[f"{number(d)} × {_term(a)}" for a in a_prev] for d in delta]
    if q.role in ("W_new", "b_new"):
        eta = number(example.learning_rate)
        old, grad = ((example.params[l - 1].W, e.grads[l - 1].W) if q.role == "W_new"
                     else (example.params[l - 1].b, e.grads[l - 1].b))
        if old.ndim == 1:
            return [f"{number(w)} - {eta} × {_term(g)}" for w, g in zip(old, grad)]
        return [[f"{number(w)} - {eta} × {_term(g)}" for w, g in zip(wr, gr)] for wr, gr in zip(old, grad)]
    return None


# --- the step's numbers as tables


def _cell(value, worked: "str | None") -> str:
    if worked is None:
        return f"<td>{_num(value)}</td>"
    return f'<td><span class="work">{_esc(worked)} =</span> {_num(value)}</td>'


def heading(q: Quantity) -> str:
    """A column's heading: the equation without its BP label and remark, or the symbol when that is long."""
    text = q.equation.split("  (")[0]
    for label in ("BP1  ", "BP2  ", "BP3  ", "BP4  "):
        text = text.removeprefix(label)
    return text if len(text) <= 28 else q.symbol


def _vector_table(example: Example, step: Step, group: list) -> str:
    layer = group[0].layer
    what = "input" if layer == 0 else ("output" if layer == example.net.depth else f"hidden layer {layer}")
    head = "".join(f'<th scope="col">{_rich(heading(q))}</th>' for q in group)
    works = [work(example, step, q) for q in group]
    rows = []
    for j in range(len(group[0].value)):
        cells = "".join(_cell(q.value[j], None if w is None else w[j]) for q, w in zip(group, works))
        rows.append(f'<tr><th scope="row">{neuron_name(example, layer, j)}</th>{cells}</tr>')
    return (f'<table class="values"><caption>{_esc(what)}</caption>'
            f'<thead><tr><th scope="col">neuron</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _matrix_table(example: Example, step: Step, q: Quantity, bias: "Quantity | None" = None) -> str:
    """One row per neuron ``j`` of layer ``l``, one column per neuron ``k`` of layer ``l-1``; the
    biases (or their gradients, or their updates) as a last column."""
    l, value = q.layer, q.value
    worked = work(example, step, q)
    bias_work = None if bias is None else work(example, step, bias)
    head = "".join(f'<th scope="col">from {neuron_name(example, l - 1, k)}</th>' for k in range(value.shape[1]))
    if bias is not None:
        head += f'<th scope="col" class="bias">{_rich(bias.symbol)}</th>'
    rows = []
    for j in range(value.shape[0]):
        cells = "".join(_cell(value[j, k], None if worked is None else worked[j][k]) for k in range(value.shape[1]))
        if bias is not None:
            cells += _cell(bias.value[j], None if bias_work is None else bias_work[j])
        rows.append(f'<tr><th scope="row">to {neuron_name(example, l, j)}</th>{cells}</tr>')
    caption = _rich(q.equation) + ("" if bias is None else f"; {_rich(bias.equation)}")
    return (f'<table class="values matrix"><caption>{caption}</caption>'
            f'<thead><tr><td></td>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')


BIASES = {"W": "b", "grad_W": "grad_b", "W_new": "b_new"}
"""A matrix's role → the role of the vector shown as its last column."""


def _values(example: Example, step: Step) -> str:
    parts, group = [], []
    biases = {}
    for q in step.quantities:
        if q.role in BIASES:
            biases[q.symbol] = next((b for b in step.quantities if b.role == BIASES[q.role] and b.layer == q.layer),
                                    None)
    shown_with_matrix = {b.symbol for b in biases.values() if b is not None}

    def flush():
        if group:
            parts.append(_vector_table(example, step, list(group)))
            group.clear()

    for q in step.quantities:
        if q.symbol in shown_with_matrix:
            continue
        if np.ndim(q.value) == 1:
            if group and (group[0].layer != q.layer or len(group[0].value) != len(q.value)):
                flush()
            group.append(q)
            continue
        flush()
        if np.ndim(q.value) == 0:
            terms = _quantity(step, "cost_terms") if q.role == "cost" else None
            worked = "" if terms is None else f'<span class="work">{" + ".join(_term(t) for t in terms.value)} =</span> '
            parts.append(f'<p class="scalar">{_rich(q.equation)} = {worked}{_num(q.value)}</p>')
        else:
            parts.append(_matrix_table(example, step, q, biases.get(q.symbol)))
    flush()
    return "".join(parts)


def _sources(step: Step) -> str:
    if not step.sources:
        return ""
    items = "".join(
        f'<li><code class="where">{_esc(s)}</code> <span class="fn">{_esc(s.function)}</span>'
        f'<code class="line">{_esc(s.code)}</code></li>'
        for s in step.sources
    )
    return f'<div class="sources"><p>Computed by</p><ul>{items}</ul></div>'


FOCUS = {
    "start": lambda l, L: "n0",
    "forward": lambda l, L: f"e{l} n{l}",
    "cost": lambda l, L: f"n{L}",
    "BP1": lambda l, L: f"n{L}",
    "BP2": lambda l, L: f"e{l + 1} n{l}",
    "BP3/BP4": lambda l, L: f"e{l} n{l}",
    "update": lambda l, L: f"e{l}",
}


def _step(i: int, step: Step, example: Example) -> str:
    n = len(example.steps)
    state = "current" if i == 0 else "future"
    focus = FOCUS[step.kind](step.layer, example.net.depth)
    note = f'<p class="note">{_rich(step.note)}</p>' if step.note else ""
    return (
        f'<section class="step {state}" id="step-{i + 1}" data-title="{_esc(step.title)}" data-focus="{focus}" '
        f'aria-labelledby="step-{i + 1}-title">'
        f'<h2 id="step-{i + 1}-title"><span class="count">{i + 1}/{n}</span> {_esc(step.title)}</h2>'
        f'<div class="law"><span class="law-name">{_esc(LAW_NAMES[step.kind])}</span>{law(step, example)}</div>'
        f"{note}{_values(example, step)}{_sources(step)}</section>"
    )


# --- the drawing


def _timed(from_step: int, until: "int | None" = None) -> tuple[str, str]:
    """The attributes of an element shown from one step (until another): hidden by a class before."""
    classes = " future" if from_step > 0 else ""
    if until is not None and until <= 0:
        classes += " superseded"
    attrs = f' data-from="{from_step}"' + ("" if until is None else f' data-until="{until}"')
    return classes, attrs


def _text(x: float, y: float, content: str, cls: str, from_step: int, until: "int | None" = None,
          anchor: str = "middle", transform: str = "") -> str:
    classes, attrs = _timed(from_step, until)
    where = f'transform="{transform}" x="0" y="{y:.1f}"' if transform else f'x="{x:.1f}" y="{y:.1f}"'
    return f'<text class="{cls}{classes}"{attrs} {where} text-anchor="{anchor}">{content}</text>'


_DX, _DY, _RADIUS, _LEFT, _TOP = 300.0, 150.0, 28.0, 90.0, 80.0
"""The drawing's layout: the distance between layers and between neurons, a neuron's radius, and the
margins left and above."""


class _Moments(NamedTuple):
    """The steps from which the drawing shows each layer's numbers (``None`` where none does), by layer
    ``l`` (index 0 unused): its ``z`` and ``a``, its ``δ``, its gradients, its update; and the cost's."""

    forward: list
    delta: list
    gradients: list
    update: list
    cost: "int | None"


def _moments(example: Example) -> _Moments:
    L = example.net.depth
    return _Moments(
        forward=[None] + [example.step_index("forward", l) for l in range(1, L + 1)],
        delta=[None] + [example.step_index("BP2", l) for l in range(1, L)] + [example.step_index("BP1")],
        gradients=[None] + [example.step_index("BP3/BP4", l) for l in range(1, L + 1)],
        update=[None] + [example.step_index("update", l) for l in range(1, L + 1)],
        cost=example.step_index("cost"),
    )


def _at(sizes, l: int, j: int) -> tuple[float, float]:
    """Where neuron ``j`` of layer ``l`` is drawn: the layers side by side, each centred vertically."""
    return _LEFT + l * _DX, _TOP + ((max(sizes) - sizes[l]) / 2 + j + 0.5) * _DY


def _layer_names(example: Example) -> list[str]:
    """Each layer's name and activation, above it."""
    sizes, L = example.net.sizes, example.net.depth
    parts = []
    for l, n in enumerate(sizes):
        x, _ = _at(sizes, l, 0)
        name = "input" if l == 0 else (f"output · {example.net.activations[-1].name}" if l == L
                                       else f"layer {l} · {example.net.activations[l - 1].name}")
        parts.append(f'<text class="layer-name" x="{x:.1f}" y="32" text-anchor="middle">{_esc(name)}</text>')
    return parts


def _edges(example: Example, moments: _Moments) -> list[str]:
    """Every edge, from neuron ``k`` of layer ``l-1`` to neuron ``j`` of layer ``l``: a line, its
    gradient's line (coloured by sign, as wide as its size) and, between small layers, its numbers."""
    sizes, e = example.net.sizes, example.explanation
    grad_max = max(float(np.max(np.abs(g.W))) for g in e.grads) or 1.0
    parts = []
    for l in range(1, example.net.depth + 1):
        G = e.grads[l - 1].W
        labelled = sizes[l - 1] * sizes[l] <= MAX_EDGE_LABELS
        for j in range(sizes[l]):
            for k in range(sizes[l - 1]):
                (x0, y0), (x1, y1) = _at(sizes, l - 1, k), _at(sizes, l, j)
                length = math.hypot(x1 - x0, y1 - y0)
                ux, uy = (x1 - x0) / length, (y1 - y0) / length
                ends = (x0 + _RADIUS * ux, y0 + _RADIUS * uy, x1 - _RADIUS * ux, y1 - _RADIUS * uy)
                line = 'x1="{:.1f}" y1="{:.1f}" x2="{:.1f}" y2="{:.1f}"'.format(*ends)
                name = f"{neuron_name(example, l - 1, k)} → {neuron_name(example, l, j)}"
                parts.append(f'<line class="edge e{l}" {line}><title>{_esc(name)}</title></line>')
                g = float(G[j, k])
                classes, attrs = _timed(moments.gradients[l])
                sign = "positive" if g >= 0 else "negative"
                parts.append(f'<line class="gradient-edge e{l} {sign}{classes}"{attrs} {line} '
                             f'stroke-width="{1 + 6 * abs(g) / grad_max:.2f}"><title>{_esc(name)}: ∂C/∂w = '
                             f'{_esc(number(g))}</title></line>')
                if labelled:
                    parts += _edge_labels(example, moments, l, j, k, ends)
    return parts


def _edge_labels(example: Example, moments: _Moments, l: int, j: int, k: int, ends: tuple) -> list[str]:
    """An edge's weight, then its gradient, then its updated weight, written along it."""
    sizes, e = example.net.sizes, example.explanation
    sx, sy, ex, ey = ends
    # Along the edge, near the source for the first target and near the target for the last, so
    # that the labels clear the crossings; under the line for a level edge in the lower half.
    t = 0.35 if sizes[l] == 1 else 0.27 + 0.46 * j / (sizes[l] - 1)
    px, py = sx + t * (ex - sx), sy + t * (ey - sy)
    angle = math.degrees(math.atan2(ey - sy, ex - sx))
    level = abs(ey - sy) < 1e-6
    offset = 19 if level and j >= sizes[l] / 2 else -7
    where = f"translate({px:.1f},{py:.1f}) rotate({angle:.1f})"
    bp34, update = moments.gradients[l], moments.update[l]
    parts = [_text(0, offset, f"w {_esc(number(example.params[l - 1].W[j, k]))}", "edge-label weight print-hide", 0,
                   bp34, transform=where),
             _text(0, offset, _esc(number(float(e.grads[l - 1].W[j, k]))), "edge-label grad", bp34, update,
                   transform=where)]
    if update is not None:
        parts.append(_text(0, offset, f"w⁺ {_esc(number(e.updated[l - 1].W[j, k]))}",
                           "edge-label updated print-hide", update, transform=where))
    return parts


def _neuron(example: Example, moments: _Moments, l: int, j: int) -> list[str]:
    """Neuron ``j`` of layer ``l``: its circle and name, its bias above (then the updated bias), and
    below its input, or its ``z``, ``a`` and ``δ``; an output's target to its right."""
    e, r = example.explanation, _RADIUS
    x, y = _at(example.net.sizes, l, j)
    name = neuron_name(example, l, j)
    parts = [f'<circle class="neuron n{l}" cx="{x:.1f}" cy="{y:.1f}" r="{r:.0f}"><title>{name}</title>'
             f'</circle><text class="neuron-name" x="{x:.1f}" y="{y + 5:.1f}" '
             f'text-anchor="middle">{name}</text>']
    below = y + r + 17
    if l == 0:
        parts.append(_text(x, below, f"x {_esc(number(e.activations[0][j]))}", "value", 0))
        return parts
    layer, update, forward = example.params[l - 1], moments.update[l], moments.forward[l]
    biased_until = update if example.update_biases else None
    parts.append(_text(x, y - r - 8, f"b {_esc(number(layer.b[j]))}", "value bias", 0, biased_until))
    if example.update_biases and update is not None:
        parts.append(_text(x, y - r - 8, f"b⁺ {_esc(number(e.updated[l - 1].b[j]))}",
                           "value bias print-hide", update))
    parts.append(_text(x, below, f"z {_esc(number(e.zs[l - 1][j]))}", "value", forward))
    parts.append(_text(x, below + 16, f"a {_esc(number(e.activations[l][j]))}", "value", forward))
    parts.append(_text(x, below + 32, f"δ {_esc(number(e.deltas[l - 1][j]))}", "value delta", moments.delta[l]))
    if l == example.net.depth:
        parts.append(_text(x + r + 10, y + 5, f"y {_esc(number(example.y[j]))}", "value target", 0,
                           anchor="start"))
    return parts


def drawing(example: Example) -> str:
    """The network as an inline SVG, or a note when a layer is wider than :data:`MAX_DRAWN`."""
    sizes, L = example.net.sizes, example.net.depth
    if max(sizes) > MAX_DRAWN:
        return (f'<p class="too-wide">The network {"-".join(map(str, sizes))} is too wide to draw (a layer of '
                f"{max(sizes)} neurons; the drawing takes {MAX_DRAWN}): every number is in the steps' tables.</p>")
    width, height = _LEFT + L * _DX + 210, _TOP + max(sizes) * _DY + 40
    moments = _moments(example)
    parts = _layer_names(example) + _edges(example, moments)
    parts += [p for l, n in enumerate(sizes) for j in range(n) for p in _neuron(example, moments, l, j)]
    parts.append(_text(width - 12, height - 14, f"C {_esc(number(example.explanation.cost))}", "value cost",
                       moments.cost, anchor="end"))
    description = (f"The network {'-'.join(map(str, sizes))}: each neuron with its z, a and δ as the steps reach "
                   "them; each edge with its weight w, then its gradient ∂C/∂w (in red), then its updated value w⁺. "
                   "From BP4 on, an edge is blue where ∂C/∂w > 0 and orange where ∂C/∂w < 0, as wide as |∂C/∂w|.")
    return (f'<svg class="network" viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
            f'aria-labelledby="drawing-title drawing-description">'
            f'<title id="drawing-title">The network</title><desc id="drawing-description">{_esc(description)}</desc>'
            f'{"".join(parts)}</svg><p class="legend">{_esc(description)}</p>')


# --- the page

STYLE = """
:root { --ink: #1b1b1f; --paper: #ffffff; --muted: #5b5b66; --line: #b9bcc4; --accent: #b3261e;
        --positive: #1f66c2; --negative: #d95f02; --panel: #f4f5f8; --updated: #1b6e2a; }
@media (prefers-color-scheme: dark) {
  :root { --ink: #e8e8ec; --paper: #16161a; --muted: #a4a4b0; --line: #5a5d66; --accent: #ff8a80;
          --positive: #7fb2ff; --negative: #ffa25c; --panel: #22232a; --updated: #8fd694; }
}
* { box-sizing: border-box; }
html { color: var(--ink); background: var(--paper); }
body { margin: 0; font: 16px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
header, main, footer { max-width: 1500px; margin: 0 auto; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin: 1rem 0 .25rem; }
header p { margin: .25rem 0; color: var(--muted); }
main { display: grid; grid-template-columns: minmax(0, 1.4fr) minmax(0, 1fr); gap: 1.5rem; align-items: start; }
.figure { position: sticky; top: 0; padding-top: .5rem; }
.network { width: 100%; height: auto; max-height: calc(100vh - 5.5rem); display: block; }
.controls { display: flex; flex-wrap: wrap; gap: .5rem; align-items: center; padding: .5rem 0; }
.controls button { font: inherit; padding: .35rem .9rem; border: 1px solid var(--line); border-radius: .4rem;
                   background: var(--panel); color: var(--ink); cursor: pointer; }
.controls button:focus-visible { outline: 3px solid var(--accent); outline-offset: 2px; }
.controls button:disabled { opacity: .45; cursor: default; }
#status { font-weight: 600; margin: 0; }
.keys { color: var(--muted); font-size: .85rem; margin: 0; }
.step { border-left: 4px solid var(--line); padding: .25rem 0 .5rem 1rem; margin: 0 0 1rem; }
.step.current { border-left-color: var(--accent); }
.step.past { display: none; }
.step h2 { font-size: 1.15rem; margin: .25rem 0; }
.count { color: var(--muted); font-weight: 400; margin-right: .4rem; font-size: .9rem; }
.law { display: flex; align-items: center; gap: 1rem; flex-wrap: wrap; background: var(--panel);
       padding: .25rem .75rem; border-radius: .4rem; }
.law-name { font-weight: 700; white-space: nowrap; }
.law math { font-size: 1.2rem; margin: .2rem 0; }
.note { color: var(--muted); }
table.values { border-collapse: collapse; margin: .5rem 0; font-variant-numeric: tabular-nums; }
table.values caption { text-align: left; color: var(--muted); font-size: .9rem; white-space: nowrap; }
table.values th, table.values td { border: 1px solid var(--line); padding: .2rem .5rem; text-align: right;
                                   vertical-align: top; }
table.values thead th { font-weight: 600; }
table.values th[scope="row"] { white-space: nowrap; }
.num { font-family: ui-monospace, "SF Mono", Menlo, Consolas, monospace; white-space: nowrap; }
.work { display: block; color: var(--muted); font-size: .8rem; }
.scalar { font-size: 1.05rem; }
.scalar .work { display: inline; font-size: inherit; }
.sources p { margin: .25rem 0 0; color: var(--muted); font-size: .9rem; }
.sources ul { margin: .1rem 0; padding-left: 1.2rem; font-size: .9rem; }
.sources .fn { color: var(--muted); margin: 0 .4rem; }
.sources .line { display: block; white-space: pre-wrap; }
.too-wide { background: var(--panel); padding: 1rem; border-radius: .4rem; }
svg text { font: 15px ui-monospace, "SF Mono", Menlo, Consolas, monospace; fill: var(--ink);
           paint-order: stroke; stroke: var(--paper); stroke-width: 4px; stroke-linejoin: round; }
svg .layer-name { font: 600 17px system-ui, sans-serif; }
svg .neuron-name { font-weight: 700; stroke-width: 0; }
svg .neuron { fill: var(--panel); stroke: var(--ink); stroke-width: 2; }
svg .neuron.active { stroke: var(--accent); stroke-width: 5; }
svg .edge { stroke: var(--line); stroke-width: 1.5; }
svg .edge.active { stroke: var(--ink); stroke-width: 3; }
svg .gradient-edge { opacity: .55; }
svg .gradient-edge.positive { stroke: var(--positive); }
svg .gradient-edge.negative { stroke: var(--negative); }
svg .edge-label { font-size: 14px; }
svg .edge-label.grad, svg .delta { fill: var(--accent); }
svg .edge-label.updated { fill: var(--updated); font-weight: 700; }
svg .cost { font-size: 18px; font-weight: 700; }
.future, .superseded { display: none; }
.no-js .step.future, .no-js .step.past { display: block; }
.no-js svg .future, .no-js svg .superseded { display: inline; }
.no-js svg .print-hide, .no-js .controls { display: none; }
.show-all .step.future, .show-all .step.past { display: block; }
.legend { color: var(--muted); font-size: .85rem; margin: .25rem 0; }
.steps { min-width: 0; overflow-x: auto; }
main.single { grid-template-columns: 1fr; }
main.single .figure { position: static; }
@media (max-width: 980px) { main { grid-template-columns: 1fr; } .figure { position: static; } }
@media print {
  body { font-size: 11pt; }
  main { display: block; }
  .figure { position: static; }
  .network { max-height: none; }
  .controls { display: none; }
  .step, .step.future, .step.past { display: block; break-inside: avoid; border-left-color: #888; }
  svg .future, svg .superseded { display: inline; }
  svg .print-hide { display: none; }
  .sources .line { white-space: pre-wrap; }
}
"""

SCRIPT = """
(function () {
  "use strict";
  var root = document.documentElement;
  root.classList.remove("no-js");
  var steps = Array.prototype.slice.call(document.querySelectorAll("section.step"));
  var timed = Array.prototype.slice.call(document.querySelectorAll("[data-from]"));
  var prev = document.getElementById("prev"), next = document.getElementById("next");
  var all = document.getElementById("all"), status = document.getElementById("status");
  var current = 0;
  function show(i, scroll) {
    current = Math.max(0, Math.min(steps.length - 1, i));
    steps.forEach(function (s, k) {
      s.classList.toggle("future", k > current);
      s.classList.toggle("past", k < current);
      s.classList.toggle("current", k === current);
      if (k === current) { s.setAttribute("aria-current", "step"); } else { s.removeAttribute("aria-current"); }
    });
    timed.forEach(function (el) {
      var from = Number(el.getAttribute("data-from"));
      var until = el.hasAttribute("data-until") ? Number(el.getAttribute("data-until")) : Infinity;
      el.classList.toggle("future", current < from);
      el.classList.toggle("superseded", current >= until);
    });
    Array.prototype.forEach.call(document.querySelectorAll("svg .active"), function (el) {
      el.classList.remove("active");
    });
    (steps[current].getAttribute("data-focus") || "").split(" ").forEach(function (name) {
      if (!name) { return; }
      Array.prototype.forEach.call(document.querySelectorAll("svg .neuron." + name + ", svg .edge." + name),
        function (el) { el.classList.add("active"); });
    });
    prev.disabled = current === 0;
    next.disabled = current === steps.length - 1;
    status.textContent = "Step " + (current + 1) + " of " + steps.length + ": " +
      steps[current].getAttribute("data-title");
    root.setAttribute("data-step", String(current + 1));
    if (scroll) {
      try { history.replaceState(null, "", "#step-" + (current + 1)); } catch (err) { /* a sandboxed page */ }
      steps[current].scrollIntoView({block: "nearest"});
    }
  }
  prev.addEventListener("click", function () { show(current - 1, true); });
  next.addEventListener("click", function () { show(current + 1, true); });
  all.addEventListener("click", function () {
    var on = document.body.classList.toggle("show-all");
    all.setAttribute("aria-pressed", on ? "true" : "false");
  });
  var moves = {ArrowRight: 1, PageDown: 1, ArrowLeft: -1, PageUp: -1};
  document.addEventListener("keydown", function (event) {
    if (event.altKey || event.ctrlKey || event.metaKey || event.defaultPrevented) { return; }
    var tag = event.target && event.target.tagName;
    if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT") { return; }
    if (event.key in moves) { show(current + moves[event.key], true); }
    else if (event.key === "Home") { show(0, true); }
    else if (event.key === "End") { show(steps.length - 1, true); }
    else { return; }
    event.preventDefault();
  });
  var asked = /^#step-(\\d+)$/.exec(window.location.hash);
  show(asked ? Number(asked[1]) - 1 : 0, false);
}());
"""


def describe(example: Example) -> str:
    """One line naming the network, the loss, the learning rate and the dtype."""
    net = example.net
    hidden = ", ".join(a.name for a in net.activations[:-1]) or "none"
    eta = "" if example.learning_rate is None else f"; learning rate η = {number(example.learning_rate)}"
    frozen = "" if example.update_biases or example.learning_rate is None else " (biases kept)"
    return (f"Network {'-'.join(map(str, net.sizes))}, hidden activations: {hidden}, output: "
            f"{net.activations[-1].name}; loss {example.loss.name}{eta}{frozen}; computed in "
            f"{np.asarray(example.x).dtype}.")


def check_size(sizes) -> None:
    """Refuses a network of more than :data:`MAX_PARAMETERS` parameters, naming the count."""
    count = sum((n_in + 1) * n_out for n_in, n_out in zip(sizes[:-1], sizes[1:]))
    if count > MAX_PARAMETERS:
        raise ValueError(f"the network {'-'.join(map(str, sizes))} has {count:,} parameters; the page shows each "
                         f"with its gradient and update, for networks of at most {MAX_PARAMETERS:,} (the text "
                         "output takes any size)")


def check_destination(path: "str | os.PathLike") -> pathlib.Path:
    """Refuses a path that is a folder or whose folder does not exist, before any work."""
    path = pathlib.Path(path)
    if path.is_dir():
        raise ValueError(f"--html {path} is a folder; name the page's file, e.g. {path / 'explain.html'}")
    if not path.parent.is_dir():
        raise ValueError(f"--html {path}: no folder {path.parent} to write it in")
    return path


def render(example: Example) -> str:
    """The page, as one string of HTML.

    Raises:
      ValueError: for a network of more than :data:`MAX_PARAMETERS` parameters.

    Example:
      >>> import jax.numpy as jnp, jbp
      >>> from jbp.explain import worked_example
      >>> from jbp.explain.html import render
      >>> net = jbp.mlp([1, 1], hidden=(), output=jbp.sigmoid)
      >>> params = (jbp.Dense(W=jnp.array([[0.6]]), b=jnp.array([0.9])),)
      >>> page = render(worked_example(net, params, jnp.array([1.0]), jnp.array([0.0]), jbp.squared_error, 0.15))
      >>> page.startswith("<!DOCTYPE html>"), "http" in page, page.count('class="step ')
      (True, False, 6)
    """
    from jbp._version import __version__

    check_size(example.net.sizes)
    title = example.title or "One sample through the network"
    steps = "".join(_step(i, step, example) for i, step in enumerate(example.steps))
    n = len(example.steps)
    return f"""<!DOCTYPE html>
<html lang="en" class="no-js">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="jbp {_esc(__version__)} (jbp explain)">
<title>{_esc(title)}: backpropagation step by step</title>
<style>{STYLE}</style>
</head>
<body>
<header>
<h1>{_esc(title)}: backpropagation step by step</h1>
<p>{_esc(describe(example))}</p>
<p>Every number below was computed by jbp's own forward and backward passes; point at one to see all its
digits. Each step names its equation and the line of jbp that computed it.</p>
</header>
<main class="{'drawn' if max(example.net.sizes) <= MAX_DRAWN else 'single'}">
<div class="figure">
<nav class="controls" aria-label="Steps">
<button type="button" id="prev" aria-label="Previous step" aria-controls="steps" disabled>&#9664; Previous</button>
<button type="button" id="next" aria-label="Next step" aria-controls="steps">Next &#9654;</button>
<button type="button" id="all" aria-pressed="false">Show all steps</button>
<p id="status" role="status" aria-live="polite">Step 1 of {n}: {_esc(example.steps[0].title)}</p>
<p class="keys">Keys: &#8592; &#8594; (or Page Up, Page Down), Home, End.</p>
</nav>
{drawing(example)}
</div>
<div id="steps" class="steps">
{steps}
</div>
</main>
<footer><p class="keys">Written by jbp {_esc(__version__)} (<code>jbp explain --html</code>): one file, nothing
fetched. Printing shows every step.</p></footer>
<script>{SCRIPT}</script>
</body>
</html>
"""


def write(example: Example, path: "str | os.PathLike") -> pathlib.Path:
    """Writes :func:`render`'s page to ``path`` atomically (UTF-8); returns the path.

    Raises:
      ValueError: for a path whose folder does not exist, a folder, or a
        network too large for a page.
    """
    path = check_destination(path)
    page = render(example).encode("utf-8")
    atomic_write(path, lambda f: f.write(page), one_link=True)  # a page the user named: see jbp.files.check_replaceable
    return path

