#!/usr/bin/env python3
"""Throughput of `nmt serve`: sentences/s with 1 and with N concurrent clients.

    python scripts/serve_bench.py --checkpoint runs/multi30k_en_de/best.pt \
        --input data/prepared/multi30k_en_de/test.src.txt --clients 1 16 --sentences 400

For each client count a fresh server starts (`nmt serve --port 0`, with --serve-args passed on);
after one warm-up request, the clients share the first --sentences lines, each sending requests of
--per-request sentences one after another on its own keep-alive connection. Prints sentences/s
and the latency of a request (median and 95th percentile), and with --json writes them.
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path


def start(checkpoint: str, extra: list[str]) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, "-m", "nmt", "serve", "--checkpoint", checkpoint, "--port", "0", *extra]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    match = re.search(r"http://[^:]+:(\d+)", line)
    if not match:
        raise SystemExit(f"the server did not start: {line}{proc.stderr.read()}")
    return proc, int(match.group(1))


def run_clients(port: int, lines: list[str], clients: int, per_request: int) -> dict:
    """The clients share `lines`; returns sentences/s and request latencies."""
    shares = [lines[k::clients] for k in range(clients)]
    latencies: list[float] = []
    lock = threading.Lock()

    def client(share: list[str]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        for i in range(0, len(share), per_request):
            body = json.dumps({"sentences": share[i : i + per_request]}).encode()
            t0 = time.perf_counter()
            conn.request("POST", "/translate", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"HTTP {response.status}")
            with lock:
                latencies.append(time.perf_counter() - t0)
        conn.close()

    threads = [threading.Thread(target=client, args=(s,)) for s in shares]
    start_time = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start_time
    latencies.sort()
    return {
        "clients": clients,
        "sentences": len(lines),
        "seconds": round(seconds, 2),
        "sentences_per_s": round(len(lines) / seconds, 1),
        "latency_ms_median": round(1000 * statistics.median(latencies), 1),
        "latency_ms_p95": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--input", required=True, help="source lines to send")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--sentences", type=int, default=400)
    ap.add_argument("--per-request", type=int, default=1)
    ap.add_argument("--serve-args", default="", help="more flags for nmt serve, e.g. '--workers 1'")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    lines = Path(args.input).read_text(encoding="utf-8").splitlines()[: args.sentences]
    rows = []
    for clients in args.clients:
        proc, port = start(args.checkpoint, args.serve_args.split())
        try:
            run_clients(port, lines[:8], 1, 8)  # warm-up: allocator, kernels
            rows.append(run_clients(port, lines, clients, args.per_request))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
        r = rows[-1]
        print(
            f"{clients:>3} client(s), {args.per_request} sentence(s) a request: "
            f"{r['sentences_per_s']:>7.1f} sentences/s   latency median "
            f"{r['latency_ms_median']} ms, p95 {r['latency_ms_p95']} ms",
            flush=True,
        )
    if args.json:
        machine = {"platform": platform.platform(), "python": platform.python_version()}
        Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
