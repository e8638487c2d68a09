"""Pairs/s of `mmentail-serve` over REST and over gRPC, on the same server and batcher.

One server in this process answers both APIs for the export (`--grpc-port`'s
server, :mod:`mmentail.serving.grpc_api`). `--clients` (8) client threads each send
`--requests` (2) requests of `--request-pairs` (64) pairs one after the other:
REST's `:predict` in the row format (images base64 in JSON, `urllib`), or gRPC's
`Predict` with TF Serving's own stub (one channel per client). The pairs are
generated as `tools/benchmark.py` makes its own (:func:`mmentail.sources.demo.prepare_demo`:
`--pairs` (256) pairs, JPEG and PNG images of `--source-size` (128x128), kept in
`--cache-dir`).
REST and gRPC take turns over `--rounds` (3) rounds, after a warm-up of each, so a
change of the machine's load (it may be shared) falls on both; each figure is the
median of its rounds, the ratio the median of the rounds' own ratios. Beside
pairs/s, the process's CPU milliseconds a pair (server, model and clients: the
requests are made before the rounds), which the machine's load moves less.

    mmentail-train --preset demo --image-backbone resnet50v2 --image-size 128 \\
        --image-weights none --epochs 1 --output runs/r50
    PYTHONPATH=. python tools/grpc_benchmark.py runs/r50/export --json grpc.json

Prints the rounds, then a Markdown table with the machine's load before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

if str(Path(__file__).resolve().parent) not in sys.path:  # the modules beside this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark import DEFAULT_CACHE_DIR, machine_info, size_argument  # noqa: E402
from benchmark_measures import LoadedServer, serving_rows  # noqa: E402

PROTOCOLS = ("rest", "grpc")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Both protocols' pairs/s, round by round, and the machine they were measured on."""
    from mmentail.serving.loaded import load_export  # registers the tensorflow-text ops
    from mmentail.sources.demo import prepare_demo

    load_export(args.export_dir)  # fails at once on a directory that is no export
    width, height = args.source_size
    demo = prepare_demo(Path(args.cache_dir).expanduser() / f"{args.pairs}-{width}x{height}",
                        num_pairs=args.pairs, image_size_range=(width, width),
                        aspect_ratio=width / height)
    rows = serving_rows(str(demo.csv_path), str(demo.image_dir))
    machine = machine_info()
    rounds: dict[str, list[float]] = {protocol: [] for protocol in PROTOCOLS}
    cpu_ms: dict[str, list[float]] = {protocol: [] for protocol in PROTOCOLS}
    pairs_a_round = args.clients * args.requests * args.request_pairs
    with LoadedServer(str(args.export_dir), rows, clients=args.clients,
                      requests=args.requests, grpc=True) as server:
        for round_ in range(args.rounds):
            for protocol in PROTOCOLS:
                cpu_before = time.process_time()
                rounds[protocol].append(server.pairs_per_s(args.request_pairs, protocol))
                cpu_ms[protocol].append((time.process_time() - cpu_before) * 1000
                                        / pairs_a_round)
            print(f"round {round_ + 1}: " + ", ".join(
                f"{protocol} {rounds[protocol][-1]:.1f} pairs/s "
                f"({cpu_ms[protocol][-1]:.1f} CPU ms a pair)" for protocol in PROTOCOLS),
                file=sys.stderr)
        batches = server.server.batcher.stats
    machine["load_average_after"] = list(os.getloadavg())
    return {"settings": {"export": str(args.export_dir), "pairs": len(rows),
                         "source_size": f"{width}x{height}", "clients": args.clients,
                         "requests_per_client": args.requests,
                         "pairs_per_request": args.request_pairs, "rounds": args.rounds},
            "rest_pairs_per_s": statistics.median(rounds["rest"]),
            "grpc_pairs_per_s": statistics.median(rounds["grpc"]),
            "grpc_over_rest": statistics.median(g / r for g, r in zip(rounds["grpc"],
                                                                     rounds["rest"])),
            "rest_cpu_ms_per_pair": statistics.median(cpu_ms["rest"]),
            "grpc_cpu_ms_per_pair": statistics.median(cpu_ms["grpc"]),
            "rounds": rounds, "cpu_ms_rounds": cpu_ms,
            "model_calls": batches.model_calls, "largest_batch": batches.largest_batch,
            "machine": machine}


def markdown_table(result: dict[str, Any]) -> str:
    """The figures as a Markdown table, with what they were measured on."""
    s, m = result["settings"], result["machine"]
    load = (f"load average {m['load_average_before'][0]:.2f} before, "
            f"{m['load_average_after'][0]:.2f} after")
    return "\n".join([
        f"| {s['clients']} clients x {s['pairs_per_request']} pairs a request | pairs/s "
        "| CPU ms a pair |",
        "| --- | ---: | ---: |",
        f"| REST `:predict` (JSON, base64 images) | {result['rest_pairs_per_s']:.1f} "
        f"| {result['rest_cpu_ms_per_pair']:.1f} |",
        f"| gRPC `Predict` (TensorProto) | {result['grpc_pairs_per_s']:.1f} "
        f"| {result['grpc_cpu_ms_per_pair']:.1f} |",
        f"| gRPC / REST (median of the rounds' ratios) | {result['grpc_over_rest']:.2f} | |",
        "",
        f"{s['pairs']} generated pairs of {s['source_size']}, {s['rounds']} rounds; "
        f"{m['cpus']} x {m['cpu_model']}, TensorFlow {m['tensorflow']}, {load}"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grpc_benchmark.py",
                                     description=__doc__.split("\n\n")[0])
    arg = parser.add_argument
    arg("export_dir", type=Path, help="a serving export (a run's <output>/export)")
    arg("--pairs", type=int, default=256, help="generated pairs, sent in turn")
    arg("--source-size", type=size_argument, default=(128, 128),
        help="WIDTHxHEIGHT of the generated images (128x128: images a client has resized "
             "to the export's input; 64 pairs of tools/benchmark.py's 1200x675 photos "
             "are ~66 MB, over the server's 32 MiB request limit)")
    arg("--clients", type=int, default=8, help="concurrent client threads")
    arg("--requests", type=int, default=2, help="requests each client sends a round")
    arg("--request-pairs", type=int, default=64, help="pairs in a request")
    arg("--rounds", type=int, default=3, help="rounds of REST then gRPC")
    arg("--cache-dir", default=DEFAULT_CACHE_DIR, help="where the generated pairs are kept")
    arg("--json", type=Path, help="also write the result here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = measure(args)
    if args.json:
        from mmentail.io_utils import atomic_write_json

        atomic_write_json(args.json, result)
    print(markdown_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
