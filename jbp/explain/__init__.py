"""A worked example for any small network: every number next to its equation.

The example is data first (:mod:`jbp.explain.example`): one sample's forward
pass and BP1–BP4, computed by jbp's own passes, kept layer by layer and
neuron by neuron as steps, each with its equation and the line of jbp that
computed it. Then its renderings: text for the terminal
(:mod:`jbp.explain.text`, :func:`explain`: Mazur's step-by-step table for any
network built with :func:`jbp.mlp`) and one self-contained HTML page that
draws the network and steps through the passes (:mod:`jbp.explain.html`).
On the command line: ``jbp explain`` (``--html FILE`` for the page).
"""

from jbp.explain.example import Example, Explanation, Quantity, Source, Step, worked_example
from jbp.explain.text import explain, render as render_text
from jbp.explain.html import render as render_html, write as write_html

__all__ = ["Example", "Explanation", "Quantity", "Source", "Step", "explain", "render_html", "render_text",
           "worked_example", "write_html"]
