"""A model behind an OpenAI-compatible server (vLLM, SGLang, TGI, ``transformers serve``, hosted APIs).

``--model openai --model-arg base_url=http://host:8000/v1 --model-arg model=NAME`` sends each prompt
as chat messages (see docs/served.md):

- ``chat_turns`` (default): each demonstration is a user turn (its images, then its question stem)
  and an assistant turn (its answer), the query the last user turn - the ``hf`` adapter's chat format.
- ``interleaved``: one user message, each chunk's images followed by its text, in order.

Images go as data URLs of the original file bytes (never re-encoded); images without a file (dataset
rows) and video frames go as lossless PNG. Requests of a batch run concurrently (``concurrency`` in
flight), with jittered exponential back-off on 429/5xx/connection errors (a 429 pauses every worker).
Every answer is kept in a response cache keyed by the full request body, so a rerun, a resume after
a crash, or another shot count with the same prompt never pays twice.

Identity: a served model cannot be hashed, so its fingerprint is the base URL, the served name and
what ``/v1/models`` says about it (never the API key).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import mimetypes
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

from harness.cache import atomic_write, cache_root
from harness.errors import HarnessError, SampleError
from harness.model import Model
from harness.registry import register_model
from harness.store.identity import config_hash
from harness.types import GenerationConfig, LoglikelihoodRequest, Prompt, Video

log = logging.getLogger(__name__)

#: a 2x2 red PNG: the pre-run probe that the server takes images
_PROBE_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP8z8DAwMDAxMDAwMDAAAANHQEDasKb6QAAAABJRU5ErkJggg==")
_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_MAGIC = [(b"\x89PNG", "image/png"), (b"\xff\xd8", "image/jpeg"), (b"GIF8", "image/gif"), (b"RIFF", "image/webp"),
          (b"BM", "image/bmp")]


@dataclass(frozen=True)
class ServedOptions:
    """base_url: the server's OpenAI API root, e.g. http://localhost:8000/v1 (required).
    model: the served model name, as /v1/models lists it (required).
    api_key_env: name of the environment variable holding the API key (the key is never stored).
    concurrency: requests in flight at once (a batch's requests; set --batch-size >= concurrency).
    timeout: seconds one request may take before it is retried.
    max_retries: retries of a request on 429/5xx/connection errors before the run stops (resume later).
    prompt_format: chat_turns (a user+assistant turn per demo) or interleaved (one user message).
    system: a system prompt.
    max_images: most images one prompt may hold (what the server accepts); more is an error before any request.
    video_as_frames: send each video as its frames, in order, as images.
    cache: keep every answer in the response cache (under $HARNESS_CACHE/served)."""

    base_url: str = ""
    model: str = ""
    api_key_env: str = ""
    concurrency: int = 4
    timeout: float = 120.0
    max_retries: int = 5
    prompt_format: Literal["chat_turns", "interleaved"] = "chat_turns"
    system: str = ""
    max_images: int | None = None
    video_as_frames: bool = False
    cache: bool = True

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise HarnessError(f"model openai: base_url={self.base_url or '(none)'}: give the server's API root, "
                               f"e.g. --model-arg base_url=http://localhost:8000/v1")
        if not self.model:
            raise HarnessError("model openai: no model: give the served model name, --model-arg model=NAME "
                               "(as the server's /v1/models lists it)")
        if self.concurrency < 1:
            raise HarnessError(f"model openai: concurrency={self.concurrency}: must be >= 1")
        if self.timeout <= 0:
            raise HarnessError(f"model openai: timeout={self.timeout}: must be > 0 seconds")
        if self.max_retries < 0:
            raise HarnessError(f"model openai: max_retries={self.max_retries}: must be >= 0")
        if self.max_images is not None and self.max_images < 1:
            raise HarnessError(f"model openai: max_images={self.max_images}: must be >= 1")
        if self.api_key_env and not os.environ.get(self.api_key_env):
            raise HarnessError(f"model openai: api_key_env={self.api_key_env}: that environment variable is not "
                               f"set; export it with the API key, or drop api_key_env for a server without one")


class Answer(str):
    """A generated answer with the server's token usage for it (the runner records it per sample)."""

    usage: dict[str, int] = {}


class ServerDown(HarnessError):
    """The server stopped answering (after every retry): the run stops; rerun to resume."""


def _mime(data: bytes, path: str) -> str:
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    return mimetypes.guess_type(path)[0] or "application/octet-stream"


def _png(im: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@register_model("openai")
class Served(Model):
    """A model behind an OpenAI-compatible endpoint (chat completions), few-shot with image demos."""

    Options = ServedOptions
    template_style = "flamingo"
    # how requests are sent never changes an answer: outside the identity
    runtime_options = frozenset({"api_key_env", "concurrency", "timeout", "max_retries", "cache"})

    def __init__(self, options=None):
        super().__init__(options)
        import httpx

        self._httpx = httpx
        o = self.options
        self.base_url = o.base_url.rstrip("/")
        self.where = f"model openai ({o.model} at {self.base_url})"
        key = os.environ.get(o.api_key_env) if o.api_key_env else None
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._cache_dir = cache_root() / "served"
        self._lock = threading.Lock()
        self._counts = {"requests": 0, "response_cache_hits": 0, "response_cache_misses": 0, "retries": 0,
                        "prompt_tokens": 0, "completion_tokens": 0}
        self._pause_until = 0.0
        if o.video_as_frames:
            self.media_kinds = frozenset({"image", "video"})
        self.models_answer = self._check_server()
        self._fingerprint = "served-" + config_hash([self.base_url, o.model, self.models_answer])
        self._probe_images()
        self.scores_loglikelihood = self._probe_prompt_logprobs()

    # ---- pre-run checks -------------------------------------------------------------------
    def _sync(self, method: str, path: str, body: dict | None = None) -> Any:
        """One request outside the run (the pre-run checks): a refused connection is an error at once."""
        try:
            with self._httpx.Client(timeout=self.options.timeout, headers=self._headers) as client:
                r = client.request(method, self.base_url + path, json=body)
        except self._httpx.HTTPError as exc:
            raise HarnessError(f"{self.where}: the server does not answer ({type(exc).__name__}: {exc}); start it, "
                               f"or fix --model-arg base_url") from None
        if r.status_code in (401, 403):
            raise HarnessError(f"{self.where}: {path} refused the API key (HTTP {r.status_code}); set "
                               f"--model-arg api_key_env=VAR to the variable holding a valid key")
        return r

    def _check_server(self) -> dict[str, Any]:
        """The endpoint answers and the model exists; what /v1/models says about it (its identity)."""
        r = self._sync("GET", "/models")
        try:
            listed = r.json().get("data") or []
        except ValueError:
            listed = None
        if r.status_code != 200 or not isinstance(listed, list):
            raise HarnessError(f"{self.where}: GET /models answered HTTP {r.status_code}, not an OpenAI model list; "
                               f"is base_url the API root (it usually ends in /v1)?")
        entry = next((m for m in listed if isinstance(m, dict) and m.get("id") == self.options.model), None)
        if entry is None and listed:
            names = ", ".join(sorted(str(m.get("id")) for m in listed if isinstance(m, dict))[:10])
            raise HarnessError(f"{self.where}: the server does not serve {self.options.model!r} (it lists: {names}); "
                               f"fix --model-arg model")
        if entry is None:
            # transformers serve lists only hub-cache models, not one it was started on from a folder:
            # the image probe below is what shows the name is served
            log.warning("%s: /models lists nothing; the probe request checks the model instead", self.where)
            return {"id": self.options.model, "listed": False}
        # 'created' is the time of the request on some servers (vLLM): not part of what the model is
        return {k: v for k, v in entry.items() if k != "created"}

    def _probe_images(self, n: int = 1) -> None:
        """One request with ``n`` tiny images: the model is served and takes that many in a prompt."""
        url = "data:image/png;base64," + base64.b64encode(_PROBE_PNG).decode()
        parts = [{"type": "image_url", "image_url": {"url": url}}] * n
        body = {"model": self.options.model, "max_tokens": 1, "temperature": 0,
                "messages": [{"role": "user", "content": parts + [{"type": "text", "text": "What color is this?"}]}]}
        r = self._sync("POST", "/chat/completions", body)
        if r.status_code != 200 and n == 1:
            raise HarnessError(f"{self.where}: the probe request with one image failed (HTTP {r.status_code}: "
                               f"{r.text[:200]!r}); the model is not served, or it does not take images")
        if r.status_code != 200:
            raise HarnessError(f"{self.where}: a probe request with {n} images (the most one prompt of this cell "
                               f"holds) failed (HTTP {r.status_code}: {r.text[:200]!r}); use fewer shots, or raise "
                               f"the server's limit (vLLM: --limit-mm-per-prompt)")
        self._probed_images = max(getattr(self, "_probed_images", 0), n)

    def _check_image_count(self, bodies: list[dict]) -> None:
        """Before a batch goes out: probe once for each new largest image count (what a server allows
        per prompt is not in /v1/models)."""
        n = max((sum(isinstance(c, dict) and c.get("type") == "image_url" for m in b["messages"]
                     if isinstance(m["content"], list) for c in m["content"]) for b in bodies), default=0)
        if n > self._probed_images:
            self._probe_images(n)

    def _probe_prompt_logprobs(self) -> bool:
        """Whether the server returns the prompt's token log-probabilities (vLLM's ``prompt_logprobs``),
        which close-ended tasks need; detected once, before the run."""
        body = {"model": self.options.model, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 0,
                "echo": True, "add_generation_prompt": False, "continue_final_message": True,
                "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
        r = self._sync("POST", "/chat/completions", body)
        try:
            return r.status_code == 200 and isinstance(r.json().get("prompt_logprobs"), list)
        except ValueError:
            return False

    def check_task(self, task: Any) -> None:
        """Refuse, before any request, what this server cannot do for a task."""
        if task.kind != "generate" and not self.scores_loglikelihood:
            raise HarnessError(
                f"task {task.name} is close-ended (it ranks candidates by log-likelihood), and {self.where} does not "
                f"return prompt log-probabilities (no prompt_logprobs in its chat completions, as vLLM has); "
                f"evaluate it with a server that does, or with --model hf")
        if task.kind == "generate" and task.generation_config().num_beams > 1:
            raise HarnessError(
                f"task {task.name}: num_beams={task.generation_config().num_beams}, but {self.where} decodes greedily "
                f"(chat completions have no beam search); pass --task-arg num_beams=1")

    @classmethod
    def check_prompt_images(cls, options: Any, n_images: int, where: str) -> None:
        if options.max_images is not None and n_images > options.max_images:
            raise HarnessError(f"{where}: a prompt holds {n_images} images but model openai takes at most "
                               f"max_images={options.max_images}; use fewer shots or raise max_images")

    # ---- identity and stats ---------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def config(self) -> dict[str, Any]:
        out = super().config()
        out.update(base_url=self.base_url, served_model=self.options.model, models_answer=self.models_answer)
        return out

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def _count(self, **kw: int) -> None:
        with self._lock:
            for k, v in kw.items():
                self._counts[k] += v

    # ---- prompts --------------------------------------------------------------------------
    def _media_parts(self, media: Sequence[Any], as_data: bool) -> list[dict]:
        out = []
        for m in media:
            for url in (self._data_urls(m) if as_data else [m.path]):
                out.append({"type": "image_url", "image_url": {"url": url}})
        return out

    def _data_urls(self, media: Any) -> list[str]:
        """The original file's bytes (no re-encoding); lossless PNG where there is no file (dataset
        rows, video frames)."""
        if isinstance(media, Video):
            from harness.data.video import media_as_images

            frames = media_as_images([media], True, f"model {self.name}")
            return ["data:image/png;base64," + base64.b64encode(_png(f)).decode() for f in frames]
        path = media.path
        if "://" not in path:
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise SampleError(f"cannot read image {path}: {exc.strerror or exc}") from None
            return [f"data:{_mime(data, path)};base64," + base64.b64encode(data).decode()]
        from harness.data.media import load_image

        return ["data:image/png;base64," + base64.b64encode(_png(load_image(media))).decode()]

    def _messages(self, prompt: Prompt, as_data: bool = True) -> list[dict]:
        """Chat messages: the same turns as the hf adapter's chat format, or one interleaved message."""
        msgs: list[dict] = []
        if self.options.system:
            msgs.append({"role": "system", "content": self.options.system})
        if self.options.prompt_format == "interleaved":
            content: list[dict] = []
            for i, chunk in enumerate(prompt.chunks):
                content += self._media_parts(chunk.media, as_data)
                sep = prompt.separator if i < len(prompt.chunks) - 1 else ""
                content.append({"type": "text", "text": chunk.text + sep})
            return msgs + [{"role": "user", "content": content}]
        for chunk in prompt.demos:
            if chunk.answer is None:
                raise HarnessError(f"{self.where}: prompt_format=chat_turns splits each demo into question and answer, "
                                   f"but the task's template does not end with the answer ({chunk.text!r}); use "
                                   f"prompt_format=interleaved")
            msgs.append({"role": "user", "content": self._media_parts(chunk.media, as_data)
                         + [{"type": "text", "text": chunk.stem.strip()}]})
            msgs.append({"role": "assistant", "content": chunk.answer.strip()})
        msgs.append({"role": "user", "content": self._media_parts(prompt.query.media, as_data)
                     + [{"type": "text", "text": prompt.query.text.strip()}]})
        return msgs

    def render_prompt(self, prompt: Prompt) -> str:
        """The messages sent, each image named by its path (the request carries its bytes)."""
        return json.dumps(self._messages(prompt, as_data=False), ensure_ascii=False)

    # ---- requests -------------------------------------------------------------------------
    def _cache_path(self, body: dict) -> Path:
        # the full request: messages (image bytes included), generation settings, served model
        key = hashlib.sha256(json.dumps([self.base_url, body], sort_keys=True).encode()).hexdigest()
        return self._cache_dir / key[:2] / f"{key}.json"

    async def _post(self, client: Any, sem: asyncio.Semaphore, body: dict, bar: Any) -> dict:
        path = self._cache_path(body)
        if self.options.cache and path.is_file():
            try:
                answer = json.loads(path.read_text())
                self._count(response_cache_hits=1)
                return answer
            except ValueError:
                pass  # a torn cache file: ask again
        self._count(response_cache_misses=1)
        o = self.options
        async with sem:
            for attempt in range(o.max_retries + 1):
                wait = self._pause_until - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                bar.in_flight += 1
                bar.refresh_postfix()
                try:
                    r = await client.post(self.base_url + "/chat/completions", json=body)
                    status, problem = r.status_code, f"HTTP {r.status_code}"
                except self._httpx.HTTPError as exc:
                    r, status, problem = None, None, f"{type(exc).__name__}"
                finally:
                    bar.in_flight -= 1
                if r is not None and status == 200:
                    answer = r.json()
                    break
                if r is not None and status not in _RETRY_STATUS:
                    raise SampleError(f"{self.where}: the server refused the request ({problem}: {r.text[:200]})")
                if attempt == o.max_retries:
                    raise ServerDown(f"{self.where}: no answer after {o.max_retries} retries (last: {problem}); "
                                     f"what finished is journaled and cached - rerun the same command to resume")
                delay = min(30.0, 0.5 * 2 ** attempt) * random.uniform(0.5, 1.5)  # jitter: no thundering herd
                if r is not None and r.headers.get("retry-after", "").replace(".", "", 1).isdigit():
                    delay = max(delay, float(r.headers["retry-after"]))
                if status == 429:  # the server is saturated: everyone holds off, not just this request
                    self._pause_until = max(self._pause_until, time.monotonic() + delay)
                self._count(retries=1)
                log.debug("%s: %s, retry %d in %.2fs", self.where, problem, attempt + 1, delay)
                await asyncio.sleep(delay)
        usage = answer.get("usage") or {}
        self._count(requests=1, prompt_tokens=int(usage.get("prompt_tokens") or 0),
                    completion_tokens=int(usage.get("completion_tokens") or 0))
        if o.cache:
            with atomic_write(path) as f:  # as each answer arrives: a crash loses nothing paid for
                json.dump(answer, f)
        bar.update(1)
        return answer

    def _run_all(self, bodies: list[dict]) -> list[dict | SampleError]:
        from tqdm import tqdm

        async def main() -> list[Any]:
            sem = asyncio.Semaphore(self.options.concurrency)
            limits = self._httpx.Limits(max_connections=self.options.concurrency)
            # disable=None: tqdm shows it on a terminal only
            bar = _Progress(tqdm(total=len(bodies), desc="requests", leave=False,
                                 disable=True if len(bodies) < 2 else None))
            async with self._httpx.AsyncClient(timeout=self.options.timeout, headers=self._headers,
                                               limits=limits) as client:
                try:
                    out = await asyncio.gather(*(self._post(client, sem, b, bar) for b in bodies),
                                               return_exceptions=True)
                finally:
                    bar.close()
            for x in out:
                if isinstance(x, BaseException) and not isinstance(x, SampleError):
                    raise x
            return out

        return asyncio.run(main())

    def generate_batch(self, prompts: Sequence[Prompt], cfg: GenerationConfig) -> list[str | SampleError]:
        """Each prompt's greedy answer (an :class:`Answer`, carrying the server's token usage)."""
        bodies, errors = [], {}
        for i, prompt in enumerate(prompts):
            try:
                msgs = self._messages(prompt)
            except SampleError as exc:
                errors[i] = exc
                msgs = []
            bodies.append({"model": self.options.model, "messages": msgs, "max_tokens": cfg.max_new_tokens,
                           "temperature": 0, "n": 1})
        todo = [i for i in range(len(prompts)) if i not in errors]
        self._check_image_count([bodies[i] for i in todo])
        answers = dict(zip(todo, self._run_all([bodies[i] for i in todo])))
        out: list[str | SampleError] = []
        for i in range(len(prompts)):
            a = errors.get(i) or answers[i]
            if isinstance(a, SampleError):
                out.append(a)
                continue
            text = Answer(((a.get("choices") or [{}])[0].get("message", {}).get("content") or "").strip())
            u = a.get("usage") or {}
            text.usage = {k: int(u[k]) for k in ("prompt_tokens", "completion_tokens") if u.get(k) is not None}
            out.append(text)
        return out

    # ---- close-ended scoring (servers with prompt_logprobs) --------------------------------
    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[float | SampleError]:
        """Sum of the candidate's token log-probabilities as the last assistant turn: the prompt's
        log-probabilities of (context + candidate) minus the context's token count (vLLM echo)."""
        if not self.scores_loglikelihood:
            raise HarnessError(f"{self.where} does not return prompt log-probabilities")
        bodies, spans = [], []
        for r in requests:
            ctx = self._messages(r.prompt)
            full = ctx + [{"role": "assistant", "content": r.continuation.strip()}]
            common = {"model": self.options.model, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 0,
                      "echo": True}
            bodies.append({**common, "messages": ctx, "add_generation_prompt": True})
            bodies.append({**common, "messages": full, "add_generation_prompt": False,
                           "continue_final_message": True})
            spans.append(len(bodies) - 2)
        self._check_image_count(bodies)
        answers = self._run_all(bodies)
        out: list[float | SampleError] = []
        for i in spans:
            ctx, full = answers[i], answers[i + 1]
            bad = next((a for a in (ctx, full) if isinstance(a, SampleError)), None)
            if bad is not None:
                out.append(bad)
                continue
            n_ctx = len(ctx["prompt_logprobs"])
            total = 0.0
            for entry in full["prompt_logprobs"][n_ctx:]:
                best = next(iter(entry.values())) if entry else None  # the prompt token's own entry
                total += float(best["logprob"]) if best else 0.0
            out.append(total)
        return out


class _Progress:
    """The request bar: done, rate (tqdm's) and how many requests are in flight now."""

    def __init__(self, bar: Any):
        self.bar, self.in_flight = bar, 0

    def refresh_postfix(self) -> None:
        self.bar.set_postfix(in_flight=self.in_flight, refresh=False)

    def update(self, n: int) -> None:
        self.bar.update(n)
        self.refresh_postfix()

    def close(self) -> None:
        self.bar.close()
