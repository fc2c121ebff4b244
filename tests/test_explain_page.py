"""`jbp explain`: the text, the options, the errors, and the HTML page in a real browser.

The page for Mazur's example is written once through the command (module
fixture) and loaded in headless Chromium: the article's figures must be in the
rendered DOM, a screenshot must not be blank, and the keys and buttons must
move between the steps. The browser tests are skipped, with the reason, only
where no Chromium is installed (Debian: apt-get install chromium). The
article's figures are typed here from the notes, as in test_mazur.py."""

import contextlib
import html
import io
import re
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser

import jax
import numpy as np
import pytest

import jbp
from jbp.cli import main
from jbp.explain import worked_example
from jbp.explain.example import ROOT
from jbp.explain.html import render

BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(name)), None)
needs_browser = pytest.mark.skipif(BROWSER is None, reason="no chromium, chromium-browser or google-chrome on PATH "
                                                           "(Debian: apt-get install chromium)")

# Mazur's figures as the notes print them, that the page shows verbatim: every z, a, the cost and its two
# terms, ∇_a C and σ' at the output, δ^2, the gradient of w5 and w1, (W^2)^T δ^2 and σ' for h1, the updated
# weights. (Others are printed from rounded intermediates and differ in their last digit: -0.019049119,
# w4⁺ 0.29950229; or carry more digits than the page: net_o2, δ_h1, δ_h2.)
ARTICLE = ["0.3775", "0.593269992", "0.3925", "0.596884378", "1.105905967", "0.75136507", "0.772928465",
           "0.274811083", "0.023560026", "0.298371109", "0.74136507", "-0.21707153", "0.186815602", "0.138498562",
           "0.082167041", "0.036350306", "0.241300709", "0.000438568", "0.35891648", "0.408666186", "0.511301270",
           "0.561370121", "0.149780716", "0.19956143", "0.24975114"]


def run_main(*argv):
    """``jbp …`` in this process: (status, stdout, stderr); argparse's own errors included."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(list(argv))
        except SystemExit as exit_:
            status = exit_.code
    return status, out.getvalue(), err.getvalue()


def browser(tmp_path, *args, timeout=90):
    profile = tmp_path / "profile"
    done = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class Text(HTMLParser):
    """The text of a document (script and style left out), and every element's attributes by id."""

    def __init__(self):
        super().__init__()
        self.parts, self.skip, self.by_id, self.elements = [], 0, {}, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.elements.append((tag, attrs))
        if "id" in attrs:
            self.by_id[attrs["id"]] = attrs
        if tag in ("script", "style"):
            self.skip += 1

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self.skip -= 1

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)

    @property
    def text(self):
        return " ".join(self.parts)


def parse(document):
    parser = Text()
    parser.feed(document)
    return parser


def classes(attrs):
    return set((attrs.get("class") or "").split())


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    folder = tmp_path_factory.mktemp("page")
    path = folder / "mazur.html"
    status, out, err = run_main("explain", "--html", str(path))
    assert status == 0, err
    assert f"page written to {path}" in err
    return path


# --- the command's text and options


def test_default_is_mazurs_example_as_text():
    status, out, err = run_main("explain")
    assert status == 0 and err == ""
    assert out.startswith("Mazur's 2-2-2 example.")
    for line in ("a^1 = sigmoid(z^1)  =  [0.593269992, 0.596884378]", "C = squared_error(a^2, y)  =  0.298371109",
                 "BP1  δ^2 = ∇_a C ⊙ σ'(z^2)", "BP2  δ^1 = ((W^2)^T δ^2) ⊙ σ'(z^1)", "Gradient descent step, η = 0.5"):
        assert line in out, line
    assert "0.35891648" in out and "0.149780716" in out and "b^1⁺" not in out  # the article keeps the biases


def test_sizes_and_seed_draw_a_random_network():
    argv = ("explain", "--sizes", "3,4,2", "--hidden", "tanh", "--output", "softmax", "--seed", "7", "--lr", "0.1")
    status, out, _ = run_main(*argv)
    assert status == 0
    assert "A random 3-4-2 network (seed 7)" in out and "loss softmax_cross_entropy" in out
    assert "BP1  δ^2 = a^2 - y  (softmax with softmax_cross_entropy: σ' cancels)" in out
    assert "a^1 = tanh(z^1)" in out and "b^2⁺ = b^2 - η ∂C/∂b^2" in out and "η = 0.1" in out
    assert run_main(*argv)[1] == out  # the seed decides everything
    assert run_main(*argv[:-3], "8")[1] != out


def numbers_after(text, equation):
    """The numbers printed after ``equation  =  `` (a vector or a matrix, on one or more lines)."""
    start = text.index(equation + "  =  ") + len(equation) + 5
    block = text[start:].split("\n  ")[0]
    return np.array([float(v) for v in re.findall(r"-?\d+\.?\d*(?:e[-+]?\d+)?", block)])


