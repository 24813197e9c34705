"""--model openai against a REAL OpenAI-compatible server: ``transformers serve`` on a tiny random
Qwen2-VL built here, on a free local port, behind a small recording / fault-injecting proxy (so the
tests see exactly what the server received). One server per module; stopped at the end.

``transformers serve`` lists only hub-cache models on /v1/models (and fails with HTTP 500 when the
hub cache folder does not exist): the server gets an empty HF_HUB_CACHE, lists nothing, and the
adapter's image probe is what shows the model is served (docs/served.md)."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from hf_tiny import build_tiny_hf  # noqa: E402

from harness.cli import main  # noqa: E402

pytestmark = pytest.mark.slow  # a real server process

ROOT = Path(__file__).resolve().parents[1]
SERVE = Path(sys.executable).parent / "transformers"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``transformers serve DIR`` as a subprocess that can be killed and started again on its port."""

    def __init__(self, model_dir: Path, hub: Path, log: Path, extra: list[str] | None = None):
        self.model_dir, self.hub, self.log, self.port = model_dir, hub, log, _free_port()
        self.extra = list(extra or [])
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(self.hub), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([str(SERVE), "serve", str(self.model_dir), "--port", str(self.port),
                                      "--host", "127.0.0.1", "--device", "cpu", *self.extra],
                                     stdout=self.log.open("a"), stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v1/models", timeout=2)
                return
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        raise AssertionError("transformers serve did not come up:\n" + self.log.read_text()[-2000:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: only what this test started
            self.proc.wait(30)
        self.proc = None


class Proxy:
    """Forwards to the server; records every request body; answers ``faults`` (HTTP statuses) first;
    calls ``on_post(n)`` before forwarding the n-th chat request."""

    def __init__(self, backend: int):
        self.backend, self.bodies, self.faults, self.on_post = backend, [], [], None
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _forward(self, data: bytes | None):
                if data is not None:
                    with proxy.lock:
                        body = json.loads(data)
                        fault = proxy.faults.pop(0) if proxy.faults else None
                        if fault is None:
                            proxy.bodies.append(body)
                            n = len(proxy.bodies)
                    if fault is not None:
                        self.send_response(fault)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    if proxy.on_post is not None:
                        proxy.on_post(n)
                req = urllib.request.Request(f"http://127.0.0.1:{proxy.backend}{self.path}", data=data,
                                             method=self.command, headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=120) as r:
                        status, payload = r.status, r.read()
                except urllib.error.HTTPError as e:
                    status, payload = e.code, e.read()
                except (urllib.error.URLError, OSError):
                    status, payload = 502, b"backend down"
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                self._forward(None)

            def do_POST(self):
                self._forward(self.rfile.read(int(self.headers["Content-Length"])))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def chats(self) -> list[dict]:
        """Recorded run requests (not the adapter's probes, which have max_tokens=1)."""
        return [b for b in self.bodies if b.get("max_tokens") != 1]

    def reset(self) -> None:
        with self.lock:
            self.bodies.clear()
            self.faults.clear()
            self.on_post = None


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_tiny_hf("qwen2_vl", tmp_path_factory.mktemp("served_model") / "qwen2_vl")


@pytest.fixture(scope="module")
def served(model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("served")
    (tmp / "hub").mkdir()
    server = Server(model_dir, tmp / "hub", tmp / "serve.log")
    server.start()
    proxy = Proxy(server.port)
    try:
        yield server, proxy
    finally:
        proxy.httpd.shutdown()
        server.stop()


@pytest.fixture
def proxy(served, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))  # each test its own response cache
    served[1].reset()
    yield served[1]
    served[1].reset()


TASK = ["--tasks", "easyvqa", "--task-arg", "num_beams=1", "--seeds", "0"]


def _run(capsys, proxy_or_url, out: Path, *extra: str) -> tuple[int, str]:
    url = proxy_or_url.url if isinstance(proxy_or_url, Proxy) else proxy_or_url
    capsys.readouterr()
    rc = main(["run", "-q", "--model", "openai", "--model-arg", f"base_url={url}", "--model-arg",
               f"model={_model_name[0]}", *TASK, "--output", str(out), *extra])
    err = capsys.readouterr().err
    return rc, "\n".join(line for line in err.splitlines() if line.startswith("error:")) or err


_model_name: list[str] = []


@pytest.fixture(autouse=True)
def _name(model_dir):
    _model_name[:] = [str(model_dir)]


def _records(out: Path, shots: int) -> dict[str, dict]:
    (path,) = out.glob(f"*/easyvqa/{shots}shot_seed0/predictions.jsonl")
    return {r["query_id"]: r for r in map(json.loads, path.read_text().splitlines())}


def _metrics(out: Path, shots: int) -> dict:
    (path,) = out.glob(f"*/easyvqa/{shots}shot_seed0/metrics.json")
    return json.loads(path.read_text())


def _images_of(content: list[dict]) -> list[bytes]:
    return [base64.b64decode(p["image_url"]["url"].split(",", 1)[1]) for p in content if p["type"] == "image_url"]


def test_zero_and_two_shots_send_demo_images_in_order_as_original_bytes(proxy, tmp_path, capsys):
    rc, err = _run(capsys, proxy, tmp_path / "out", "--shots", "0", "2", "--limit", "3")
    assert rc == 0, err
    sent = proxy.chats()
    assert len(sent) == 6
    # the probes: one image (pre-run), then the most a prompt holds (2 demos + the query) before those go out
    probes = [len(_all_images(b)) for b in proxy.bodies if b["max_tokens"] == 1 and len(b["messages"]) == 1
              and isinstance(b["messages"][0]["content"], list)]
    assert probes == [1, 3]
    for shots in (0, 2):
        for r in _records(tmp_path / "out", shots).values():
            msgs = json.loads(r["prompt"])  # the messages as sent, each image named by its path
            files = [Path(p["image_url"]["url"]).read_bytes() for m in msgs if not isinstance(m["content"], str)
                     for p in m["content"] if p["type"] == "image_url"]
            matches = [b for b in sent if _texts(b) == _texts(msgs) and _all_images(b) == files]
            assert matches, "the server never received this record's prompt with its images"
            body = matches[0]
            # easyvqa at 0 shots keeps the paper's two text-only demos: turns, but no demo images
            assert [m["role"] for m in body["messages"]] == ["user", "assistant"] * 2 + ["user"]
            users = [m for m in body["messages"] if m["role"] == "user"]
            want_users = [m for m in msgs if m["role"] == "user"]
            # each turn's own image(s), in order, byte for byte the original file
            for got, want in zip(users, want_users):
                files = [Path(p["image_url"]["url"]).read_bytes() for p in want["content"]
                         if p["type"] == "image_url"]
                assert _images_of(got["content"]) == files
            assert [len(_images_of(u["content"])) for u in users] == ([0, 0, 1] if shots == 0 else [1, 1, 1])
            demo_files = [p["image_url"]["url"] for m in want_users[:-1] for p in m["content"]
                          if p["type"] == "image_url"]
            assert len(set(demo_files)) == len(demo_files) == (0 if shots == 0 else 2)
            assert body["temperature"] == 0 and body["model"] == _model_name[0]
    m = _metrics(tmp_path / "out", 2)
    records = _records(tmp_path / "out", 2).values()
    # token usage per sample, and the cell's sum in model_stats
    assert all(r["usage"]["prompt_tokens"] > 0 and r["usage"]["completion_tokens"] > 0 for r in records)
    assert m["model_stats"]["requests"] == 3
    assert m["model_stats"]["prompt_tokens"] == sum(r["usage"]["prompt_tokens"] for r in records)
    assert m["model_stats"]["completion_tokens"] == sum(r["usage"]["completion_tokens"] for r in records)
    model = m["config"]["model"]
    assert model["base_url"] == proxy.url and model["served_model"] == _model_name[0]
    assert "api_key_env" not in model["options"] and model["fingerprint"].startswith("served-")


def _texts(body_or_msgs) -> list[str]:
    msgs = body_or_msgs["messages"] if isinstance(body_or_msgs, dict) else body_or_msgs
    out = []
    for m in msgs:
        c = m["content"]
        out.append(c if isinstance(c, str) else "".join(p.get("text", "") for p in c))
    return out


def _all_images(body) -> list[bytes]:
    return [x for m in body["messages"] if not isinstance(m["content"], str) for x in _images_of(m["content"])]


def test_greedy_answers_equal_hf_on_the_same_checkpoint(proxy, model_dir, tmp_path, capsys):
    rc, err = _run(capsys, proxy, tmp_path / "served", "--shots", "0", "2", "--limit", "4")
    assert rc == 0, err
    capsys.readouterr()
    assert main(["run", "-q", "--model", "hf", "--model-arg", f"path={model_dir}", *TASK, "--shots", "0", "2",
                 "--limit", "4", "--output", str(tmp_path / "hf")]) == 0
    for shots in (0, 2):
        served, hf = _records(tmp_path / "served", shots), _records(tmp_path / "hf", shots)
        assert served.keys() == hf.keys()
        assert {q: r["raw_output"] for q, r in served.items()} == {q: r["raw_output"] for q, r in hf.items()}
        assert any(r["raw_output"] for r in hf.values())  # parity on text, not on empty answers


def test_interleaved_format_is_one_user_message_with_images_in_order(proxy, tmp_path, capsys):
    rc, err = _run(capsys, proxy, tmp_path / "out", "--shots", "2", "--limit", "2",
                   "--model-arg", "prompt_format=interleaved")
    assert rc == 0, err
    for r in _records(tmp_path / "out", 2).values():
        (msg,) = json.loads(r["prompt"])
        kinds = [p["type"] for p in msg["content"]]
        assert kinds == ["image_url", "text"] * 3  # each chunk: its image, then its text
        files = [Path(p["image_url"]["url"]).read_bytes() for p in msg["content"] if p["type"] == "image_url"]
        assert any(_all_images(b) == files and len(b["messages"]) == 1 for b in proxy.chats())


def _strip(records: dict[str, dict]) -> dict[str, tuple]:
    return {q: (r["prompt"], r["raw_output"], r["prediction"], r["score"], r.get("error")) for q, r in records.items()}


def test_concurrency_gives_the_same_records_and_the_cache_answers_a_rerun(proxy, tmp_path, capsys, monkeypatch):
    runs = {}
    for c in (1, 4):
        monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / f"cache{c}"))
        rc, err = _run(capsys, proxy, tmp_path / f"c{c}", "--shots", "2", "--limit", "6", "--batch-size", "6",
                       "--model-arg", f"concurrency={c}")
        assert rc == 0, err
        runs[c] = _records(tmp_path / f"c{c}", 2)
    assert _strip(runs[1]) == _strip(runs[4])
    # a rerun into a new folder with concurrency 4's cache pays for nothing
    proxy.reset()
    rc, err = _run(capsys, proxy, tmp_path / "again", "--shots", "2", "--limit", "6", "--batch-size", "6",
                   "--model-arg", "concurrency=4")
    assert rc == 0, err
    assert proxy.chats() == []
    stats = _metrics(tmp_path / "again", 2)["model_stats"]
    assert stats["response_cache_hits"] == 6 and stats["response_cache_misses"] == 0
    assert _strip(_records(tmp_path / "again", 2)) == _strip(runs[4])


def test_429_and_500_are_retried(proxy, tmp_path, capsys):
    ok_rc, err = _run(capsys, proxy, tmp_path / "clean", "--shots", "2", "--limit", "3",
                      "--model-arg", "cache=false")
    assert ok_rc == 0, err
    clean = _records(tmp_path / "clean", 2)
    proxy.reset()

    def arm(n):
        # once the first run request is through (after the probes), the next requests get 429,
        # 500 and 503 before the server sees them
        if len(proxy.chats()) == 1:
            with proxy.lock:
                proxy.faults.extend([429, 500, 503])
            proxy.on_post = None

    proxy.on_post = arm
    rc, err = _run(capsys, proxy, tmp_path / "faults", "--shots", "2", "--limit", "3",
                   "--model-arg", "cache=false", "--model-arg", "concurrency=2", "--batch-size", "3")
    assert rc == 0, err
    stats = _metrics(tmp_path / "faults", 2)["model_stats"]
    assert stats["retries"] == 3 and stats["requests"] == 3
    assert _strip(_records(tmp_path / "faults", 2)) == _strip(clean)


def test_server_killed_mid_run_then_restarted_resumes_with_nothing_lost(served, proxy, tmp_path, capsys):
    server = served[0]
    full_rc, err = _run(capsys, proxy, tmp_path / "whole", "--shots", "2", "--limit", "6", "--batch-size", "2",
                        "--model-arg", "cache=false")
    assert full_rc == 0, err
    whole = _records(tmp_path / "whole", 2)
    proxy.reset()

    def kill(n):
        if len(proxy.chats()) == 4 + 1:  # two batches of two done: the third batch finds the server gone
            server.stop()

    proxy.on_post = kill
    try:
        rc, err = _run(capsys, proxy, tmp_path / "out", "--shots", "2", "--limit", "6", "--batch-size", "2",
                       "--model-arg", "max_retries=1")
        assert rc != 0 and "rerun the same command to resume" in err, err
    finally:
        server.start()
    (journal,) = (tmp_path / "out").glob("*/easyvqa/2shot_seed0/predictions.jsonl")
    journaled = {json.loads(line)["query_id"] for line in journal.read_text().splitlines()}
    assert len(journaled) == 4
    proxy.reset()
    rc, err = _run(capsys, proxy, tmp_path / "out", "--shots", "2", "--limit", "6", "--batch-size", "2",
                   "--model-arg", "max_retries=1")
    assert rc == 0, err
    # resume sends only what is missing: the two samples of the unfinished batch
    assert len(proxy.chats()) == 2
    assert _strip(_records(tmp_path / "out", 2)) == _strip(whole)


def test_close_ended_task_refused_before_any_request(proxy, tmp_path, capsys):
    from conftest_video import write_hateful

    data = write_hateful(tmp_path / "data")
    capsys.readouterr()
    rc = main(["run", "-q", "--model", "openai", "--model-arg", f"base_url={proxy.url}", "--model-arg",
               f"model={_model_name[0]}", "--tasks", "hateful_memes", "--data-dir", str(data), "--shots", "0",
               "--limit", "2", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert "hateful_memes" in line and "prompt log-probabilities" in line
    assert proxy.chats() == []  # only the pre-run probes went out


@pytest.mark.parametrize("arg, says", [
    ("concurrency=0", "concurrency=0: must be >= 1"),
    ("timeout=-1", "timeout=-1.0: must be > 0"),
    ("api_key_env=NO_SUCH_KEY_VAR", "NO_SUCH_KEY_VAR: that environment variable is not set"),
    ("prompt_format=turns", "prompt_format"),
])
def test_bad_options_are_one_line_errors_before_any_request(proxy, tmp_path, capsys, arg, says):
    rc, err = _run(capsys, proxy, tmp_path / "out", "--shots", "0", "--limit", "1", "--model-arg", arg)
    assert rc == 2 and says in err and "\n" not in err.strip(), err
    assert proxy.bodies == []


def test_unreachable_server_and_unknown_model(proxy, tmp_path, capsys):
    rc, err = _run(capsys, f"http://127.0.0.1:{_free_port()}/v1", tmp_path / "a", "--shots", "0", "--limit", "1")
    assert rc == 2 and "does not answer" in err, err
    _model_name[:] = ["no-such-model"]
    rc, err = _run(capsys, proxy, tmp_path / "b", "--shots", "0", "--limit", "1")
    assert rc == 2 and "no-such-model" in err and "not served" in err, err
