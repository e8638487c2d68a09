"""Does the built wheel work on its own? Build it, install it in a fresh venv, run it.

    python tools/check_wheel.py            # in the project's environment, from anywhere
    python tools/check_wheel.py --keep     # keep the scratch directory to look around

1. `python -m build` makes the sdist and, from it, the wheel; `python -m build
   --wheel` makes a wheel straight from the checkout (both from a copy of it without
   what git ignores, so the checkout is untouched). Both wheels must hold the same
   files with the same contents, and only the package: `mmentail/` (its page's
   files included), `mmentail_launcher.py` and the dist-info; no tests, tools,
   notebooks or docs.
2. A fresh venv (no system site-packages) gets the wheel, not editable, with its
   dependencies from pip: from pip's cache once the project's own install has fetched
   them, and not byte-compiled (TensorFlow's 2.8 GB take about a minute so).
3. From a scratch directory outside the checkout, without PYTHONPATH: `mmentail`
   imports from the venv, its version is the wheel's, `mmentail-train --version`
   runs, a tiny demo run trains and exports, and `mmentail-serve` serves the page
   at `/` and its assets from the installed package, then stops on SIGINT.

Exits 1 with what failed; prints each step's seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_FILES = re.compile(r"^(mmentail/.+|mmentail_launcher\.py|mmentail-[^/]+\.dist-info/.+)$")
PAGE_FILES = ("mmentail/serving/page/index.html", "mmentail/serving/page/page.css",
              "mmentail/serving/page/page.js")
# What .gitignore keeps out of the checkout, and git's own.
BUILD_IGNORED = (".git", "__pycache__", "*.egg-info", "build", "dist", ".venv", "runs",
                 ".pytest_cache", ".ipynb_checkpoints")
# A few seconds of training: the tests' tiny settings (tests/helpers.py), one epoch.
TINY_RUN = ["--preset", "demo", "--demo-pairs", "60", "--epochs", "1", "--image-size", "32",
            "--image-backbone", "resnet_tiny", "--seq-length", "24", "--projection-dim", "16",
            "--batch-size", "16", "--calibration-folds", "0"]


class CheckFailed(Exception):
    """One of the checks failed; the message says which and why."""


def wheel_files(wheel: Path) -> dict[str, str]:
    """{path in the wheel: SHA-256 of its contents}, RECORD left out (it lists the others).

    Example:
        wheel_files(Path("dist/mmentail-0.1.0-py3-none-any.whl"))["mmentail_launcher.py"]
    """
    with zipfile.ZipFile(wheel) as archive:
        return {name: hashlib.sha256(archive.read(name)).hexdigest()
                for name in archive.namelist()
                if not name.endswith(".dist-info/RECORD") and not name.endswith("/")}


def foreign_files(names: Sequence[str]) -> list[str]:
    """The paths in a wheel that are not the package's own (or are compiled leftovers).

    Example:
        >>> foreign_files(["mmentail/__init__.py", "tests/test_x.py", "mmentail_launcher.py",
        ...                "mmentail-0.1.0.dist-info/METADATA", "tools/benchmark.py",
        ...                "mmentail/__pycache__/train.cpython-311.pyc"])
        ['tests/test_x.py', 'tools/benchmark.py', 'mmentail/__pycache__/train.cpython-311.pyc']
    """
    return [name for name in names
            if not PACKAGE_FILES.match(name) or "__pycache__" in name or name.endswith(".pyc")]


def _run(command: Sequence[str], **options) -> subprocess.CompletedProcess:
    """Runs `command`, its output captured; raises CheckFailed with its tail if it fails."""
    result = subprocess.run(list(command), capture_output=True, text=True, **options)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-25:])
        raise CheckFailed(f"{' '.join(map(str, command))} exited {result.returncode}:\n{tail}")
    return result


def build(dist: Path) -> Path:
    """The wheel built from the sdist (in `dist`), after checking it against one built from
    the checkout; returns the sdist's wheel.

    Both are built from a copy of the checkout without what git ignores (a build/ left
    over from an earlier build would bring stale modules along).
    """
    source = dist / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*BUILD_IGNORED))
    _run([sys.executable, "-m", "build", "--outdir", str(dist / "sdist"), str(source)])
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist / "tree"), str(source)])
    [from_sdist] = (dist / "sdist").glob("*.whl")
    [from_tree] = (dist / "tree").glob("*.whl")
    files, tree_files = wheel_files(from_sdist), wheel_files(from_tree)
    if files != tree_files:
        differ = sorted(name for name in files.keys() | tree_files.keys()
                        if files.get(name) != tree_files.get(name))
        raise CheckFailed(f"the sdist's wheel and the checkout's differ in {differ}")
    if foreign := foreign_files(list(files)):
        raise CheckFailed(f"the wheel holds files that are not the package's: {foreign}")
    if missing := [name for name in PAGE_FILES if name not in files]:
        raise CheckFailed(f"the wheel lacks the page's files {missing}")
    print(f"  {from_sdist.name}: {len(files)} files, "
          f"{from_sdist.stat().st_size / 1024:.0f} KiB, the same from the sdist and the "
          f"checkout; only mmentail/, mmentail_launcher.py and the dist-info")
    return from_sdist


def install(wheel: Path, venv: Path) -> dict[str, str]:
    """A fresh venv with `wheel` installed (not editable); returns the environment that
    runs its commands: its bin first on PATH, no PYTHONPATH (with one, pip would take a
    dependency found there as installed and leave it out of the venv)."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    _run([sys.executable, "-m", "venv", str(venv)], env=env)
    # --no-compile: byte-compiling all of TensorFlow costs more than the few modules used.
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-compile",
          "--disable-pip-version-check", str(wheel)], env=env)
    return env


