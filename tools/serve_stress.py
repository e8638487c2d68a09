"""Stop `mmentail-serve` again and again under load: every stop must come within a bound.

Each round starts the console command on a free port, serves one `:predict`
request, sets client threads sending `:predict` requests without pause, and
after a random moment (0 to 0.5 s) sends SIGINT or SIGTERM (alternately). A
round passes when the server exits with status 0 within `--limit` seconds of
the signal. The first round that does not is stopped with SIGABRT, which makes
Python's faulthandler print every thread's stack; that dump ends the run with
status 1. `--busy N` keeps N more processes spinning on the CPU all along, so
the server starts and stops on a machine with no idle core.

    mmentail-train --preset demo --output runs/demo
    PYTHONPATH=. python tools/serve_stress.py runs/demo/export --rounds 50 --busy 2

Prints each round's stop time, then their minimum, median and maximum.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import multiprocessing
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from typing import Sequence

from PIL import Image

SERVE = "import sys, mmentail_launcher; sys.exit(mmentail_launcher.serve())"
SERVING_LINE = re.compile(r"at http://([\d.]+):(\d+)/v1/models/(\S+)")
START_TIMEOUT_S = 180


def _request_body() -> bytes:
    """One pair in TF Serving's row format: two short texts and two small PNGs."""
    images = []
    for colour in ("red", "blue"):
        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), colour).save(buffer, format="PNG")
        images.append({"b64": base64.b64encode(buffer.getvalue()).decode("ascii")})
    return json.dumps({"instances": [{"text_1": "flood warning downtown", "image_1": images[0],
                                      "text_2": "river levels rising", "image_2": images[1]}]
                       }).encode("utf-8")


def _post(host: str, port: int, path: str, body: bytes, timeout: float = 10) -> int:
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("POST", path, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _spin() -> None:
    while True:
        pass


def one_round(export_dir: str, signum: int, clients: int, limit: float) -> float:
    """Starts the server, loads it, signals it; returns the seconds from signal to exit.

    Raises:
        RuntimeError: the server did not start, refused the request, exited with an
            error, or did not stop within `limit` (with every thread's stack).
    """
    process = subprocess.Popen([sys.executable, "-X", "faulthandler", "-c", SERVE, export_dir,
                                "--port", "0"], stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    stop_clients = threading.Event()
    try:
        deadline, match = time.monotonic() + START_TIMEOUT_S, None
        while match is None:
            line = process.stderr.readline()
            if not line or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{line}")
            match = SERVING_LINE.search(line)
        host, port, name = match.group(1), int(match.group(2)), match.group(3)
        rest: list[str] = []  # read all along: a full pipe would block the server's writes
        reader = threading.Thread(target=lambda: rest.extend(process.stderr), daemon=True)
        reader.start()
        path, body = f"/v1/models/{name}:predict", _request_body()
        try:
            status = _post(host, port, path, body, timeout=START_TIMEOUT_S)
        except (OSError, http.client.HTTPException) as error:
            raise RuntimeError(f"the first request failed: {error!r}") from None
        if status != 200:
            raise RuntimeError(f"the first request was answered {status}")

        def keep_asking() -> None:
            while not stop_clients.is_set():
                try:
                    _post(host, port, path, body)
                except (OSError, http.client.HTTPException):
                    pass  # refused, reset or cut short once the server stops: expected

        threads = [threading.Thread(target=keep_asking, daemon=True) for _ in range(clients)]
        for thread in threads:
            thread.start()
        time.sleep(random.uniform(0, 0.5))
        signalled = time.monotonic()
        process.send_signal(signum)
        try:
            code = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)
            process.wait(timeout=30)
            reader.join(timeout=10)
            raise RuntimeError(f"no stop within {limit} s of {signal.Signals(signum).name}; "
                               f"every thread's stack:\n{''.join(rest)}") from None
        seconds = time.monotonic() - signalled
        reader.join(timeout=10)
        if code != 0:
            raise RuntimeError(f"exit status {code}:\n{''.join(rest)}")
        return seconds
    finally:
        stop_clients.set()
        if process.poll() is None:
            process.kill()
            process.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export_dir", help="a serving export (a run's <output>/export)")
    parser.add_argument("--rounds", type=int, default=50, help="starts and stops")
    parser.add_argument("--clients", type=int, default=4,
                        help="threads sending requests while the signal arrives")
    parser.add_argument("--busy", type=int, default=0,
                        help="processes spinning on the CPU throughout")
    parser.add_argument("--limit", type=float, default=5.0,
                        help="seconds a stop may take, from the signal to the exit")
    parser.add_argument("--seed", type=int, default=0, help="seed of the signals' moments")
    args = parser.parse_args(argv)
    random.seed(args.seed)
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.busy)]
    for spinner in spinners:
        spinner.start()
    times = []
    try:
        for index in range(args.rounds):
            signum = (signal.SIGINT, signal.SIGTERM)[index % 2]
            try:
                seconds = one_round(args.export_dir, signum, args.clients, args.limit)
            except RuntimeError as error:
                print(f"round {index + 1}: {error}", file=sys.stderr)
                return 1
            times.append(seconds)
            print(f"round {index + 1}/{args.rounds}: {signal.Signals(signum).name} -> "
                  f"stopped in {seconds:.2f} s", flush=True)
    finally:
        for spinner in spinners:
            spinner.terminate()
    print(f"{len(times)} stops within {args.limit} s: min {min(times):.2f} s, "
          f"median {statistics.median(times):.2f} s, max {max(times):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
