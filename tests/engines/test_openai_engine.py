"""openai engine: against a real ``vllm serve`` on loopback, and retry logic against a
scripted HTTP server.

The scripted server (``ScriptedServer``) is a FAKE, a stand-in for a rate-limiting or
failing gateway: no real server can be made to answer 429 / 503 / hang on demand. Every
other test talks to a real ``vllm serve`` subprocess, killed for real in the last test.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from dataclasses import replace
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from pipeline.engines import EngineConfig, Request, RequestError, build_engine
from pipeline.engines.openai_engine import parse_retry_after, to_openai_messages
from pipeline.sampling.prompts import user_message
from tests.engine_fixtures import VLLMServer, image_bytes, make_image, make_requests

SCORE_TOL = 1e-4  # float32 server vs float32 transformers; observed ~1e-6


# --- a scripted HTTP server (fake) -----------------------------------------------------


class ScriptedServer:
    """FAKE chat-completions endpoint answering from a script of (status, headers, delay).

    Records the arrival time of every request and the largest number in flight.
    """

    def __init__(self, script: list[tuple[int, dict, float]], refuse_formats: tuple = ()):
        self.script = list(script)
        self.bodies: list[dict] = []
        self.refuse_formats = set(refuse_formats)  # response_format types answered with 400
        self.arrivals: list[float] = []
        self.bodies: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    outer.arrivals.append(time.monotonic())
                    outer.bodies.append(body)
                    status, headers, delay = outer.script.pop(0) if outer.script else (200, {}, 0.0)
                    if (body.get("response_format") or {}).get("type") in outer.refuse_formats:
                        status = 400  # a server that does not know this response_format
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                    counted = True
                try:
                    time.sleep(delay)
                    if status == 200:
                        payload = {
                            "choices": [
                                {
                                    "index": i,
                                    "message": {"content": f"ok {i}"},
                                    "finish_reason": "stop",
                                }
                                for i in range(body["n"])
                            ],
                            "usage": {"prompt_tokens": 7},
                        }
                    else:
                        payload = {"error": {"message": f"scripted {status}"}}
                    data = json.dumps(payload).encode()
                    # Done before the bytes go out: once the client has its answer it may
                    # send the next request at once, and a count dropped after the write
                    # raced with it (CI saw 3 in flight under a limit of 2).
                    with lock:
                        outer.in_flight -= 1
                        counted = False
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # client timed out
                    pass
                finally:
                    with lock:
                        if counted:
                            outer.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _engine(base_url, **kw):
    cfg = {
        "engine": "openai",
        "model": "m",
        "base_url": base_url,
        "max_retries": 2,
        "retry_backoff_s": 0.05,
        "retry_backoff_max_s": 2.0,
        "timeout_s": 5.0,
        "concurrency": 2,
    }
    cfg.update(kw)
    return build_engine(EngineConfig(**cfg))


@pytest.fixture
def scripted():
    servers = []

    def start(script, **kw):
        servers.append(ScriptedServer(script, **kw))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_retry_after_is_honoured(scripted):
    server = scripted([(429, {"Retry-After": "1"}, 0.0), (200, {}, 0.0)])
    eng = _engine(server.base_url)
    (result,) = eng.sample(make_requests(1), n=2, max_tokens=4)
    assert result.error is None and [c.text for c in result.completions] == ["ok 0", "ok 1"]
    assert len(server.arrivals) == 2
    assert server.arrivals[1] - server.arrivals[0] >= 1.0  # waited as the server asked


def test_retries_run_out_with_a_clear_error(scripted):
    server = scripted([(503, {}, 0.0)] * 3)
    eng = _engine(server.base_url, max_retries=2)
    (result,) = eng.sample(make_requests(1), n=1, max_tokens=4)
    assert len(server.arrivals) == 3  # 1 try + 2 retries, then stop
    assert result.completions == []
    assert "'q0'" in result.error and "after 3 attempt(s)" in result.error
    assert "HTTP 503" in result.error


def test_client_errors_are_not_retried(scripted):
    server = scripted([(400, {}, 0.0)])
    eng = _engine(server.base_url)
    results = eng.sample(make_requests(2), n=1, max_tokens=4)
    assert len(server.arrivals) == 2  # the 400 once, the other request once
    errors = [r.error for r in results if r.error]
    assert len(errors) == 1 and "HTTP 400" in errors[0]


def test_timeouts_are_retried_then_reported(scripted):
    server = scripted([(200, {}, 3.0), (200, {}, 3.0)])
    eng = _engine(server.base_url, timeout_s=0.5, max_retries=1)
    (result,) = eng.sample(make_requests(1), n=1, max_tokens=4)
    assert len(server.arrivals) == 2
    assert "'q0'" in result.error and "timed out" in result.error


def test_concurrency_is_bounded(scripted):
    server = scripted([(200, {}, 0.3)] * 6)
    eng = _engine(server.base_url, concurrency=2)
    results = eng.sample(make_requests(6), n=1, max_tokens=4)
    assert all(r.error is None for r in results)
    assert server.max_in_flight <= 2


def test_per_completion_seeds_go_one_request_each(scripted):
    server = scripted([])
    engine = _engine(server.base_url)
    (req,) = make_requests(1)
    (res,) = engine.sample([replace(req, seeds=(7, 8, 9))], n=3, seed=1, max_tokens=4)
    assert len(res.completions) == 3 and res.error is None
    assert sorted((b["n"], b["seed"]) for b in server.bodies) == [(1, 7), (1, 8), (1, 9)]
    assert all("exact_seed" not in b for b in server.bodies)


SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}


def test_a_schema_is_sent_as_response_format(scripted):
    server = scripted([])
    engine = _engine(server.base_url)
    engine.sample(make_text_requests(2), n=1, max_tokens=4, json_schema=SCHEMA)
    engine.sample(make_text_requests(1), n=1, max_tokens=4)  # no schema: no response_format
    formats = [b.get("response_format") for b in server.bodies]
    assert formats[:2] == [{"type": "json_schema",
                            "json_schema": {"name": "response", "schema": SCHEMA, "strict": True}}] * 2
    assert formats[2] is None


def test_a_refused_response_format_falls_back_once_for_the_run(scripted):
    """FAKE server that answers 400 to json_schema and json_object: the engine steps down
    the configured fallbacks, then sends the working one from the start."""
    server = scripted([], refuse_formats=("json_schema", "json_object"))
    engine = _engine(server.base_url, concurrency=1,
                     response_format_fallback=["json_object", "none"])
    first = engine.sample(make_text_requests(1), n=1, max_tokens=4, json_schema=SCHEMA)
    assert first[0].error is None
    kinds = [(b.get("response_format") or {}).get("type") for b in server.bodies]
    assert kinds == ["json_schema", "json_object", None]
    assert engine.format_mode == "none"
    later = engine.sample(make_text_requests(2), n=1, max_tokens=4, json_schema=SCHEMA)
    assert all(r.error is None for r in later)
    assert [b.get("response_format") for b in server.bodies[3:]] == [None, None]


def test_without_a_fallback_the_refusal_is_the_requests_error(scripted):
    server = scripted([], refuse_formats=("json_schema",))
    engine = _engine(server.base_url, response_format_fallback=[])
    (out,) = engine.sample(make_text_requests(1), n=1, max_tokens=4, json_schema=SCHEMA)
    assert out.error and "HTTP 400" in out.error and len(server.bodies) == 1


def make_text_requests(k: int) -> list[Request]:
    return [Request(messages=user_message(f"question {i}", n_images=0), images=[], id=f"t{i}")
            for i in range(k)]


def test_parse_retry_after():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    later = parse_retry_after(formatdate(time.time() + 30, usegmt=True))
    assert 25 <= later <= 31


def test_messages_carry_images_as_data_urls():
    from PIL import Image

    img = make_image(4, (64, 48))
    request = Request(messages=user_message("What?"), images=[image_bytes(img, "JPEG")], id="x")
    (message,) = to_openai_messages(request)
    part, text = message["content"]
    assert text == {"type": "text", "text": "What?"}
    url = part["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.size == (64, 48)
    with pytest.raises(RequestError, match="more images"):
        to_openai_messages(Request(messages=user_message("?"), images=[img, img]))


def test_score_is_not_supported():
    eng = _engine("http://127.0.0.1:9/v1")
    with pytest.raises(NotImplementedError, match="teacher-force"):
        eng.score(make_requests(1), [[1, 2]])


# --- a real vllm serve -------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    """This module's own server: the last test kills it."""
    pytest.importorskip("vllm")
    s = VLLMServer(tiny_models[0], tmp_path_factory.mktemp("openai") / "server.log")
    yield s
    s.stop()


