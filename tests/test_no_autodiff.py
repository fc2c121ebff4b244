"""No JAX autodiff inside jbp/: the syntax tree of every file is walked, and
any autodiff name reached through the jax module (or an alias of it), or
imported from jax, fails the test. jbp's own fields called `grad` or
`backward` on its losses and activations are not JAX's and are not flagged."""

import ast
import pathlib
import textwrap

import pytest

PACKAGE = pathlib.Path(__file__).parents[1] / "jbp"
BANNED = {
    "grad", "value_and_grad", "vjp", "jvp", "jacfwd", "jacrev", "linearize",
    "custom_vjp", "custom_jvp", "hessian", "linear_transpose",
}


def _root(node):
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def autodiff_uses(source, filename="<string>"):
    tree = ast.parse(source, filename)
    jax_names, hits = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "jax":
                    jax_names.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "jax":
            for alias in node.names:
                if alias.name in BANNED:
                    hits.append(f"{filename}:{node.lineno} from {node.module} import {alias.name}")
                else:
                    jax_names.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in BANNED and _root(node.value) in jax_names:
            hits.append(f"{filename}:{node.lineno} {ast.unparse(node)}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "__import__", "eval", "exec"):
            if any(isinstance(arg, ast.Constant) and arg.value in BANNED for arg in node.args):
                hits.append(f"{filename}:{node.lineno} {ast.unparse(node)}")
    return hits


def test_package_uses_no_autodiff():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) >= 5, files
    hits = [hit for path in files for hit in autodiff_uses(path.read_text(), str(path))]
    assert not hits, "JAX autodiff inside jbp/:\n" + "\n".join(hits)


@pytest.mark.parametrize(
    "source",
    [
        "import jax\njax.grad(f)",
        "import jax as j\nj.value_and_grad(f)",
        "from jax import vjp",
        "from jax import numpy as jnp, jacrev",
        "import jax.numpy as jnp\nimport jax\njax.linearize(f, x)",
        "from jax import custom_vjp as cv",
        "import jax\n@jax.custom_jvp\ndef f(x): return x",
        "import jax\njax.experimental.jet.jvp",
        "import jax\ngetattr(jax, 'grad')",
    ],
)
def test_scan_catches_autodiff(source):
    assert autodiff_uses(textwrap.dedent(source))


@pytest.mark.parametrize(
    "source",
    ["loss.grad(a, y)", "act.backward(z, a, g)", "import jax\njax.jit(f)", "import jax\njax.nn.sigmoid(z)"],
)
def test_scan_passes_jbps_own_fields(source):
    assert not autodiff_uses(source)
