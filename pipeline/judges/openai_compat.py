"""LLM judges behind any OpenAI-compatible server (`vllm serve`, hosted APIs).

Requests go out asynchronously: `concurrency` in flight per endpoint, several endpoints pulling
from one queue (a faster server takes more), retries with exponential backoff that move to the
next endpoint, a timeout per call. When a request fails for good the run stops, and every answer
already received is handed back so nothing made is lost.
Pairs with images go out as OpenAI content parts: one `image_url` part per image (a base64 data
URL, or the http(s) URL of an image never fetched, which the server loads), then the text.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from schemas.errors import ConfigError

from .llm import ImageUnavailable, LabelAnswer, LabelRequest, PartialAnswers, PromptJudge, image_data_url

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from sync code, also when the caller already has an event loop running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


class EndpointError(ConnectionError):
    """A server could not answer after all retries; names the endpoint and the cause."""


@dataclass
class EndpointPool:
    """Clients for several OpenAI-compatible base URLs sharing one workload."""

    endpoints: list[str]
    api_key: str | None = None
    concurrency: int = 16
    timeout_s: float = 120.0
    retries: int = 3
    backoff_s: float = 0.5
    _clients: list[Any] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ConfigError("an OpenAI-compatible judge needs at least one endpoint URL")

    def _client(self, index: int) -> Any:
        from openai import AsyncOpenAI

        return AsyncOpenAI(base_url=self.endpoints[index], api_key=self.api_key or "EMPTY",
                           timeout=self.timeout_s, max_retries=0)

    async def call_all(self, n: int, call: Callable[[Any, int], Awaitable[T]]) -> dict[int, T]:
        """Run call(client, i) for i in range(n) across the endpoints.

        Raises PartialAnswers-friendly `_Stopped` with the results so far when a call fails for good.
        """
        import openai

        retryable = (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
                     openai.InternalServerError)
        clients = [self._client(i) for i in range(len(self.endpoints))]
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(n):
            queue.put_nowait(i)
        results: dict[int, T] = {}
        failure: list[BaseException] = []

        async def worker(home: int) -> None:
            while not failure:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                for attempt in range(self.retries + 1):
                    ep = (home + attempt) % len(clients)
                    try:
                        results[i] = await call(clients[ep], i)
                        break
                    except retryable as exc:
                        if attempt == self.retries:
                            failure.append(EndpointError(
                                f"{self.endpoints[ep]} failed after {self.retries + 1} attempts: "
                                f"{type(exc).__name__}: {exc}"))
                            return
                        await asyncio.sleep(self.backoff_s * 2**attempt * (0.5 + random.random()))

        workers = [worker(home) for home in range(len(clients)) for _ in range(self.concurrency)]
        try:
            await asyncio.gather(*workers)
        finally:
            for c in clients:
                await c.close()
        if failure:
            raise _Stopped(results, failure[0])
        return results


class _Stopped(Exception):
    def __init__(self, results: dict[int, Any], cause: BaseException) -> None:
        super().__init__(str(cause))
        self.results = results
        self.cause = cause


def _label_logprobs(choice: Any) -> tuple[float | None, float | None]:
    """Logprobs of "1" and "2" among the first token's top_logprobs (best spelling of each)."""
    content = getattr(getattr(choice, "logprobs", None), "content", None) or []
    if not content:
        return None, None
    found: dict[str, float] = {}
    for top in content[0].top_logprobs or []:
        token = top.token.strip()
        if token in ("1", "2"):
            found[token] = max(found.get(token, float("-inf")), float(top.logprob))
    return found.get("1"), found.get("2")


def chat_messages(request: LabelRequest, workspace: Any = None,
                  cache: dict[tuple[str, str | None], str] | None = None) -> list[dict[str, Any]]:
    """The /v1/chat/completions `messages` for one request: plain text, or images then text.

    `cache` keeps each image's data URL across requests (both orders of a pair share images).
    Raises ImageUnavailable for an image with no bytes and no http(s) URL.
    """
    if not request.images:
        return [{"role": "user", "content": request.prompt}]
    cache = {} if cache is None else cache
    parts: list[dict[str, Any]] = []
    for ref in request.images:
        key = (ref.uri, ref.sha256)
        if key not in cache:
            try:
                cache[key] = image_data_url(ref, workspace)
            except ImageUnavailable:
                if not ref.uri.startswith(("http://", "https://")):
                    raise
                cache[key] = ref.uri
        parts.append({"type": "image_url", "image_url": {"url": cache[key]}})
    parts.append({"type": "text", "text": request.prompt})
    return [{"role": "user", "content": parts}]


class OpenAIJudge(PromptJudge):
    """Pairwise LLM judge over /v1/chat/completions with top_logprobs."""

    kind = "openai"

    def __init__(self, name: str, model: str, *, endpoints: list[str], api_key_env: str | None = None,
                 concurrency: int = 16, timeout_s: float = 120.0, retries: int = 3,
                 top_logprobs: int = 20, extra_body: dict[str, Any] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(name, model, **kwargs)
        api_key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not api_key:
            raise ConfigError(f"judge {name!r}: environment variable {api_key_env} is not set")
        self.pool = EndpointPool(list(endpoints), api_key, concurrency, timeout_s, retries)
        self.top_logprobs = top_logprobs
        self.extra_body = dict(extra_body or {})

    def answer(self, requests: list[LabelRequest], seed: int) -> list[list[LabelAnswer]]:
        import openai

        images: dict[tuple[str, str | None], str] = {}
        messages: list[list[dict[str, Any]] | str] = []
        for r in requests:
            try:
                messages.append(chat_messages(r, self.workspace, images))
            except ImageUnavailable as exc:
                messages.append(f"[error] {exc}")  # this pair's samples are invalid, the run goes on

        async def call(client: Any, i: int) -> list[LabelAnswer]:
            if isinstance(messages[i], str):
                return [LabelAnswer(text=str(messages[i]), error=True)] * self.samples
            try:
                response = await client.chat.completions.create(
                    model=self.model,
                    messages=messages[i],
                    max_tokens=1,
                    temperature=self.temperature,
                    n=self.samples,
                    seed=seed,
                    logprobs=True,
                    top_logprobs=self.top_logprobs,
                    extra_body=self.extra_body or None,
                )
            except openai.BadRequestError as exc:
                # This prompt is refused (e.g. too long): its samples are invalid, the run goes on.
                return [LabelAnswer(text=f"[error] {exc.message}", error=True)] * self.samples
            out = []
            for choice in sorted(response.choices, key=lambda c: c.index):
                lp1, lp2 = _label_logprobs(choice)
                out.append(LabelAnswer(text=choice.message.content or "", lp1=lp1, lp2=lp2))
            return out

        try:
            results = run_sync(self.pool.call_all(len(requests), call))
        except _Stopped as stop:
            raise PartialAnswers(stop.results, stop.cause) from stop.cause
        return [results[i] for i in range(len(requests))]