def check_installed(venv: Path, version: str, env: dict[str, str], cwd: Path) -> None:
    """`mmentail` imports from the venv with the wheel's version; the commands start and
    print it with `--version`."""
    found = _run([str(venv / "bin" / "python"), "-c",
                  "import importlib.metadata as m, mmentail; "
                  "print(m.version('mmentail')); print(mmentail.__file__)"],
                 env=env, cwd=cwd).stdout.split()
    if found[0] != version or not Path(found[1]).is_relative_to(venv):
        raise CheckFailed(f"expected mmentail {version} from {venv}; got {found}")
    printed = _run(["mmentail-train", "--version"], env=env, cwd=cwd).stdout.strip()
    if printed != f"mmentail-train {version}":
        raise CheckFailed(f"mmentail-train --version printed {printed!r}, expected "
                          f"'mmentail-train {version}'")


def train_tiny(env: dict[str, str], cwd: Path) -> Path:
    """A tiny demo run from the installed `mmentail-train`; returns its export."""
    _run(["mmentail-train", *TINY_RUN, "--output", "run", "--cache-dir", "cache"],
         env=env, cwd=cwd)
    export = cwd / "run" / "export"
    if not (export / "saved_model.pb").is_file():
        raise CheckFailed(f"mmentail-train wrote no SavedModel in {export}")
    return export


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url: str) -> tuple[int, str, bytes]:
    """(status, Content-Type, body) of `GET url`, an HTTP error's included."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


def serve_page(export: Path, env: dict[str, str], cwd: Path, start_timeout: float = 180) -> None:
    """`mmentail-serve` answers `/` and the page's assets, then exits 0 on SIGINT."""
    url = f"http://127.0.0.1:{_free_port()}"
    server = subprocess.Popen(["mmentail-serve", str(export), "--port", url.rsplit(":", 1)[1]],
                              env=env, cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                status, content_type, body = _get(f"{url}/")
                break
            except (urllib.error.URLError, ConnectionError):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise CheckFailed("mmentail-serve did not answer / "
                                      f"(exit code {server.poll()})") from None
                time.sleep(0.5)
        page = body.decode("utf-8")
        if status != 200 or not content_type.startswith("text/html") or "<form" not in page:
            raise CheckFailed(f"GET / gave {status} {content_type}:\n{page[:500]}")
        assets = re.findall(r'(?:src|href)="([^":]+\.(?:css|js))"', page)
        if not assets:
            raise CheckFailed(f"the page links no stylesheet or script:\n{page[:500]}")
        for asset in assets:
            status, _, body = _get(f"{url}/{asset}")
            if status != 200 or not body:
                raise CheckFailed(f"GET /{asset} gave {status}, {len(body)} bytes")
        server.send_signal(signal.SIGINT)
        try:
            code = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise CheckFailed("mmentail-serve did not stop within 30 s of SIGINT") from None
        if code != 0:
            raise CheckFailed(f"mmentail-serve exited {code} on SIGINT:\n{server.stdout.read()}")
        print(f"  served / and {', '.join(assets)}; stopped on SIGINT (exit 0)")
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        server.stdout.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="check_wheel.py", description=__doc__.split("\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="mmentail-wheel-"))
    start = last = time.perf_counter()

    def step(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        print(f"wheel check: {name} ({now - last:.0f} s)", flush=True)
        last = now

    try:
        wheel = build(scratch / "dist")
        step("built")
        venv = scratch / "venv"
        env = install(wheel, venv)
        step("installed in a fresh venv")
        outside = scratch / "outside"
        outside.mkdir()
        check_installed(venv, wheel.name.split("-")[1], env, outside)
        step("imports from the venv, commands start")
        export = train_tiny(env, outside)
        step("trained a tiny demo run")
        serve_page(export, env, outside)
        step("served the page")
    except CheckFailed as failure:
        print(f"wheel check failed: {failure}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"scratch kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"wheel check passed in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
