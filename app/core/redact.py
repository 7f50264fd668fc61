"""The one redaction step: no secret in any error ai-worker stores, prints, logs or sends.

``redact(text, settings)`` returns ``text`` with

- **the configured secrets** replaced wherever they appear: ``OPENAI_API_KEY``,
  ``CODEGEN_TOKEN``, the passwords of ``FLOWER_BASIC_AUTH``, the keys of
  ``AIW_SECRET_KEY``, and the passwords inside ``DATABASE_URL``, ``CELERY_BROKER_URL``
  and ``REDIS_URL`` (as written and percent-decoded). A secret of 8 characters or more
  is replaced anywhere; a shorter one (4 to 7) only as a whole word, so that a short
  password does not eat parts of ordinary words; below 4 characters nothing can be
  hidden by replacing text.
- **the common shapes of a secret**, configured or not: ``sk-…`` API keys (OpenAI's
  ``sk-proj-…``, their masked ``sk-…****abcd`` form too), ``whsec_…`` signing secrets,
  GitHub tokens, JWTs, ``Bearer <token>``, the value of an ``Authorization`` header,
  the password of a ``user:password@`` URL, and the value after ``api_key=``,
  ``token:``, ``password=``, ``"secret": "…"`` and the like (``API key provided: …``).

Each is replaced by ``[redacted]`` (``sk-[redacted]``, ``whsec_[redacted]``,
``Bearer [redacted]``, ``postgresql://aiw:[redacted]@db/aiw``), and redacting twice
changes nothing more. Without ``settings`` the process-wide settings are used when
they have been loaded (``app.config.get_settings``), never loaded here: only the shapes
are replaced then.

Where it is applied: the error tree (``AIProviderError`` redacts its message when it is
made, so whatever prints one is safe), the job and agent-run records, webhook delivery
errors and payloads, the command line's error lines, and every log handler of the
worker and of ``aiw`` (``RedactingFilter``, ``install_log_redaction``).

It is cheap: the patterns are compiled once, and the pattern of a Settings object's
secrets is built once per object (again only if its secret values change).
"""

from __future__ import annotations

import logging
import re
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any, overload
from urllib.parse import unquote, urlsplit

from app.config import Settings, get_settings

REDACTED = "[redacted]"

#: A configured secret this long is replaced anywhere; a shorter one only as a word.
ANYWHERE_CHARS = 8
#: Shorter configured secrets are not replaced (it would mangle ordinary text).
MIN_SECRET_CHARS = 4

# --- the shapes of a secret (configured or not) -----------------------------------------

# A token's characters (base64, base64url, hex, JWT dots).
_TOKEN = r"[A-Za-z0-9._~+/\-]"
# A value after a "key:"/"token=" word: up to a quote, space, separator or bracket.
_VALUE = r"[^\s\"',;&(){}\[\]<>]"

# Its last character (a value does not end with the sentence's full stop).
_END = r"[^\s\"',;&(){}\[\]<>.]"

# (needles, pattern, replacement): the pattern is tried only when one of the needles is
# in the lower-cased text, so that most text costs one lower() and a few ``in`` tests.
_Shape = tuple[tuple[str, ...], re.Pattern[str], str | Callable[[re.Match[str]], str]]


def _authorization(match: re.Match[str]) -> str:
    scheme = match.group("scheme")
    return f"{match.group('name')}{match.group('sep')}{scheme + ' ' if scheme else ''}{REDACTED}"


