"""Calling the Hugging Face Hub: bounded retries, readable errors, and no token in any of them.

Owns: which failures are transient (connection errors, HTTP 408 / 429 / 5xx, and an answer that is not
JSON — the HTML page a gateway sends when the Hub is unavailable, which huggingface_hub sometimes parses
before it checks the status), how long to wait before the next attempt (the Hub's ``Retry-After`` or
``RateLimit`` header when it sends one, else exponential backoff), the bound on every wait, a one-line
account of an error built from its message only (never its request headers), and the scrub that removes
tokens from every text ssogen shows.

The bound: ``max_retries`` retries (default 4, so 5 attempts), each wait at most ``max_wait_seconds``
(default 60 s): never more than 4 minutes of waiting in all. A ``Retry-After`` longer than the bound
fails at once and says so, instead of sleeping for an hour.
"""

from __future__ import annotations

import email.utils
import json
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

from huggingface_hub import get_token
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import parse_ratelimit_headers

from ssogen.errors import PublishError, SsogenError

try:  # huggingface_hub >= 1.x speaks through httpx2; older releases through httpx
    import httpx2 as _http
except ImportError:  # pragma: no cover
    import httpx as _http  # type: ignore[no-redef]

logger = logging.getLogger(__name__)

__all__ = ["MAX_RETRIES", "MAX_WAIT_SECONDS", "HubCaller", "http_status", "known_token", "scrub_tokens"]

MAX_RETRIES = 4
BACKOFF_SECONDS = 1.0
MAX_WAIT_SECONDS = 60.0
_TRANSIENT_STATUS = frozenset({408, 429})
AUTH_STATUS = frozenset({401, 403})
# Belt and braces beside the known-token scrub. A Hub token is "hf_" and 30+ letters or digits standing
# alone: not after "/", "." or "-", so repo ids and paths such as org/hf_preferences stay readable.
_TOKEN_SHAPES = re.compile(r"(?<![\w/.\-])hf_[A-Za-z0-9]{30,}(?!\w)|Bearer\s+\S+")

T = TypeVar("T")


def scrub_tokens(text: str, secret: str | None = None) -> str:
    """``text`` with ``secret`` and anything shaped like a Hub token replaced by ``***``."""
    if secret:
        text = text.replace(secret, "***")
    return _TOKEN_SHAPES.sub("***", text)


def known_token() -> str | None:
    """The token huggingface_hub would use (HF_TOKEN, else the login); only to scrub messages."""
    try:
        return get_token()
    except Exception:  # a broken login must not stop anything: it only widens the scrub
        return None


def http_status(err: BaseException) -> int | None:
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        return err.response.status_code
    return None


class HubCaller:
    """Runs Hub calls for one repo with the retry policy, and turns failures into `PublishError`.

    ``closing`` ends every failure message: what state things were left in and how to retry. A refused
    token (HTTP 401 / 403) raises ``auth_error``: a `UsageError` where a bad token is a bad setting (the
    checks before a build), a `PublishError` where it stops a push.
    """

    def __init__(
        self,
        *,
        repo_id: str,
        secret: str | None,
        closing: str,
        max_retries: int = MAX_RETRIES,
        backoff_seconds: float = BACKOFF_SECONDS,
        max_wait_seconds: float = MAX_WAIT_SECONDS,
        auth_error: type[SsogenError] = PublishError,
    ) -> None:
        self.repo_id = repo_id
        self.auth_error = auth_error
        self.secret = secret
        self.closing = closing
        self.max_retries = max(0, max_retries)
        self.backoff_seconds = max(0.0, backoff_seconds)
        self.max_wait_seconds = max(0.0, max_wait_seconds)

    def call(self, what: str, action: Callable[[], T]) -> T:
        """``action()``, retried on transient failures; ``what`` names it in messages ("creating the repo")."""
        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return action()
            except SsogenError:
                raise  # ssogen's own refusal from inside the action: already worded for the user
            except Exception as err:
                if not is_transient(err) or attempt == attempts:
                    raise self.failure(what, err, attempt) from None
                delay = self._delay(err, attempt)
                if delay > self.max_wait_seconds:
                    raise self.failure(
                        what,
                        err,
                        attempt,
                        note=f"the Hub asks to wait {delay:.0f} s before retrying, longer than ssogen waits "
                        f"at once ({self.max_wait_seconds:.0f} s); retry later",
                    ) from None
                logger.warning(
                    "%s for %s failed (%s); retry %d/%d in %.2fs",
                    what,
                    self.repo_id,
                    self.scrub(describe(err)),
                    attempt,
                    self.max_retries,
                    delay,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _delay(self, err: Exception, attempt: int) -> float:
        asked = _server_wait(err)
        if asked is not None:
            return asked
        return min(self.backoff_seconds * 2 ** (attempt - 1), self.max_wait_seconds)

    def failure(self, what: str, err: BaseException, attempts: int = 1, note: str = "") -> SsogenError:
        status = http_status(err)
        if status in AUTH_STATUS:
            head = (
                f"authentication failed for {self.repo_id}: set HF_TOKEN or run `hf auth login` "
                f"(the Hub answered HTTP {status} while {what}"
                + ("; the token may lack write access to this namespace)" if status == 403 else ")")
            )
        else:
            tries = f" after {attempts} attempts" if attempts > 1 else ""
            head = f"{what} failed for {self.repo_id}{tries}: {describe(err)}"
        if note:
            head = f"{head} ({note})"
        message = self.scrub(f"{head}.\n{self.closing}")
        logger.debug("hub call failed: %s", message)  # the CLI shows the exception; avoid saying it twice
        return (self.auth_error if status in AUTH_STATUS else PublishError)(message)

    def scrub(self, text: str) -> str:
        return scrub_tokens(text, self.secret)


def is_transient(err: BaseException) -> bool:
    if isinstance(err, _http.TransportError | json.JSONDecodeError):
        # A body that is not JSON is a gateway's HTML page (502/503 in front of the Hub): try again.
        return True
    status = http_status(err)
    return status is not None and (status >= 500 or status in _TRANSIENT_STATUS)


def _server_wait(err: Exception) -> float | None:
    """Seconds the Hub asked us to wait (Retry-After, or its RateLimit header when exhausted), if it did."""
    if not isinstance(err, HfHubHTTPError) or err.response is None:
        return None
    headers = err.response.headers
    value = headers.get("Retry-After")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:  # the other form the header may take: an HTTP date
                when = email.utils.parsedate_to_datetime(value)
                return max(0.0, (when - datetime.now(UTC)).total_seconds())
            except (TypeError, ValueError):
                return None
    limit = parse_ratelimit_headers(headers)
    if limit is not None and limit.remaining == 0:
        return float(limit.reset_in_seconds)
    return None


def describe(err: BaseException) -> str:
    """A one-paragraph account of ``err`` built from its message only, never its request headers."""
    if isinstance(err, HfHubHTTPError):
        status = http_status(err)
        response = err.response
        kind = response.headers.get("Content-Type", "") if response is not None else ""
        if "html" in kind.lower():
            detail = "an HTML error page instead of an answer (the Hub or a proxy in front of it is unavailable)"
        else:
            detail = err.server_message or str(err).strip().splitlines()[0]
        text = f"HTTP {status}: {detail}" if status is not None else detail
    elif isinstance(err, json.JSONDecodeError):
        text = "the Hub answered with a page that is not JSON (an HTML error page from the Hub or a proxy)"
    else:
        text = f"{type(err).__name__}: {err}"
    text = " ".join(text.split())
    return text if len(text) <= 500 else text[:497] + "..."
