"""`nmt serve`: translations over HTTP with a JSON API, from a model loaded once (the standard
library's ThreadingHTTPServer: no dependency beyond nmt's own).

    POST /translate {"sentences": ["A dog runs.", ...], "beam": 5, ...} -> {"translations": [...]}
    GET /health -> {"status": "ok", "checkpoint": ..., "source": "en", "target": "de"}

Each request is answered by its own thread, but one batcher thread decodes: it takes the requests
that arrive within `wait_ms` of each other (up to `max_batch` sentences) and translates those with
the same decode settings together, as `nmt translate` translates a chunk of lines, so a request's
translations are the ones `nmt translate` gives for the same lines. What a client gets wrong (bad
JSON, an unknown field, a wrong type, too many or too long sentences) is a 4xx with a one-line
message; SIGTERM or Ctrl-C stops taking requests, answers the ones in flight, then exits.
"""

from __future__ import annotations

import json
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

from nmt.config import DecodeOptions
from nmt.errors import NmtError
from nmt.translate import Runtime, Translator, load_translator, translate_lines

# request fields beside "sentences": the decode options, with their types and least values
OPTIONS: dict[str, tuple[type, Optional[float]]] = {
    "beam": (int, 1),
    "alpha": (float, 0.0),
    "max_len_a": (float, 0.0),
    "max_len_b": (int, 1),
    "no_repeat_ngram": (int, 0),
    "early_exit": (bool, None),
}


@dataclass(frozen=True)
class Limits:
    """What one request may ask, and how the batcher gathers requests."""

    max_sentences: int = 64  # per request
    max_chars: int = 1000  # per sentence
    max_body: int = 1 << 20  # bytes of a request's JSON
    wait_ms: float = 5.0  # how long the batcher waits for more requests to decode together
    max_batch: int = 256  # sentences decoded together at most


class ClientError(Exception):
    """A request the server cannot answer as asked: its status and one line saying why."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Job:
    """One request's sentences and options, and, once decoded, their translations."""

    lines: list[str]
    options: DecodeOptions
    done: threading.Event = field(default_factory=threading.Event)
    translations: Optional[list[str]] = None
    error: Optional[BaseException] = None


def parse_request(body: bytes, limits: Limits) -> Job:
    """A /translate request's JSON -> its Job, or a ClientError naming what is wrong."""
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ClientError(HTTPStatus.BAD_REQUEST, f"invalid JSON: {e}") from None
    if not isinstance(request, dict):
        raise ClientError(HTTPStatus.BAD_REQUEST, "expected a JSON object with 'sentences'")
    unknown = sorted(set(request) - {"sentences", *OPTIONS})
    if unknown:
        known = ", ".join(["sentences", *OPTIONS])
        raise ClientError(HTTPStatus.BAD_REQUEST, f"unknown field '{unknown[0]}'; known: {known}")
    sentences = request.get("sentences")
    if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
        raise ClientError(HTTPStatus.BAD_REQUEST, "'sentences' must be a list of strings")
    if len(sentences) > limits.max_sentences:
        raise ClientError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"{len(sentences)} sentences; at most {limits.max_sentences} a request "
            "(--max-sentences)",
        )
    for i, s in enumerate(sentences):
        if len(s) > limits.max_chars:
            raise ClientError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"sentence {i} has {len(s)} characters; at most {limits.max_chars} (--max-chars)",
            )
    options = {k: checked(k, v) for k, v in request.items() if k in OPTIONS}
    # as nmt translate cleans a line: surrounding whitespace stripped, inner runs made one space
    lines = [" ".join(s.lstrip("\ufeff").split()) for s in sentences]
    return Job(lines, DecodeOptions(**options))


def checked(name: str, value: Any) -> Any:
    """A decode option's value, of its type and at least its least value."""
    kind, least = OPTIONS[name]
    ok = isinstance(value, bool) if kind is bool else (
        isinstance(value, (int, float)) and not isinstance(value, bool)
        and (kind is float or float(value).is_integer())
    )  # fmt: skip
    if not ok or (least is not None and value < least):
        want = {bool: "true or false", int: "an integer", float: "a number"}[kind]
        bound = f" of at least {least:g}" if least is not None else ""
        raise ClientError(
            HTTPStatus.BAD_REQUEST, f"'{name}': expected {want}{bound}, got {value!r}"
        )
    return kind(value)


