"""Keeping secrets out of logs while an online source runs.

requests_oauthlib logs the token request body (client_secret) and the token at DEBUG level;
urllib3 and requests log URLs, which may carry signed-URL tokens. Known secrets are redacted by
value, in every form they can take in a log line (secret_forms); the patterns catch the rest (a
token before it is known to the filter).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import threading
from collections.abc import Iterator
from urllib.parse import quote, quote_plus

SECRET_PATTERNS = [
    # OAuth fields, and the signature of an Azure SAS token (Planetary Computer's signed URLs)
    re.compile(r"(client_secret|access_token|refresh_token|id_token|\bsig)(['\"]?\s*[:=]\s*['\"]?)[^'\"&,\s}]+"),
    re.compile(r"(Bearer|Basic)(\s+)[^'\"\s,}]+"),
]
HTTP_LOGGERS = ("requests_oauthlib", "oauthlib", "urllib3", "requests")


def secret_forms(secret: str) -> list[str]:
    """`secret` as it may appear in a log line, longest first: as is, escaped inside a
    repr() or JSON string (either quote), URL-encoded (a form body, a query) and as bytes."""
    if not secret:
        return []
    forms = {
        secret,
        repr(secret)[1:-1],
        secret.replace("\\", "\\\\").replace("'", "\\'"),
        secret.replace("\\", "\\\\").replace('"', '\\"'),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote_plus(secret),
        quote(secret, safe=""),
        quote(secret),
        repr(secret.encode())[2:-1],
    }
    return sorted(forms, key=len, reverse=True)


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: tuple[str, ...], client_id: str = ""):
        super().__init__()
        self._lock = threading.Lock()
        self._forms: list[str] = []
        for secret in secrets:
            self.add(secret)
            if client_id and secret:  # HTTP Basic auth carries base64("id:secret")
                for pair in (f"{client_id}:{secret}", f"{quote_plus(client_id)}:{quote_plus(secret)}"):
                    self.add(base64.b64encode(pair.encode()).decode())

    def add(self, secret: str) -> None:
        """Redact `secret` too from now on (the access token, once it is known)."""
        with self._lock:
            known = set(self._forms)
            self._forms = sorted(known | set(secret_forms(secret)), key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001
            return True
        redacted = message
        for form in self._forms:
            redacted = redacted.replace(form, "***")
        for pattern in SECRET_PATTERNS:
            redacted = pattern.sub(r"\1\2***", redacted)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


@contextlib.contextmanager
def redacted_logs(secrets: tuple[str, ...], *, client_id: str = "",
                  logger_prefixes: tuple[str, ...] = HTTP_LOGGERS) -> Iterator[RedactSecrets]:
    """Redact secrets from records of the loggers under `logger_prefixes` while a source runs.

    A logger's filters only see records logged on that very logger, so the filter goes on each
    existing logger under the prefixes (all of them are imported by now). It yields the filter,
    so that secrets learnt later (an access token) can be added.
    """
    filt = RedactSecrets(secrets, client_id)
    names = set(logger_prefixes) | {
        name for name in logging.root.manager.loggerDict
        if name.startswith(tuple(prefix + "." for prefix in logger_prefixes))
    }
    loggers = [logging.getLogger(name) for name in sorted(names)]
    for logger in loggers:
        logger.addFilter(filt)
    try:
        yield filt
    finally:
        for logger in loggers:
            logger.removeFilter(filt)
