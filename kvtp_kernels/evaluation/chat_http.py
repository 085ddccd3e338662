"""A client of OpenAI-compatible ``/v1/chat/completions`` endpoints over ``urllib`` only (no SDK).

Network errors, HTTP 408/409/429 and 5xx are retried with exponential backoff (a
``Retry-After`` header in seconds wins, capped at 60 s); 401/403/404 or a server that stays
unreachable raise :class:`~.errors.AnnotatorUnavailable` (every request would fail); other
HTTP errors and replies that are not chat completions raise :class:`~.errors.AnnotationError`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from .errors import AnnotationError, AnnotatorUnavailable

__all__ = ["chat_endpoint", "post_chat"]


def chat_endpoint(url: str | None) -> str | None:
    """A server's base URL (``http://localhost:8000/v1``) or its full ``.../chat/completions`` URL -> the
    latter; None when ``url`` is not an http(s) URL."""
    parsed = urllib.parse.urlparse(url or "")
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        return None
    path = parsed.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path = (path or "/v1") + "/chat/completions"
    return urllib.parse.urlunparse(parsed._replace(path=path))


class _Transient(Exception):
    """A failure worth retrying: ``reason`` for the message, ``wait`` the server's Retry-After (or None)."""

    def __init__(self, reason: str, *, wait: float | None = None, unreachable: bool = False):
        super().__init__(reason)
        self.reason, self.wait, self.unreachable = reason, wait, unreachable


def _send(endpoint: str, body: bytes, headers: dict[str, str], timeout: float, model: str) -> bytes:
    """One POST -> the response body. Raises _Transient, or the fatal errors of the module docstring."""
    request = urllib.request.Request(endpoint, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:300]
        if exc.code in (401, 403):
            raise AnnotatorUnavailable(f"{endpoint}: HTTP {exc.code} (not authorised: check the key in "
                                       f"--api-key-env) {detail}") from exc
        if exc.code == 404:
            raise AnnotatorUnavailable(f"{endpoint}: HTTP 404 (check --url and --model {model!r}) {detail}") from exc
        if exc.code not in (408, 409, 429) and exc.code < 500:
            hint = " (request too large: lower --frames-per-request or --image-size)" if exc.code == 413 else ""
            raise AnnotationError(f"{endpoint}: HTTP {exc.code}{hint}: {detail}") from exc
        retry_after = exc.headers.get("Retry-After") if exc.headers else None
        wait = min(float(retry_after), 60.0) if retry_after and retry_after.strip().isdigit() else None
        raise _Transient(f"HTTP {exc.code}: {detail}", wait=wait) from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise _Transient(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}", unreachable=True) from exc


def _reply_text(endpoint: str, payload: bytes) -> str:
    """A chat-completions response body -> the reply's text."""
    try:
        data = json.loads(payload.decode("utf-8"))
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise AnnotationError(f"{endpoint}: not a chat-completions response: {payload[:300]!r}") from exc
    if isinstance(content, list):  # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise AnnotationError(f"{endpoint}: the reply has no text content: {payload[:300]!r}")
    return content


def post_chat(endpoint: str, request: dict[str, Any], *, api_key: str | None, timeout: float, retries: int,
              retry_delay: float, sleep: Callable[[float], None], on_retry: Callable[[], None]) -> str:
    """One chat completion -> the reply text, transient failures retried.

    Args:
        endpoint: the ``.../chat/completions`` URL (:func:`chat_endpoint`).
        request: the JSON body (``model``, ``messages``, ...).
        api_key: sent as ``Authorization: Bearer ...`` (None: no header).
        timeout: seconds per attempt.
        retries: extra attempts after a transient failure.
        retry_delay: first backoff in seconds, doubled each attempt.
        sleep: the sleep function; on_retry: called before each repeated attempt.
    """
    body = json.dumps(request).encode("utf-8")
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            on_retry()
        wait = retry_delay * 2 ** attempt
        try:
            return _reply_text(endpoint, _send(endpoint, body, headers, timeout, request.get("model")))
        except _Transient as exc:
            last = exc.reason
            if exc.unreachable and attempt == retries:
                raise AnnotatorUnavailable(f"cannot reach {endpoint} after {retries + 1} attempts ({last})") \
                    from exc.__cause__
            if exc.wait is not None:
                wait = exc.wait
        if attempt < retries:
            sleep(wait)
    raise AnnotationError(f"{endpoint}: failed after {retries + 1} attempts ({last})")
