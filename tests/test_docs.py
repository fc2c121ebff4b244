"""The documentation site builds with ``mkdocs build --strict``, and documents every public name.

Strict mode turns every warning into a failure: a docstring griffe cannot
parse, a cross-reference to a function that was renamed, a page missing
from the navigation. Skipped, saying so, where MkDocs is not installed
(the ``docs`` extra).
"""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NEEDED = {"mkdocs": "mkdocs", "material": "mkdocs-material", "mkdocstrings": "mkdocstrings",
          "mkdocstrings_handlers.python": "mkdocstrings-python"}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site, built once for the tests of this file."""
    missing = [package for module, package in NEEDED.items() if importlib.util.find_spec(module.split(".")[0]) is None
               or (module.count(".") and importlib.util.find_spec(module) is None)]
    if missing:
        pytest.skip(f"the documentation site needs {', '.join(missing)}: pip install -e '.[docs]'")
    folder = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(folder)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    assert "WARNING" not in done.stderr, done.stderr
    return folder


def anchors(site: pathlib.Path) -> set[str]:
    found = set()
    for page in site.rglob("*.html"):
        found.update(re.findall(r'id="(jbp[\w.]*)"', page.read_text(encoding="utf-8")))
    return found


def test_strict_build_has_the_pages_and_the_api(site):
    for page in ("index.html", "equations/index.html", "guides/researchers/index.html",
                 "guides/training/index.html", "guides/teaching/index.html", "api/index.html"):
        assert (site / page).is_file(), page
    privacy = (site / "api" / "privacy" / "index.html").read_text(encoding="utf-8")
    assert 'id="jbp.privacy.clipped_grads"' in privacy and "max_norm" in privacy
    network = (site / "api" / "network" / "index.html").read_text(encoding="utf-8")
    assert 'href="#jbp.network.forward"' in network  # a :func:`forward` role became a link
    for page in (site / "api").rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        # docs/griffe_jbp.py: Example: sections are code (doctest prompts highlighted, not quoted) and
        # no reStructuredText role or directive is left as text
        assert "<blockquote>" not in text and ":func:`" not in text and ".. math::" not in text, page
    assert 'class="gp">&gt;&gt;&gt; </span>' in network
    equations = (site / "equations" / "index.html").read_text(encoding="utf-8")
    assert 'href="../api/network/#jbp.network.backward"' in equations


def test_every_public_name_of_jbp_has_an_entry(site):
    import jbp

    documented = anchors(site)
    missing = []
    for name in jbp.__all__:
        obj = getattr(jbp, name)
        if hasattr(obj, "__qualname__") and hasattr(obj, "__module__") and not isinstance(obj, type(jbp)):
            # where it is defined, or a package above that module that re-exports it (jbp.explain.explain)
            wanted = [path for path in documented if path.endswith(f".{obj.__qualname__}")
                      and f"{obj.__module__}.".startswith(path[: -len(obj.__qualname__)])]
        else:  # a module, a constant or an activation or loss value: its name in any module
            wanted = [getattr(obj, "__name__", "")] + [path for path in documented if path.endswith(f".{name}")]
        if not documented.intersection(wanted):
            missing.append(name)
    assert not missing, f"public names without an entry in the API reference: {missing}"


def test_the_site_fetches_nothing(site):
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        external = re.findall(r'<(?:link|script|img)[^>]+(?:href|src)="(https?://[^"]+)"', text)
        assert not external, f"{page.relative_to(site)} loads {external}"