def _real(server, **kw):
    cfg = {
        "engine": "openai",
        "model": server.model,
        "base_url": server.base_url,
        "extra_body": {"return_token_ids": True},
        "max_retries": 2,
        "retry_backoff_s": 0.1,
        "timeout_s": 60.0,
        "concurrency": 2,
    }
    cfg.update(kw)
    return build_engine(EngineConfig(**cfg))


@pytest.mark.slow
def test_real_server_n_completions_and_logprobs(server, tiny_models):
    requests = make_requests(3, as_bytes=True)
    eng = _real(server)
    results = eng.sample(requests, n=3, temperature=1.0, max_tokens=8, seed=0, logprobs=True)
    torch.set_num_threads(1)
    hf = build_engine(EngineConfig(engine="transformers", model=str(tiny_models[0])))
    hf_prompt = hf.sample(requests, n=1, temperature=0, max_tokens=1)
    for r, h in zip(results, hf_prompt):
        assert r.error is None and len(r.completions) == 3
        assert r.prompt_tokens == h.prompt_tokens  # same template + image tokens over HTTP
        for c in r.completions:
            assert 1 <= len(c.token_ids) <= 8 and len(c.logprobs) == len(c.token_ids)
    flat_requests = [r for r, res in zip(requests, results) for _ in res.completions]
    flat = [c for res in results for c in res.completions]
    scores = hf.score(flat_requests, [c.token_ids for c in flat])
    for c, s in zip(flat, scores):
        assert max(abs(a - b) for a, b in zip(c.logprobs, s)) < SCORE_TOL