def test_a_run_folders_network_on_its_first_test_sample(tmp_path):
    run = tmp_path / "xor-run"
    assert run_main("train", "--data", "xor", "--epochs", "1", "--out", str(run), "--no-progress")[0] == 0
    status, out, err = run_main("explain", "--run", str(run))
    assert status == 0, err
    assert "The run xor-run, on the first sample of xor" in out and "Network 2-4-1" in out
    # z^1 and a^1 against numpy, from the run's own files
    with np.load(run / "params.npz") as params:
        W1, b1 = params["W1"].astype(np.float64), params["b1"].astype(np.float64)
    x = jbp.data.load("xor").test.X[0].astype(np.float64)
    np.testing.assert_allclose(numbers_after(out, "z^1 = W^1 a^0 + b^1"), W1 @ x + b1, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(numbers_after(out, "a^1 = tanh(z^1)"), np.tanh(W1 @ x + b1), rtol=1e-8, atol=1e-9)
    # a sample of one's own, and the options a run does not take
    status, out, _ = run_main("explain", "--run", str(run), "--x", "1,0", "--y", "1")
    assert status == 0 and "on the input given" in out
    status, _, err = run_main("explain", "--run", str(run), "--sizes", "2,3,1", "--loss", "squared_error")
    assert status == 2 and err.count("\n") == 1 and "leave out --sizes, --loss" in err


@pytest.mark.parametrize("argv, message", [
    (["--x", "1,2,3"], "--x has 3 numbers; the network takes 2 inputs"),
    (["--x", "a,b"], "argument --x: expected comma-separated numbers like 0.05,0.1, got 'a,b'"),
    (["--y", "nan,1"], "argument --y: expected finite numbers"),
    (["--sizes", "3,2", "--y", "1"], "--y has 1 number; the network takes 2 outputs"),
    (["--hidden", "tanh,relu"], "--hidden names 2 activations for 1 hidden layers"),
    (["--loss", "binary_cross_entropy", "--y", "2,0"], "binary_cross_entropy needs targets in [0, 1]"),
    (["--lr", "0"], "argument --lr: must be a finite number > 0, got 0"),
    (["--output", "swish"], "unknown activation 'swish'"),
    (["--run", "no-such-run"], "no run at no-such-run"),
    (["--sizes", "200,200,10", "--html", "page.html"], "has 42,210 parameters; the page shows each"),
    (["--html", "no-such-folder/page.html"], "--html no-such-folder/page.html: no folder no-such-folder"),
])
def test_bad_options_are_one_line_and_status_2(tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    status, out, err = run_main("explain", *argv)
    assert status == 2 and err.count("\n") == 1 and message in err, err
    assert out == "" and not (tmp_path / "page.html").exists()


# --- the page, as written


def test_the_page_holds_no_address_and_loads_nothing(page):
    text = page.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    for loads in ("<link", " src=", " href=", "url(", "@import", "xmlns"):
        assert loads not in text, loads


def test_the_page_is_the_steps_with_every_number_and_the_lines_that_computed_them(page):
    document = parse(page.read_text(encoding="utf-8"))
    steps = [attrs for tag, attrs in document.elements if tag == "section" and "step" in classes(attrs)]
    kinds = [attrs["data-title"].split(":")[0].split(",")[0] for attrs in steps]
    assert kinds == ["The sample and the parameters", "Forward pass", "Forward pass", "The cost", "BP1", "BP2",
                     "BP3 and BP4", "BP3 and BP4", "Gradient descent", "Gradient descent"]
    assert "current" in classes(steps[0]) and all("future" in classes(s) for s in steps[1:])  # hidden, present
    for figure in ARTICLE:
        assert figure in document.text, figure
    # every line the page names is that line of the file, and no step points at a bare def or decorator
    shown = page.read_text(encoding="utf-8")
    named = re.findall(r'<code class="where">(jbp/[\w/]+\.py):(\d+)</code> <span class="fn">[^<]*</span>'
                       r'<code class="line">([^<]*)</code>', shown)
    assert {path for path, _, _ in named} >= {"jbp/network.py", "jbp/layers/dense.py", "jbp/losses.py",
                                              "jbp/activations.py", "jbp/explain/example.py"}
    for path, line, code in named:
        assert (ROOT / path).read_text().splitlines()[int(line) - 1].strip() == html.unescape(code), (path, line)
        assert not html.unescape(code).startswith(("@", "def ")), (path, line, code)
    lines = [html.unescape(code) for _, _, code in named]
    assert any(code.startswith("return x @ params.W.T + params.b") for code in lines)  # z = W a + b
    assert any(code.startswith("return delta @ params.W") for code in lines)  # Wᵀ δ
    assert any(".activation.backward(" in code for code in lines)
    # the controls: labelled buttons, the current step announced
    assert document.by_id["prev"]["aria-label"] == "Previous step"
    assert document.by_id["next"]["aria-label"] == "Next step"
    assert document.by_id["status"]["aria-live"] == "polite"
    assert "<math" in shown and "@media print" in shown


def test_a_canonical_pair_and_a_wide_network_render():
    net = jbp.mlp([12, 3, 2], hidden="relu", output="sigmoid")
    params = jbp.init(net, jax.random.key(1))
    example = worked_example(net, params, np.linspace(-1, 1, 12), np.array([0.0, 1.0]), "binary_cross_entropy", 0.1)
    document = parse(render(example))
    assert "σ' cancels" in document.text and "too wide to draw" not in document.text
    assert "<svg" in render(example)
    wide = jbp.mlp([20, 3, 2], hidden="relu", output="sigmoid")
    example = worked_example(wide, jbp.init(wide, jax.random.key(2)), np.ones(20), np.array([0.0, 1.0]),
                             "binary_cross_entropy")
    shown = render(example)
    assert "too wide to draw" in shown and "<svg" not in shown and shown.count('class="step ') == 8


# --- the page, in a browser


@needs_browser
def test_the_browser_shows_the_articles_numbers(page, tmp_path):
    document = parse(browser(tmp_path, "--dump-dom", page.as_uri()))
    root = next(attrs for tag, attrs in document.elements if tag == "html")
    assert root.get("data-step") == "1" and "no-js" not in classes(root)  # the script ran
    assert "Step 1 of 10: The sample and the parameters" in document.text
    for figure in ARTICLE:
        assert figure in document.text, figure


def png_pixels(data: bytes) -> np.ndarray:
    """RGB pixels of an 8-bit, non-interlaced RGB or RGBA PNG (Pillow when installed, else by hand)."""
    try:
        from PIL import Image
    except ImportError:
        pass
    else:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            chunks.append(body)
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and interlace == 0 and colour in (2, 6), header
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(b"".join(chunks)), width * bpp
    rows, previous = [], bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, corner = previous[i], previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + ((left + up) >> 1)) & 255
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 255
        rows.append(line)
        previous = line
    return np.frombuffer(b"".join(rows), np.uint8).reshape(height, width, bpp)[..., :3]


@needs_browser
def test_a_screenshot_is_not_blank(page, tmp_path):
    shot = tmp_path / "page.png"
    browser(tmp_path, f"--screenshot={shot}", "--window-size=1200,900", page.as_uri())
    pixels = png_pixels(shot.read_bytes())
    assert pixels.shape == (900, 1200, 3)
    colours, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)
    background = colours[np.argmax(counts)]
    drawn = np.mean(np.any(pixels != background, axis=-1))
    assert len(colours) > 20 and drawn > 0.03, (len(colours), drawn)


