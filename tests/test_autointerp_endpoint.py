"""EndpointLLM against a real `metalens serve` process on localhost, and against tiny local HTTP
servers that misbehave on purpose (500 then success, junk JSON, too slow)."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest

from metalens.autointerp.llm import EndpointLLM, LLMError, LocalLLM
from metalens.autointerp.simulate import simulate, value_choices
from metalens.testing import tiny_llama


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`metalens serve` on a saved tiny Llama, on a random free port; killed at the end."""
    tiny = tiny_llama(seed=3)
    path = tmp_path_factory.mktemp("tiny-model")
    tiny.model.save_pretrained(path)
    tiny.tokenizer.save_pretrained(path)
    port = free_port()
    exe = Path(sys.executable).parent / "metalens"
    log = open(path / "serve.log", "w")
    proc = subprocess.Popen(
        [str(exe), "serve", "--model", str(path), "--device", "cpu", "--port", str(port), "--max-logprobs", "400"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"metalens serve exited with {proc.returncode}: {(path / 'serve.log').read_text()[-2000:]}")
            try:
                if httpx.get(url + "/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError("metalens serve did not come up within 120 s")
            time.sleep(0.3)
        yield url, tiny
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def test_serve_models_and_chat(served):
    url, _ = served
    assert httpx.get(url + "/models", timeout=10).json()["data"][0]["id"]
    llm = EndpointLLM(base_url=url, timeout=60, logprobs=400)
    out = llm.generate([[{"role": "user", "content": "hi"}]] * 2, max_tokens=4, temperature=1.0, seed=1, n=2)
    assert len(out) == 2 and all(len(x) == 2 and all(isinstance(t, str) for t in x) for x in out)
    r = httpx.post(url + "/chat/completions", json={"messages": "nope"}, timeout=10)
    assert r.status_code == 400 and "messages" in r.text


def test_endpoint_probs_equal_local(served):
    """The same model through HTTP (echo + top-k logprobs) and in-process (logits) gives the same numbers."""
    url, tiny = served
    local, remote = LocalLLM(tiny), EndpointLLM(base_url=url, timeout=60, logprobs=400)
    toks = [["The", " cat", " sat", "\n", "."], ["a", "b", "c"]]
    a = simulate(local, "cats", toks, max_value=9)
    b = simulate(remote, "cats", toks, max_value=9)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=1e-4)
    p = "Is it? Answer:"
    pl = local.position_probs([(p, [len(p), 3])], ["Y", "N"])[0]
    pr = remote.position_probs([(p, [len(p), 3])], ["Y", "N"])[0]
    np.testing.assert_allclose(pl, pr, rtol=1e-3, atol=1e-6)
    assert remote.n_tokens("hello") == local.n_tokens("hello") == 5
    # cached: asking again sends nothing
    before = remote.n_requests
    simulate(remote, "cats", toks, max_value=9)
    assert remote.n_requests == before


class Script:
    """A tiny real HTTP server whose replies follow a script: a list of (status, body, delay_s)."""

    def __init__(self, replies):
        self.replies, self.calls = list(replies), 0
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, body, delay = outer.replies[min(outer.calls, len(outer.replies) - 1)]
                outer.calls += 1
                time.sleep(delay)
                data = body.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


CHAT_OK = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "months of the year"}}]})


def test_500_then_success_retries():
    srv = Script([(500, "overloaded", 0), (503, "busy", 0), (200, CHAT_OK, 0)])
    try:
        llm = EndpointLLM(base_url=srv.url, max_retries=3, backoff=0.01, timeout=5)
        assert llm.generate([[{"role": "user", "content": "x"}]]) == [["months of the year"]]
        assert srv.calls == 3
        llm.generate([[{"role": "user", "content": "x"}]])  # cached
        assert srv.calls == 3
    finally:
        srv.close()


def test_500_forever_gives_up_with_clear_error():
    srv = Script([(500, "down", 0)])
    try:
        llm = EndpointLLM(base_url=srv.url, max_retries=2, backoff=0.01, timeout=5)
        with pytest.raises(LLMError, match=r"failed after 3 attempts.*HTTP 500"):
            llm.generate([[{"role": "user", "content": "x"}]])
        assert srv.calls == 3
    finally:
        srv.close()


def test_junk_json_is_a_clear_error():
    srv = Script([(200, "<html>not json at all", 0)])
    try:
        llm = EndpointLLM(base_url=srv.url, max_retries=2, backoff=0.01, timeout=5)
        with pytest.raises(LLMError, match="not JSON.*<html>"):
            llm.generate([[{"role": "user", "content": "x"}]])
    finally:
        srv.close()
    srv = Script([(200, json.dumps({"choices": [{"text": "x"}]}), 0)])
    try:
        llm = EndpointLLM(base_url=srv.url, max_retries=0, timeout=5)
        with pytest.raises(LLMError, match="echo logprobs"):
            llm.position_probs([("a\tb", [2])], value_choices(9))
    finally:
        srv.close()


def test_timeout_retries_then_succeeds_or_fails():
    srv = Script([(200, CHAT_OK, 2.0), (200, CHAT_OK, 0)])
    try:
        llm = EndpointLLM(base_url=srv.url, max_retries=1, backoff=0.01, timeout=0.5)
        assert llm.generate([[{"role": "user", "content": "x"}]]) == [["months of the year"]]
        assert srv.calls == 2
    finally:
        srv.close()
    srv = Script([(200, CHAT_OK, 2.0)])
    try:
        llm = EndpointLLM(base_url=srv.url, max_retries=1, backoff=0.01, timeout=0.3)
        with pytest.raises(LLMError, match="timed out"):
            llm.generate([[{"role": "user", "content": "x"}]])
    finally:
        srv.close()


def test_connection_refused_is_clear():
    llm = EndpointLLM(base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=1, backoff=0.01, timeout=2)
    with pytest.raises(LLMError, match="connection failed"):
        llm.generate([[{"role": "user", "content": "x"}]])
