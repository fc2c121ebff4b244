"""A griffe extension that lets jbp's docstrings render as they read in the source.

jbp's docstrings are Google style with a few reStructuredText habits taken
from optax (STYLE.md): ``Example:`` sections of doctests, ``.. math::``
blocks and Sphinx roles such as :func:`jbp.forward`. mkdocstrings reads
Markdown, so before it renders a docstring this extension rewrites, in the
text it was given (the sources are not touched):

- ``Example:`` → ``Examples:``, the section griffe renders as code;
- a ``.. math::`` block → a fenced ``tex`` block (no MathJax: the site
  fetches nothing);
- a reStructuredText simple table (rows between ``=====  =====`` borders,
  the first row its header) → a Markdown table;
- ``:func:`name``` and the other roles → a link to the object's entry in
  the API reference when it has one, and plain code otherwise, never a
  broken link.

Loaded by ``mkdocs.yml`` (``extensions: [docs/griffe_jbp.py]``); paths are
relative to the repository root, where ``mkdocs build`` runs.
"""

import importlib
import inspect
import re

import griffe

ROLE = re.compile(r":(?:func|class|mod|meth|data|attr|obj|exc):`(?P<tilde>~?)(?P<target>[\w.]+)(?:\(\))?`")
MATH = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<inline>.*)$")
EXAMPLE = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*$", flags=re.MULTILINE)
BORDER = re.compile(r"^(?P<indent>[ \t]*)=+(?: +=+)+[ \t]*$")


def _canonical(target: str, module: str) -> "str | None":
    """The dotted path under which mkdocstrings files ``target`` (as written in ``module``), or None."""
    for base in (module, "jbp", ""):
        parts = ((base + "." if base else "") + target).split(".")
        for split in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:split]))
            except ImportError:
                continue
            try:
                for name in parts[split:]:
                    obj = getattr(obj, name)
            except AttributeError:
                break
            if inspect.ismodule(obj):
                return obj.__name__
            owner = getattr(obj, "__module__", None)
            qualname = getattr(obj, "__qualname__", None)
            if owner and qualname and owner.startswith("jbp") and "<" not in qualname:
                return f"{owner}.{qualname}"
            return ".".join(parts)  # a constant or an attribute: its path as written
    return None


def _roles(text: str, module: str) -> str:
    def link(match: re.Match) -> str:
        target = match["target"]
        shown = target.rsplit(".", 1)[-1] if match["tilde"] else target
        path = _canonical(target, module)
        if path is None:
            return f"`{shown}`"
        return f'<autoref identifier="{path}" optional><code>{shown}</code></autoref>'

    return ROLE.sub(link, text)


def _math(text: str) -> str:
    """``.. math::`` (with its expression on the line, or indented below it) → a fenced tex block."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        match = MATH.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        indent, body = match["indent"], [match["inline"]] if match["inline"].strip() else []
        i += 1
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)):
            body.append(lines[i])
            i += 1
        while body and not body[-1].strip():
            body.pop()
        while body and not body[0].strip():
            body.pop(0)
        depth = min((len(line) - len(line.lstrip()) for line in body if line.strip()), default=0)
        out += [f"{indent}```tex", *(indent + line[depth:] if line.strip() else "" for line in body), f"{indent}```"]
        if i < len(lines) and lines[i].strip():
            out.append("")
    return "\n".join(out)


def _cells(line: str, starts: list[int]) -> list[str]:
    """One row of a simple table cut at the columns' starts; a cell that runs past its column's
    end (rST would refuse it) ends at the first run of two spaces after it instead."""
    cuts = [starts[0]]
    for start in starts[1:]:
        cut = start
        if start < len(line) and line[start - 1] != " ":
            gap = re.compile(r" {2,}(?=\S)").search(line, start)
            cut = gap.end() if gap else len(line)
        cuts.append(max(cut, cuts[-1]))
    return [line[a:b].strip() for a, b in zip(cuts, cuts[1:] + [len(line)])]


def _tables(text: str) -> str:
    """rST simple tables (top border, header, border, rows, bottom border) → Markdown tables. A row
    whose first cell is empty continues the row above it, as in rST."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        top = BORDER.match(lines[i])
        ends = [j for j in range(i + 1, len(lines)) if BORDER.match(lines[j])][:2] if top else []
        if len(ends) < 2 or any(not line.strip() for line in lines[i + 1 : ends[0]]):
            out.append(lines[i])
            i += 1
            continue
        starts = [m.start() for m in re.finditer(r"=+", lines[i])]
        rows = []
        for j in range(i + 1, ends[1]):
            if j == ends[0] or not lines[j].strip():
                continue
            cells = _cells(lines[j], starts)
            if rows and not cells[0] and j != ends[0] + 1:
                rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells)]
            else:
                rows.append(cells)
        indent = top["indent"]
        row = lambda cells: indent + "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"
        out += [row(rows[0]), indent + "|" + " --- |" * len(starts), *map(row, rows[1:])]
        i = ends[1] + 1
    return "\n".join(out)


def markdown(text: str, module: str) -> str:
    """A jbp docstring rewritten for mkdocstrings."""
    return _roles(EXAMPLE.sub(r"\g<indent>Examples:", _tables(_math(text))), module)


class JbpDocstrings(griffe.Extension):
    """Rewrites every docstring of every object griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            module = obj.path if obj.is_module else obj.module.path
            obj.docstring.value = markdown(obj.docstring.value, module)