@pytest.mark.slow
def test_real_server_bad_requests_fail_alone(server):
    good = make_requests(2)
    corrupt = Request(messages=user_message("What?"), images=[b"\xff\xd8 not a jpeg"], id="bad")
    too_long = Request(
        messages=user_message("What is the value? " * 40), images=[make_image(1)], id="too-long"
    )
    results = _real(server).sample([good[0], corrupt, too_long, good[1]], n=2, max_tokens=4)
    assert results[0].error is None and len(results[0].completions) == 2
    assert results[3].error is None and len(results[3].completions) == 2
    assert "'bad'" in results[1].error and "not decodable" in results[1].error
    # the server refuses it (HTTP 400, context length) and the client does not retry it
    assert "'too-long'" in results[2].error and "HTTP 400" in results[2].error


@pytest.mark.slow
def test_server_killed_mid_batch(server):
    """Kill -9 the server once a first answer has reached the client: the batch must
    return (no hang), answered requests keep their completions, the rest fail naming
    themselves."""
    eng = _real(server, concurrency=1, max_retries=2, timeout_s=20.0)
    # The trigger is the client holding a whole answer. The server's access log is not:
    # uvicorn logs "200" when the headers go out, so a kill that lands before the body
    # is sent leaves no request answered (a CI flake).
    first_answer = threading.Event()
    post = eng._post

    def post_then_signal(payload):
        data = post(payload)
        first_answer.set()
        return data

    eng._post = post_then_signal
    requests = make_requests(12)
    box: dict = {}
    worker = threading.Thread(
        target=lambda: box.setdefault(
            "results",
            eng.sample(requests, n=4, temperature=1.0, max_tokens=120, seed=0, ignore_eos=True),
        ),
        daemon=True,
    )
    worker.start()
    assert first_answer.wait(timeout=120), "no request answered:\n" + server.log_tail()
    assert worker.is_alive(), "the batch finished before the server could be killed"
    server.kill()
    worker.join(timeout=120)  # bounded: timeouts and retries are all finite
    assert not worker.is_alive(), "sample() hung after the server died"
    results = box["results"]
    done = [r for r in results if r.error is None]
    failed = [(q, r) for q, r in zip(requests, results) if r.error]
    assert done and all(len(r.completions) == 4 for r in done)
    assert failed
    for q, r in failed:
        assert f"'{q.id}'" in r.error and "after 3 attempt(s)" in r.error
        assert "connection error" in r.error or "timed out" in r.error
