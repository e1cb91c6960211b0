"""The one place URLs are masked before anyone sees them: banners, logs, checks, errors, the dashboard, the API.

:func:`mask_url` hides the password of ``user:password@``, the value of
every secret-looking query parameter (``?password=`` is one redis-py
accepts) and does so for each URL of a kombu failover list
(``sentinel://:pw@h1;sentinel://:pw@h2``). It works on the text, never
raises, and keeps everything else as written, so the masked URL still says
which host, port, database and options were meant. A password holding an
unescaped ``@`` is masked up to the last ``@``; percent-encode ``/ ? #`` in
a password, or the URL means another host to every client anyway.
"""

from __future__ import annotations

import re

#: what replaces a secret
MASK = "**"
#: query parameter names whose value is a secret (``password``, ``sentinel_password``, ``token``, ``api_key`` ...)
SECRET_PARAM = re.compile(r"pass|pwd|secret|token|auth|credential|api_?key|access_?key|signature", re.IGNORECASE)
#: the text before an ``@`` ends inside a query value (``?email=a@b``): that ``@`` is no userinfo separator
_IN_QUERY = re.compile(r"[?&][^?&=]*=[^&]*$")


def mask_url(url: str) -> str:
    """``redis://:secret@h:6379/0?password=x`` -> ``redis://:**@h:6379/0?password=**``."""
    if ";" in url:  # a kombu failover list: "sentinel://:pw@h1;sentinel://:pw@h2"
        return ";".join(mask_url(part) for part in url.split(";"))
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    prefix = ""
    at = rest.rfind("@")
    while at != -1 and _IN_QUERY.search(rest[:at]):  # that @ is in a query value: look further left
        at = rest.rfind("@", 0, at)
    if at != -1:
        userinfo, rest = rest[:at], rest[at + 1:]
        user, colon, _password = userinfo.partition(":")
        prefix = f"{user}:{MASK}@" if colon else f"{userinfo}@"
    location, question, query = rest.partition("?")
    if question:
        query = "&".join(_mask_param(param) for param in query.split("&"))
    return f"{scheme}://{prefix}{location}{question}{query}"


def _mask_param(param: str) -> str:
    name, equals, value = param.partition("=")
    return f"{name}={MASK}" if equals and value and SECRET_PARAM.search(name) else param


__all__ = ["mask_url"]
