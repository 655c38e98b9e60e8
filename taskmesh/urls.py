"""Secrets in URLs: masking a URL's passwords for logs and listings, and refusing user info a URL parser
would cut short. Plain text handling, for the settings, the CLI, the store and plugins alike."""

from __future__ import annotations

import re

_QUERY_PASSWORD = re.compile(r"([?&][a-z_]*password=)[^&]*", re.IGNORECASE)


def redact(url: str) -> str:
    """``url`` with its passwords (user info, ``*password=`` query values) replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, tail = _userinfo(rest)
    if ":" in userinfo:
        userinfo = userinfo.partition(":")[0] + ":***"
    return scheme + sep + userinfo + _QUERY_PASSWORD.sub(r"\1***", tail)


def _userinfo(rest: str) -> tuple[str, str]:
    """``rest`` (a URL after ``scheme://``) as its user info and the rest, from the ``@`` on.

    The user info ends at the last ``@`` outside query values, not at the first ``/``, ``?`` or ``#`` as
    for a URL parser: a password holding those unencoded is found whole, to be masked or refused.
    """
    query = rest.find("?")
    values = rest.find("=", query) if query >= 0 else -1
    at = rest.rfind("@", 0, values if values >= 0 else len(rest))
    return (rest[:at], rest[at:]) if at >= 0 else ("", rest)


def check_userinfo(url: str) -> None:
    """Refuse user info holding ``/``, ``?`` or ``#``: a URL parser ends the host there, and its error
    would quote part of the password as the port (for ``unix://``, as the socket path). A ``unix:///path``
    has no user info (its socket path may hold an ``@``); a ``unix://user:password@/path`` has."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() == "unix" and rest.startswith("/"):
        return
    userinfo, _ = _userinfo(rest)
    if any(char in userinfo for char in "/?#"):
        raise ValueError(
            "the user name or password in the Redis URL holds '/', '?' or '#': "
            "percent-encode them (%2F, %3F, %23; '%' itself as %25)"
        )
