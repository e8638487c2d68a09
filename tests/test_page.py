"""The page at `GET /`: only its own files served, and a pair answered in a real browser.

The browser test drives Debian's chromium, or else Playwright's own Chromium, through
Playwright; when neither is there it fails, naming the install command
(`tools/install_browser.sh`), rather than skipping.
"""

from __future__ import annotations

import http.client
import json
import re
from pathlib import Path

import numpy as np
import pytest
from test_server import _start, _stop

from helpers import load_tool
from mmentail.schema import LABELS
from mmentail.serving.explain import explain_pairs
from mmentail.serving.loaded import LoadedExport, load_export
from mmentail.serving.server import ModelServer


def _get(server: ModelServer, path: str) -> tuple[int, str, bytes]:
    """(status, Content-Type, body) of `GET path`, the path sent as it is."""
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


def test_page_and_assets_are_served_and_nothing_else(tmp_path):
    # No model is needed to serve the page: the export is never called here.
    server = _start(ModelServer(("127.0.0.1", 0), LoadedExport(tmp_path, {}, {}),
                                model_name="entail"))
    try:
        status, content_type, body = _get(server, "/")
        assert (status, content_type) == (200, "text/html; charset=utf-8")
        page = body.decode("utf-8")
        assert '<form id="pair"' in page and 'content="v1/models/entail:predict"' in page
        assert 'content="v1/models/entail:explain"' in page
        assert "{{" not in page and "http" not in page  # filled in; nothing from elsewhere
        for path in re.findall(r'(?:src|href)="([^":]+)"', page):
            assert _get(server, f"/{path}")[:2] == (200, {
                "css": "text/css; charset=utf-8",
                "js": "text/javascript; charset=utf-8"}[path.rsplit(".", 1)[1]])
        assert _get(server, "/index.html?x=1")[2] == body
        for path in ["/../setup.cfg", "/..%2fsetup.cfg", "/%2e%2e/setup.cfg", "/page/",
                     "/page/index.html", "/page.py", "/server.py", "/__init__.py",
                     "//etc/passwd", "/./index.html", "/mmentail/serving/page/page.js"]:
            status, content_type, body = _get(server, path)
            assert (status, content_type) == (404, "application/json"), path
            assert "error" in json.loads(body), path
    finally:
        _stop(server)


@pytest.fixture(scope="module")
def page_server(exported):
    export = load_export(exported[1])
    export.warm_up()
    server = _start(ModelServer(("127.0.0.1", 0), export))
    yield server
    _stop(server)


@pytest.mark.slow
def test_page_answers_a_demo_pair_in_chromium(page_server, demo_pairs):
    """Fills a demo pair, reads the label and bars, and checks them against the export;
    opens the "why" view and checks its words, cells and parts against the explanation;
    then a missing text, a non-image file and a failed request each show their error."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is missing: pip install -e '.[test]', then "
                    "tools/install_browser.sh for a browser", pytrace=False)
    tool = load_tool("screenshot_page")
    pair = demo_pairs.iloc[0]
    texts = (pair["text_1"], pair["text_2"])
    images = (Path(pair["image_1_path"]), Path(pair["image_2_path"]))
    columns = {"text_1": [texts[0].encode()], "image_1": [images[0].read_bytes()],
               "text_2": [texts[1].encode()], "image_2": [images[1].read_bytes()]}
    expected = page_server.export.predict(columns)
    host, port = page_server.server_address[:2]
    with sync_playwright() as playwright:
        try:
            browser = tool.launch_chromium(playwright)
        except RuntimeError as error:
            pytest.fail(str(error), pytrace=False)
        try:
            page = browser.new_page(reduced_motion="reduce")  # bars measured at rest
            uncaught, console_errors = [], []  # console: a CSP refusal, a missing asset
            page.on("pageerror", lambda error: uncaught.append(str(error)))
            page.on("console", lambda message: console_errors.append(message.text)
                    if message.type == "error" else None)
            page.goto(f"http://{host}:{port}/")
            assert page.title().startswith("mmentail")
            assert page.locator("#error").is_hidden() and page.locator("#answer").is_hidden()
            for side in (1, 2):  # every input has its label
                for field in ("text", "image"):
                    assert page.get_by_label(re.compile(f"^{field}", re.I)).nth(side - 1) \
                        .get_attribute("id") == f"{field}_{side}"

            tool.fill_pair(page, texts[0], images[0], texts[1], images[1])
            page.evaluate("""() => {
                const button = document.getElementById("submit");
                window.disabledSeen = false;
                new MutationObserver(() => { window.disabledSeen ||= button.disabled; })
                    .observe(button, {attributes: true});
            }""")
            page.click("#submit")
            shown = tool.read_answer(page)
            assert page.evaluate("window.disabledSeen") and page.is_enabled("#submit")
            assert shown["label"] == expected["label"][0]
            assert [bar["label"] for bar in shown["bars"]] == list(LABELS)
            for bar, probability in zip(shown["bars"], expected["probabilities"][0]):
                assert bar["text"].endswith("%")
                assert float(bar["text"][:-1]) / 100 == pytest.approx(probability, abs=0.0051)
                assert bar["fraction"] == pytest.approx(probability, abs=0.01)
                assert bar["chosen"] == (bar["label"] == shown["label"])
            assert page.locator("#error").is_hidden() and console_errors == [], console_errors

            shown_why = tool.read_explanation(page)  # the "why" view: the export's explanation
            [why] = explain_pairs(page_server.export.predict, columns)
            assert shown_why["label"] == why.label == shown["label"]
            assert [part["label"] for part in shown_why["parts"]] == ["the whole pair", *(
                f"without {name}" for name in ("text 1", "text 2", "both texts", "image 1",
                                               "image 2", "both images"))]
            for side in (1, 2):
                assert [word for word, _ in shown_why["words"][side]] == texts[side - 1].split()
                np.testing.assert_allclose([score for _, score in shown_why["words"][side]],
                                           why.word_scores[f"text_{side}"], atol=1e-5)
                np.testing.assert_allclose(shown_why["cells"][side],
                                           why.cell_scores[f"image_{side}"].ravel(), atol=1e-5)
            assert console_errors == [], console_errors

            page.fill("#text_1", "   ")
            page.click("#submit")
            assert page.inner_text("#error") == "Post 1 needs a text."
            assert page.locator("#answer").is_hidden()
            page.fill("#text_1", texts[0])

            page.set_input_files("#image_2", files=[{"name": "notes.txt", "mimeType":
                                                     "text/plain", "buffer": b"not a picture"}])
            page.click("#submit")
            page.locator("#error").wait_for(state="visible", timeout=20_000)
            error = page.inner_text("#error")
            assert "(400)" in error and "image_2[0]: the image is not a JPEG" in error, error
            assert "not an image?" in page.inner_text("#preview_2")
            assert page.locator("#answer").is_hidden() and page.is_enabled("#submit")

            page.route(re.compile(r":predict$"), lambda route: route.abort())
            page.set_input_files("#image_2", str(images[1]))
            page.click("#submit")
            # A locator waits without evaluating strings, which the page's CSP forbids.
            page.locator("#error", has_text="Could not reach the server").wait_for(
                timeout=20_000)
            assert uncaught == [], uncaught
        finally:
            browser.close()
