"""Names as callers give them (``str`` or path-like) and as the cluster stores them."""

from __future__ import annotations

import os
from typing import Union

from p2pfs import errors

# A name in the cluster: a str, or a path-like object read as its string ("photos/a.jpg").
Name = Union[str, os.PathLike]
# A local file: its path, as a str or a Path.
LocalPath = Union[str, os.PathLike]


def cluster_name(name: Name) -> str:
    """``name`` as the cluster stores it, checked (BadInput if it cannot be a name)."""
    from p2pfs.storage.naming import BadName, validate_name

    text = os.fspath(name)
    if not isinstance(text, str):
        raise errors.BadInput(f"a name is text, not {type(text).__name__}: {text!r}")
    try:
        return validate_name(text)
    except BadName as exc:
        raise errors.BadInput(f"bad name {text!r}: {exc}") from None
