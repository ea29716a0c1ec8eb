"""`nmt serve`, a real server process on a free port, talked to over HTTP: concurrent clients get
`nmt translate`'s translations of the same lines; bad requests get a 4xx with one line; SIGTERM
answers the requests in flight, then the server exits."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import SmokeRun

from nmt.data import read_lines


@contextmanager
def server(smoke: SmokeRun, *args: str) -> Iterator[tuple[subprocess.Popen, int]]:
    """`nmt serve` on the smoke model and a free port; stopped with SIGTERM at the end."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nmt", "serve", "--checkpoint", str(smoke.run / "best.pt")]
        + ["--port", "0", "--device", "cpu", *args],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stderr.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert match, line + proc.stderr.read()
        yield proc, int(match.group(1))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


def call(port: int, method: str, path: str, body: object = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    payload = json.loads(response.read())
    conn.close()
    return response.status, payload


def test_concurrent_clients_get_the_translations_of_nmt_translate(
    cli, smoke: SmokeRun, tmp_path: Path
) -> None:
    lines = read_lines(smoke.prepared / "valid.src.txt")[:48]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    expected = {}
    for beam in (None, 1):  # the checkpoint's decode.beam, and greedy
        flags = ["--beam", beam] if beam else []
        code, out, err = cli(
            "translate", "--checkpoint", smoke.run / "best.pt", "--input", tmp_path / "in.txt",
            "--device", "cpu", *flags,
        )  # fmt: skip
        assert code == 0, err
        expected[beam] = out.splitlines()
    # the decoder waits up to 200 ms for more requests: clients that ask together share batches
    with server(smoke, "--batch-wait-ms", "200") as (_, port):
        assert call(port, "GET", "/health") == (
            200,
            {
                "status": "ok",
                "checkpoint": str(smoke.run / "best.pt"),
                "source": "en",
                "target": "de",
                "decoded": {"requests": 0, "batches": 0},
            },
        )
        got: dict[tuple[object, int], str] = {}

        def client(k: int) -> None:  # 8 clients, 6 lines each, in 2 requests, one with beam 1
            part = list(range(k * 6, k * 6 + 6))
            for beam, rows in ((None, part[:3]), (1, part[3:])):
                body = {"sentences": [lines[i] for i in rows], **({"beam": 1} if beam else {})}
                status, answer = call(port, "POST", "/translate", body)
                assert status == 200, answer
                for i, text in zip(rows, answer["translations"]):
                    got[(beam, i)] = text

        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        decoded = call(port, "GET", "/health")[1]["decoded"]
    assert decoded["requests"] == 16 and decoded["batches"] < 16, decoded
    assert len(got) == 48
    for (beam, i), text in got.items():
        assert text == expected[beam][i], (beam, i)


@pytest.mark.parametrize(
    "body, status, names",
    [
        (b"{not json", 400, ["invalid JSON"]),
        (b"[1, 2]", 400, ["JSON object"]),
        ({"sentence": ["a"]}, 400, ["unknown field 'sentence'", "sentences"]),
        ({"sentences": "a dog"}, 400, ["'sentences'", "list of strings"]),
        ({"sentences": ["a"], "beam": 0}, 400, ["'beam'", "at least 1"]),
        ({"sentences": ["a"], "alpha": "high"}, 400, ["'alpha'", "a number"]),
        ({"sentences": ["a"] * 5}, 413, ["5 sentences", "--max-sentences"]),
        ({"sentences": ["a" * 41]}, 413, ["41 characters", "--max-chars"]),
    ],
)
def test_a_bad_request_gets_a_4xx_with_one_line(
    smoke: SmokeRun, body: object, status: int, names: list[str], request
) -> None:
    port = request.getfixturevalue("small_server")
    got, answer = call(port, "POST", "/translate", body)
    assert got == status
    assert "\n" not in answer["error"] and all(n in answer["error"] for n in names), answer
    assert call(port, "GET", "/nowhere")[0] == 404
    assert call(port, "POST", "/translate", {"sentences": []}) == (200, {"translations": []})


@pytest.fixture(scope="module")
def small_server(smoke: SmokeRun) -> Iterator[int]:
    with server(smoke, "--max-sentences", "4", "--max-chars", "40") as (_, port):
        yield port


def test_sigterm_answers_the_requests_in_flight_then_stops(smoke: SmokeRun) -> None:
    lines = read_lines(smoke.prepared / "valid.src.txt")[:8]
    answers: list[tuple[int, dict]] = []
    # the decoder waits 1.5 s for more requests: the request is in flight when SIGTERM comes
    with server(smoke, "--batch-wait-ms", "1500") as (proc, port):
        asking = threading.Thread(
            target=lambda: answers.append(call(port, "POST", "/translate", {"sentences": lines}))
        )
        asking.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        asking.join(timeout=60)
        assert proc.wait(timeout=60) == 0
        rest = proc.stderr.read()
    assert answers and answers[0][0] == 200 and len(answers[0][1]["translations"]) == 8
    assert "every request in flight was answered" in rest and "Traceback" not in rest
