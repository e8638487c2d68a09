"""Screenshot of the page `mmentail-serve` shows at `GET /`, answering one demo pair.

    python tools/screenshot_page.py runs/demo/export docs/page.png \
        --data-csv ~/.cache/mmentail/demo/data/pairs.csv --row 223

With `--why` the page's "why" view is opened too (its answer to `:explain`).

Serves the export in-process on a free port, opens the page in the system's
chromium (Debian's) or else Playwright's own Chromium, driven by Playwright
(`tools/install_browser.sh` installs the one the machine can have), fills both
posts with the CSV row's texts and images (the first image chosen with the file
input, the second dropped on its post), submits, and saves the page with its
answer. `tests/test_page.py` drives the page with
the same functions.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

CHROMIUM = os.environ.get("MMENTAIL_CHROMIUM", "/usr/bin/chromium")
# No background traffic: on a closed network Chromium's own connections are refused.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-proxy-server"]
INSTALL_HINT = "tools/install_browser.sh"


def launch_chromium(playwright: Any) -> Any:
    """A headless Chromium through Playwright: the system's (Debian's chromium at
    MMENTAIL_CHROMIUM, default /usr/bin/chromium) if there is one, else Playwright's own
    (`playwright install chromium`).

    Raises:
        RuntimeError: neither browser starts, with how to install one.
    """
    from playwright.sync_api import Error

    options = {"args": CHROMIUM_ARGS, "headless": True, "timeout": 30_000}
    if Path(CHROMIUM).is_file():
        try:
            return playwright.chromium.launch(executable_path=CHROMIUM, **options)
        except Error as error:
            raise RuntimeError(f"{CHROMIUM} did not start: {error}") from None
    try:
        return playwright.chromium.launch(**options)
    except Error as error:
        reason = str(error).strip().splitlines()[0]
        raise RuntimeError(f"no browser: nothing at {CHROMIUM} (set MMENTAIL_CHROMIUM for "
                           f"another path) and Playwright's own Chromium did not start "
                           f"({reason}); install one with {INSTALL_HINT}") from None


def drop_file(page: Any, selector: str, name: str, data: bytes) -> None:
    """Drops a file on an element, as dragging it from the desktop does."""
    page.eval_on_selector(selector, """(target, [name, b64]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name));
        for (const type of ["dragenter", "dragover", "drop"]) {
            target.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true,
                                                      cancelable: true}));
        }
    }""", [name, base64.b64encode(data).decode("ascii")])


def fill_pair(page: Any, text_1: str, image_1: Path, text_2: str, image_2: Path) -> None:
    """Both posts filled: image 1 through its file input, image 2 dropped on post 2;
    returns once both previews show."""
    page.fill("#text_1", text_1)
    page.set_input_files("#image_1", str(image_1))
    page.fill("#text_2", text_2)
    drop_file(page, "#post_2", Path(image_2).name, Path(image_2).read_bytes())
    for side in (1, 2):
        page.locator(f"#preview_{side} img").wait_for(state="visible", timeout=10_000)


def read_answer(page: Any) -> dict[str, Any]:
    """What the page shows: the label, and per bar its name, percentage text and filled
    fraction of its track (measured on screen)."""
    page.locator("#answer").wait_for(state="visible", timeout=20_000)
    bars = []
    for row in page.locator(".bar-row").all():
        track = row.locator(".bar-track").bounding_box()
        fill = row.locator(".bar-fill").bounding_box()
        bars.append({"label": row.get_attribute("data-label"),
                     "text": row.locator(".bar-value").inner_text(),
                     "fraction": fill["width"] / track["width"],
                     "chosen": "chosen" in (row.get_attribute("class") or "")})
    return {"label": page.inner_text("#label"), "bars": bars}


def read_explanation(page: Any) -> dict[str, Any]:
    """Opens the "why" view and returns what it shows: the label, the parts' bars, and per
    post its words and their scores and its image cells' scores (row by row)."""
    page.click("#why")
    page.locator("#why-view").wait_for(state="visible", timeout=60_000)
    parts = [{"label": row.get_attribute("data-label"),
              "text": row.locator(".bar-value").inner_text()}
             for row in page.locator("#why-parts .bar-row").all()]
    words, cells = {}, {}
    for side in (1, 2):
        words[side] = [(span.inner_text(), float(span.get_attribute("data-score")))
                       for span in page.locator(f"#why-text-{side} .word").all()]
        cells[side] = [float(cell.get_attribute("data-score"))
                       for cell in page.locator(f"#why-image-{side} .cell").all()]
    return {"label": page.locator("#why-view .why-label").first.inner_text(), "parts": parts,
            "words": words, "cells": cells}


def _pair(csv_path: Path, image_dir: Path | None, row: int) -> dict[str, Any]:
    from mmentail.data.pairs import read_pairs

    pairs = read_pairs(csv_path, image_dir or csv_path.parent / "images")
    if not 0 <= row < len(pairs):
        raise SystemExit(f"--row {row}: the CSV has {len(pairs)} pairs")
    pair = pairs.iloc[row]
    return {"text_1": pair["text_1"], "image_1": Path(pair["image_1_path"]),
            "text_2": pair["text_2"], "image_2": Path(pair["image_2_path"])}


def screenshot(export_dir: Path, out: Path, pair: dict[str, Any], why: bool = False
               ) -> dict[str, Any]:
    """Serves the export, answers `pair` on the page (and opens the "why" view if `why`),
    saves the screenshot; returns the answer."""
    from playwright.sync_api import sync_playwright

    from mmentail.serving.loaded import load_export
    from mmentail.serving.server import ModelServer

    export = load_export(export_dir)
    export.warm_up()
    server = ModelServer(("127.0.0.1", 0), export)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    try:
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            page = browser.new_page(viewport={"width": 960, "height": 720},
                                    device_scale_factor=1)
            page.goto(f"http://{host}:{port}/")
            fill_pair(page, **pair)
            page.click("#submit")
            answer = read_answer(page)
            if why:
                read_explanation(page)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    return answer


def main(argv: Sequence[str] | None = None) -> int:
    """Parses the flags, takes the screenshot and prints the answer shown."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export_dir", type=Path, help="serving export (a run's export/)")
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("--data-csv", type=Path, required=True, help="pairs CSV (demo's)")
    parser.add_argument("--image-dir", type=Path, help="images (default: images/ beside it)")
    parser.add_argument("--row", type=int, default=0, help="which pair (0 = the first)")
    parser.add_argument("--why", action="store_true", help="open the \"why\" view too")
    args = parser.parse_args(argv)
    answer = screenshot(args.export_dir, args.out, _pair(args.data_csv, args.image_dir,
                                                         args.row), why=args.why)
    print(f"{args.out}: {answer['label']} "
          + ", ".join(f"{bar['label']} {bar['text']}" for bar in answer["bars"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
