"""Where things live and how to reach them: every environment variable `bert_ref.io.hub` reads.

Caches:
    BERT_REF_CACHE        our cache (default `$XDG_CACHE_HOME/bert_ref`, else `~/.cache/bert_ref`).
    HF_HUB_CACHE, HF_HOME a Hugging Face cache we reuse read-only (default `~/.cache/huggingface/hub`).
    KAGGLEHUB_CACHE       a kagglehub cache we reuse read-only (default `~/.cache/kagglehub`).
Endpoints and credentials:
    HF_ENDPOINT           default `https://huggingface.co`.
    HF_TOKEN              sent as `Authorization: Bearer ...` (else the token file of huggingface_hub,
                          `$HF_TOKEN_PATH` or `$HF_HOME/token`).
    KAGGLE_API_ENDPOINT   default `https://www.kaggle.com`.
    KAGGLE_USERNAME, KAGGLE_KEY   HTTP basic auth (else `$KAGGLE_CONFIG_DIR/kaggle.json`, default
                          `~/.kaggle/kaggle.json`, as kagglehub reads it).
Behaviour:
    BERT_REF_OFFLINE=1 or HF_HUB_OFFLINE=1   no network at all; only cached presets resolve.
    BERT_REF_QUIET=1      no progress bars.
    BERT_REF_HTTP_TIMEOUT seconds to wait for a connection or between bytes (default 30).
    BERT_REF_HTTP_RETRIES attempts per request on 5xx / 429 / connection errors (default 5).
    BERT_REF_HTTP_BACKOFF first retry delay in seconds, doubled each retry (default 1.0).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

_TRUE = ("1", "true", "yes", "on")


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser() if value else None


def _xdg_cache() -> Path:
    return _env_path("XDG_CACHE_HOME") or Path.home() / ".cache"


def is_offline() -> bool:
    """True when `BERT_REF_OFFLINE` or `HF_HUB_OFFLINE` is set to 1/true/yes/on."""
    return _flag("BERT_REF_OFFLINE") or _flag("HF_HUB_OFFLINE")


def is_quiet() -> bool:
    """True when `BERT_REF_QUIET` is set to 1/true/yes/on (no progress bars)."""
    return _flag("BERT_REF_QUIET")


def cache_dir() -> Path:
    """Our cache root: `$BERT_REF_CACHE`, else `$XDG_CACHE_HOME/bert_ref`, else `~/.cache/bert_ref`."""
    return _env_path("BERT_REF_CACHE") or _xdg_cache() / "bert_ref"


def hf_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT", "").strip() or "https://huggingface.co").rstrip("/")


def hf_home() -> Path:
    return _env_path("HF_HOME") or _xdg_cache() / "huggingface"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`."""
    return _env_path("HF_HUB_CACHE") or hf_home() / "hub"


def hf_token() -> str | None:
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        value = os.environ.get(name, "").strip()
        if value:
            return value
    path = _env_path("HF_TOKEN_PATH") or hf_home() / "token"
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return value or None


def kaggle_endpoint() -> str:
    return (os.environ.get("KAGGLE_API_ENDPOINT", "").strip() or "https://www.kaggle.com").rstrip("/")


def kagglehub_cache() -> Path:
    """kagglehub's cache root: `$KAGGLEHUB_CACHE`, else `~/.cache/kagglehub`."""
    return _env_path("KAGGLEHUB_CACHE") or Path.home() / ".cache" / "kagglehub"


def kaggle_credentials() -> tuple[str, str] | None:
    """(username, key) from KAGGLE_USERNAME/KAGGLE_KEY, else from kaggle.json; None if neither."""
    user, key = os.environ.get("KAGGLE_USERNAME", ""), os.environ.get("KAGGLE_KEY", "")
    if user and key:
        return user, key
    path = (_env_path("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle") / "kaggle.json"
    if not path.is_file():
        return None
    try:
        from bert_ref.model import limits

        data = limits.load_file(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JSON file ({exc}); expected "
                         '{"username": "...", "key": "..."}') from None
    if not isinstance(data, dict) or not isinstance(data.get("username"), str) or not isinstance(
        data.get("key"), str
    ):
        raise ValueError(f'{path}: expected {{"username": "...", "key": "..."}} with string values')
    return data["username"], data["key"]


N = TypeVar("N", int, float)


def _number(name: str, default: N, minimum: N, kind: type[N]) -> N:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    value: N | None
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"{name}={raw!r} is not valid: expected {what} >= {minimum}")
    return value


def http_timeout() -> float:
    """Seconds to wait for a connection, and between bytes of a response (BERT_REF_HTTP_TIMEOUT)."""
    return _number("BERT_REF_HTTP_TIMEOUT", 30.0, 0.001, float)


def http_retries() -> int:
    """Attempts per request on 5xx, 429 and connection errors (BERT_REF_HTTP_RETRIES, >= 1)."""
    return _number("BERT_REF_HTTP_RETRIES", 5, 1, int)


def http_backoff() -> float:
    """Delay before the first retry in seconds, doubled after each (BERT_REF_HTTP_BACKOFF)."""
    return _number("BERT_REF_HTTP_BACKOFF", 1.0, 0.0, float)