class Batcher(threading.Thread):
    """The one thread that decodes: requests that arrive together are translated together."""

    def __init__(self, tr: Translator, limits: Limits):
        super().__init__(name="nmt-batcher", daemon=True)
        self.tr, self.limits = tr, limits
        self.jobs: queue.Queue[Optional[Job]] = queue.Queue()
        self.decoded = {"requests": 0, "batches": 0}  # what GET /health reports

    def translate(self, job: Job) -> list[str]:
        """Queue `job` and wait for its translations (from a request's thread)."""
        self.jobs.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.translations or []

    def stop(self) -> None:
        """Finish the jobs queued so far, then end."""
        self.jobs.put(None)
        self.join()

    def run(self) -> None:
        while (first := self.jobs.get()) is not None:
            batch, stopping = self.gather(first)
            by_options: dict[DecodeOptions, list[Job]] = {}
            for job in batch:
                by_options.setdefault(job.options, []).append(job)
            for options, jobs in by_options.items():
                self.decode(options, jobs)
            if stopping:
                return

    def gather(self, first: Job) -> tuple[list[Job], bool]:
        """`first` and the jobs that come within wait_ms, up to max_batch sentences; True when the
        stop signal came among them."""
        batch, size = [first], len(first.lines)
        deadline = time.monotonic() + self.limits.wait_ms / 1000
        while size < self.limits.max_batch:
            try:
                job = self.jobs.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            if job is None:
                return batch, True
            batch.append(job)
            size += len(job.lines)
        return batch, False

    def decode(self, options: DecodeOptions, jobs: list[Job]) -> None:
        """Translate the jobs' sentences as one list; each job gets its own back."""
        try:
            d = replace(options, nbest=1).apply(self.tr.cfg.decode)  # the best translation
            lines = [line for job in jobs for line in job.lines]
            hyps = translate_lines(self.tr, lines, self.tr.settings(d))
            texts = self.tr.tok.decode_tgt([h[0].tokens for h in hyps])
        except BaseException as e:  # noqa: BLE001 - every waiting request hears of it
            for job in jobs:
                job.error = e
                job.done.set()
            return
        self.decoded["requests"] += len(jobs)
        self.decoded["batches"] += 1
        start = 0
        for job in jobs:
            job.translations = texts[start : start + len(job.lines)]
            start += len(job.lines)
            job.done.set()


def handler(tr: Translator, batcher: Batcher, limits: Limits) -> type[BaseHTTPRequestHandler]:
    """The request handler class of a server decoding with `tr` through `batcher`."""
    health = {
        "status": "ok",
        "checkpoint": tr.path,
        **({"ensemble": list(tr.paths)} if len(tr.paths) > 1 else {}),
        "source": tr.cfg.data.src_lang,
        "target": tr.cfg.data.tgt_lang,
    }

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: a client may send many requests on one socket
        timeout = 5  # seconds an idle connection is kept (stopping waits for open ones)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path == "/health":
                self.reply(HTTPStatus.OK, {**health, "decoded": dict(batcher.decoded)})
            else:
                self.reply(HTTPStatus.NOT_FOUND, {"error": f"no {self.path}: GET /health"})

        def do_POST(self) -> None:  # noqa: N802
            try:
                if self.path != "/translate":
                    raise ClientError(HTTPStatus.NOT_FOUND, f"no {self.path}: POST /translate")
                job = parse_request(self.body(), limits)
                translations = batcher.translate(job) if job.lines else []  # nothing to decode
                self.reply(HTTPStatus.OK, {"translations": translations})
            except ClientError as e:
                self.reply(e.status, {"error": str(e)})
            except NmtError as e:
                self.reply(HTTPStatus.BAD_REQUEST, {"error": str(e)})
            except Exception as e:  # noqa: BLE001 - a bug: the client still hears of it in one line
                message = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                self.reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": message})

        def body(self) -> bytes:
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                raise ClientError(HTTPStatus.LENGTH_REQUIRED, "a request needs a Content-Length")
            if int(length) > limits.max_body:
                self.close_connection = True  # the unread body would be taken for a request
                raise ClientError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"{length} bytes; at most {limits.max_body} a request",
                )
            return self.rfile.read(int(length))

        def reply(self, status: HTTPStatus, payload: dict) -> None:
            data = (json.dumps(payload, ensure_ascii=False) + "\n").encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # no access log: a busy server would write a line per request

    return Handler


def serve(
    checkpoint: list[str], host: str, port: int, runtime: Runtime, limits: Limits = Limits()
) -> None:
    """Run the server until SIGTERM or Ctrl-C; then answer the requests in flight and return."""
    tr = load_translator(checkpoint, runtime.device, runtime.precision, runtime.workers)
    batcher = Batcher(tr, limits)
    batcher.start()
    try:
        server = ThreadingHTTPServer((host, port), handler(tr, batcher, limits))
    except OSError as e:
        raise NmtError(f"--host {host} --port {port}: cannot listen: {e.strerror or e}") from None
    server.daemon_threads = False  # server_close() waits for the requests in flight
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if not stop.is_set():
            stop.set()
            threading.Thread(target=server.shutdown).start()  # not from serve_forever's thread

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    where = server.server_address
    print(f"serving {tr.path} on http://{where[0]}:{where[1]}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()  # joins the request threads: their jobs are decoded first
        batcher.stop()
        for s, h in old.items():
            signal.signal(s, h)
    print("stopped: every request in flight was answered", file=sys.stderr)
