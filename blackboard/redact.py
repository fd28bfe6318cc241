"""Secrets kept out of logs, spans, trace files and error messages: URLs with passwords, API
keys and bearer tokens."""

from __future__ import annotations

import os
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: What a secret is replaced with.
MASK = "***"
#: Query keys whose values are secrets (librdkafka's ``sasl.password``, ``ssl.key.password``,
#: ``sasl.oauthbearer.client.secret``; redis-py's ``password``), matched as substrings.
SECRET_KEYS = ("password", "secret", "token")


def redact_url(url: str) -> str:
    """``url`` with the password of its user part and secret query values masked.

    ``redis://user:pw@host:6379/0`` becomes ``redis://user:***@host:6379/0``;
    ``kafka://h:9092?sasl.password=pw`` becomes ``kafka://h:9092?sasl.password=***``. A URL
    without secrets comes back unchanged; one that does not parse comes back as its scheme
    alone (it may hold a secret that could not be found).
    """
    try:
        parts = urlsplit(url)
        pairs = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return url.partition(":")[0] + "://" + MASK
    userinfo, at, hosts = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    netloc = f"{user}:{MASK}@{hosts}" if at and colon and password else parts.netloc
    masked = [(k, MASK if v and any(s in k.lower() for s in SECRET_KEYS) else v) for k, v in pairs]
    query = urlencode(masked, safe="*") if masked != pairs else parts.query
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))


#: Environment variables whose values are credentials (the model providers' usual ones).
SECRET_ENV_VARS = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "BLACKBOARD_LLM_API_KEY",
)
#: Credentials by their look: OpenAI and Anthropic keys, bearer tokens, key headers.
_SECRET_PATTERNS = re.compile(
    r"(sk-[A-Za-z0-9_\-]{8,})"
    r"|((?i:bearer)\s+[A-Za-z0-9._\-~+/]{8,}=*)"
    r"|((?i:x-api-key|api[_-]?key)[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9._\-]{8,})"
)


def redact_secrets(text: str) -> str:
    """``text`` with credentials masked: the values of :data:`SECRET_ENV_VARS` that are set,
    and anything shaped like an API key or bearer token."""
    for name in SECRET_ENV_VARS:
        value = os.environ.get(name)
        if value and len(value) >= 6 and value in text:
            text = text.replace(value, MASK)
    return _SECRET_PATTERNS.sub(MASK, text)
