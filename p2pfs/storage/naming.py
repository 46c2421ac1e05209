"""What a name may be, and a writer's id: the rules every room checks names and writers by. Pure.

Names are opaque UTF-8 keys: compared bytewise, never normalised, never turned into
file system paths. The wire checks them on arrival and the name index before it
stores them, by these same rules.
"""

from __future__ import annotations

from p2pfs.storage.errors import StorageError
from p2pfs.storage.manifest import MANIFEST_ENCODED_BYTES_MAX

# Longest name, in UTF-8 bytes: POSIX PATH_MAX is 4096 and S3 keys stop at 1024;
# names are keys, not documents, and every entry carries its name on the wire.
NAME_BYTES_MAX = 1024
# A writer is a node id: the SHA-256 of its public key in lowercase hex
# (p2pfs.identity). Lowercase only, so comparing strings compares the ids' bytes.
WRITER_HEX_CHARS = 64
HEX_DIGITS = frozenset("0123456789abcdef")
# Largest encoded name entry (names.NameEntry): its manifest, its name, and room for
# the format number, version, writer and msgpack's framing.
ENTRY_ENCODED_BYTES_MAX = MANIFEST_ENCODED_BYTES_MAX + NAME_BYTES_MAX + 256


class BadName(StorageError, ValueError):
    """A name is empty, too long, contains NUL, or is not encodable as UTF-8."""


def validate_name(name: str) -> str:
    """Return ``name`` unchanged if it may be used as a name; raise BadName otherwise."""
    encode_name(name)
    return name


def encode_name(name: str) -> bytes:
    """``name`` as the UTF-8 bytes the index keys it by; BadName if it may not be a name."""
    if type(name) is not str:
        raise BadName(f"a name must be a str, got {type(name).__name__}")
    if not name:
        raise BadName("a name must not be empty")
    if "\x00" in name:
        raise BadName("a name must not contain the NUL character (\\x00)")
    encoded = utf8(name)
    if len(encoded) > NAME_BYTES_MAX:
        raise BadName(f"a name is at most {NAME_BYTES_MAX} bytes of UTF-8; this one is {len(encoded)} bytes")
    return encoded


def utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadName(f"a name must be valid Unicode text (it has a lone surrogate at {exc.start})") from None
