"""Pages of the plugin list, Kubernetes-style: ``?limit=N`` and an opaque ``continue`` token naming where the last
page ended.

Pages are cut by name, not by store version: the token carries the last name a page held (base64url, so clients
treat it as opaque and it may change form later), and the next page is every plugin after that name. A plugin added
meanwhile shows on a later page if its name sorts after the cursor; one removed simply is not there. A client that
needs one consistent view takes the whole list (it is cached per version, with an ETag).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from typing import TypeVar
from urllib.parse import urlencode

#: The largest page (``?limit=``).
MAX_LIMIT = 1000
#: What a token may look like: base64url without padding (never one character past a group of four) of at most
#: 101 bytes. Every string of this form is a token (of where to continue after), so the OpenAPI document's pattern
#: says exactly which are accepted; anything else is refused.
TOKEN_PATTERN = "^((?:[A-Za-z0-9_-]{4}){1,33}(?:[A-Za-z0-9_-]{2,3})?|[A-Za-z0-9_-]{2,3})$"
_TOKEN = re.compile(TOKEN_PATTERN)
#: The header carrying the next page's token (the body stays a JSON array), besides ``Link: <...>; rel="next"``.
CONTINUE_HEADER = "X-Continue"
INVALID_TOKEN = "not a continue token of this list: pass the X-Continue of the page before, as it was given"

T = TypeVar("T")


def encode_token(name: str) -> str:
    """The continue token after the plugin ``name``."""
    return base64.urlsafe_b64encode(name.encode()).rstrip(b"=").decode()


def decode_token(token: str) -> str:
    """Where ``token`` continues: after this string (the name ``encode_token`` was given); ``ValueError`` for a
    string that is not of the form ``TOKEN_PATTERN`` says.

    A well-formed token that ``encode_token`` did not make still decodes (its bytes read as Latin-1, trailing bits
    ignored): it names a place in the order of names like any other, and the page after it is well defined.
    """
    if not _TOKEN.fullmatch(token):
        raise ValueError(INVALID_TOKEN)
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except binascii.Error as err:  # not expected of the pattern's strings; refused all the same
        raise ValueError(INVALID_TOKEN) from err
    return raw.decode("latin-1")


def page(items: Sequence[T], limit: int | None) -> tuple[Sequence[T], bool]:
    """The first ``limit`` of ``items`` (all when None), and whether more follow."""
    if limit is None or len(items) <= limit:
        return items, False
    return items[:limit], True


def next_link(path: str, state: str | None, limit: int, last: str) -> str:
    """The ``Link`` header value of the page after the one that ended with ``last`` (RFC 8288, a relative URI)."""
    query = {"state": state} if state is not None else {}
    query |= {"limit": str(limit), "continue": encode_token(last)}
    return f'<{path}?{urlencode(query)}>; rel="next"'