_SHAPES: tuple[_Shape, ...] = (
    # scheme://user:password@host -> scheme://user:[redacted]@host
    (
        ("://",),
        re.compile(r"(?P<pre>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/@:\"'<>]*):[^\s/@\"'<>]+@"),
        rf"\g<pre>:{REDACTED}@",
    ),
    # scheme://<long token>@host (a token as the URL's user, e.g. GitHub's)
    (
        ("://",),
        re.compile(r"(?P<pre>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^\s/@:\"'<>]{16,}@"),
        rf"\g<pre>{REDACTED}@",
    ),
    # Authorization: Bearer xyz / "authorization": "Basic abc="
    (
        ("authorization",),
        re.compile(
            r"(?P<name>\b(?:proxy-)?authorization)(?P<sep>[\"']?\s*[:=]\s*[\"']?)"
            r"(?:(?P<scheme>bearer|basic|token|digest)\s+)?(?!(?:bearer|basic|token|digest)\b)"
            + _VALUE
            + r"+",
            re.IGNORECASE,
        ),
        _authorization,
    ),
    # sk-..., sk-proj-..., sk-ant-..., and OpenAI's masked sk-proj-****abcd
    (("sk-",), re.compile(r"(?<![A-Za-z0-9_\-])sk-[A-Za-z0-9_*\-]{16,}"), f"sk-{REDACTED}"),
    # Standard Webhooks signing secrets
    (
        ("whsec_",),
        re.compile(r"(?<![A-Za-z0-9_])whsec_[A-Za-z0-9+/=_\-]{8,}"),
        f"whsec_{REDACTED}",
    ),
    # GitHub tokens
    (
        ("gh", "github_pat_"),
        re.compile(r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"),
        REDACTED,
    ),
    # JWTs
    (
        ("eyj",),
        re.compile(
            r"(?<![A-Za-z0-9_\-])eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]+"
        ),
        REDACTED,
    ),
    # Bearer <token> (a token has a digit; "Bearer authentication" stays)
    (
        ("bearer",),
        re.compile(r"(?P<pre>\bbearer\s+)(?=" + _TOKEN + r"*\d)" + _TOKEN + r"{8,}=*", re.I),
        rf"\g<pre>{REDACTED}",
    ),
    # password=hunter2, "passwd": "x" (any value)
    (
        ("pass", "pwd"),
        re.compile(
            r"(?P<pre>\b(?:password|passwd|pwd)[\"']?\s*[:=]\s*[\"']?)" + _VALUE + "*" + _END,
            re.I,
        ),
        rf"\g<pre>{REDACTED}",
    ),
    # api_key=..., "access_token": "...", secret: ..., API key provided: ... (a value of
    # 8+ characters with a digit, or of 20+; "token: expired" stays)
    (
        ("key", "token", "secret", "credential"),
        re.compile(
            r"(?P<pre>\b(?:(?:api|access|secret|private|signing)[_ \-]?key|client[_ \-]?secret"
            r"|(?:auth|access|refresh|api|bearer|id)[_ \-]?token|token|secret|credentials?)"
            r"(?:\s+provided)?[\"']?\s*[:=]\s*[\"']?)"
            rf"(?:(?={_VALUE}*\d){_VALUE}{{7,}}{_END}|{_VALUE}{{19,}}{_END})",
            re.IGNORECASE,
        ),
        rf"\g<pre>{REDACTED}",
    ),
)


# --- the configured secrets --------------------------------------------------------------


def _url_passwords(url: str) -> Iterable[str]:
    for part in re.split(r"[;,\s]+", url):
        try:
            password = urlsplit(part).password
        except ValueError:
            continue
        if password:
            yield password
            yield unquote(password)


def configured_secrets(settings: Settings) -> tuple[str, ...]:
    """The secret values in ``settings`` that ``redact`` replaces, longest first."""
    found: set[str] = set()
    for secret in (settings.openai_api_key, settings.codegen_token):
        if secret is not None:
            found.add(secret.get_secret_value())
    if settings.flower_basic_auth is not None:
        for pair in settings.flower_basic_auth.get_secret_value().split(","):
            found.add(pair.strip().partition(":")[2])
    if settings.aiw_secret_key is not None:
        found.update(settings.aiw_secret_key.get_secret_value().split(","))
    for url in (settings.database_url, settings.celery_broker_url, settings.redis_url):
        if url:
            found.update(_url_passwords(url))
    kept = {s.strip() for s in found if len(s.strip()) >= MIN_SECRET_CHARS}
    return tuple(sorted(kept, key=lambda s: (-len(s), s)))


def _secrets_pattern(secrets: tuple[str, ...]) -> re.Pattern[str] | None:
    if not secrets:
        return None
    long = [re.escape(s) for s in secrets if len(s) >= ANYWHERE_CHARS]
    short = [re.escape(s) for s in secrets if len(s) < ANYWHERE_CHARS]
    parts = []
    if long:
        parts.append("|".join(long))
    if short:
        parts.append(r"(?<![A-Za-z0-9])(?:" + "|".join(short) + r")(?![A-Za-z0-9])")
    return re.compile("|".join(parts))


def _fingerprint(settings: Settings) -> tuple[Any, ...]:
    return (
        settings.openai_api_key,
        settings.codegen_token,
        settings.flower_basic_auth,
        settings.aiw_secret_key,
        settings.database_url,
        settings.celery_broker_url,
        settings.redis_url,
    )


# id(settings) -> (a weak reference to it, its fingerprint, the pattern of its secrets)
_patterns: dict[int, tuple[weakref.ref[Settings], tuple[Any, ...], re.Pattern[str] | None]] = {}
_patterns_lock = threading.Lock()


def _pattern_for(settings: Settings) -> re.Pattern[str] | None:
    key = id(settings)
    known = _patterns.get(key)
    fingerprint = _fingerprint(settings)
    if known is not None and known[0]() is settings and known[1] == fingerprint:
        return known[2]
    pattern = _secrets_pattern(configured_secrets(settings))

    def forget(_: object, key: int = key) -> None:
        with _patterns_lock:
            entry = _patterns.get(key)
            if entry is not None and entry[0]() is None:
                del _patterns[key]

    with _patterns_lock:
        _patterns[key] = (weakref.ref(settings, forget), fingerprint, pattern)
    return pattern


def _process_settings() -> Settings | None:
    """The process-wide settings if they have been loaded (never loads them here)."""
    if not get_settings.cache_info().currsize:
        return None
    try:
        return get_settings()
    except Exception:  # noqa: BLE001 - redaction never fails; the shapes still apply
        return None


# --- the step ------------------------------------------------------------------------------


@overload
def redact(text: str, settings: Settings | None = None) -> str: ...
@overload
def redact(text: None, settings: Settings | None = None) -> None: ...
def redact(text: str | None, settings: Settings | None = None) -> str | None:
    """``text`` without the configured secrets of ``settings`` (default: the process's,
    if loaded) and without anything shaped like a secret. ``None`` stays ``None``."""
    if not text:
        return text
    settings = settings if settings is not None else _process_settings()
    if settings is not None:
        pattern = _pattern_for(settings)
        if pattern is not None:
            text = pattern.sub(REDACTED, text)
    lowered = text.lower()
    for needles, shape, replacement in _SHAPES:
        if any(needle in lowered for needle in needles):
            text = shape.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """A log handler's filter that redacts each record's message, traceback and stack
    (it never drops a record)."""

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__()
        self.settings = settings

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format: the handler reports it
            return True
        clean = redact(message, self.settings)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.settings)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.settings)
        return True


def install_log_redaction(
    logger: logging.Logger | None = None, settings: Settings | None = None
) -> int:
    """Add a ``RedactingFilter`` to every handler of ``logger`` (default: the root
    logger) that has none yet; the number added. A filter on a handler sees the records
    of every logger that propagates to it."""
    added = 0
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter(settings))
            added += 1
    return added


__all__ = [
    "REDACTED",
    "RedactingFilter",
    "configured_secrets",
    "install_log_redaction",
    "redact",
]