@needs_browser
def test_keys_and_buttons_move_between_steps(page, tmp_path):
    """The page's own handlers, driven by events a script sends after it loaded; the DOM is read back."""
    script = """<script>
    (function () {
      function key(name) {
        document.dispatchEvent(new KeyboardEvent("keydown", {key: name, bubbles: true, cancelable: true}));
      }
      function at() { return document.documentElement.getAttribute("data-step"); }
      var seen = [at()];
      key("ArrowRight"); key("ArrowRight"); key("ArrowRight"); seen.push(at());
      document.getElementById("next").click(); seen.push(at());
      key("End"); seen.push(at());
      key("ArrowRight"); seen.push(at());
      key("Home"); seen.push(at());
      key("ArrowLeft"); seen.push(at());
      key("PageDown"); key("PageDown"); key("PageDown"); key("PageDown");
      document.getElementById("prev").click(); key("ArrowRight"); seen.push(at());
      document.body.setAttribute("data-seen", seen.join(","));
    }());
    </script></body>"""
    stepped = tmp_path / "stepped.html"
    stepped.write_text(page.read_text(encoding="utf-8").replace("</body>", script), encoding="utf-8")
    document = parse(browser(tmp_path, "--dump-dom", stepped.as_uri()))
    body = next(attrs for tag, attrs in document.elements if tag == "body")
    assert body["data-seen"] == "1,4,5,10,10,1,1,5"
    # at step 5 (BP1): steps 1-4 passed, 6-10 to come; δ^2 drawn on the output neurons, δ^1 not yet
    steps = [attrs for tag, attrs in document.elements if tag == "section" and "step" in classes(attrs)]
    assert [("past" in classes(s), "current" in classes(s), "future" in classes(s)) for s in steps] == (
        [(True, False, False)] * 4 + [(False, True, False)] + [(False, False, True)] * 5)
    assert steps[4].get("aria-current") == "step"
    assert "Step 5 of 10: BP1: the error at the output" in document.text
    timed = [attrs for tag, attrs in document.elements if tag == "text" and "data-from" in attrs]
    deltas = {attrs["data-from"]: "future" in classes(attrs) for attrs in timed if "delta" in classes(attrs)}
    assert deltas == {"4": False, "5": True}  # δ^2 from step index 4 (BP1), δ^1 from 5 (BP2)
