"""What a client key may do: its role and its write prefixes, and the decision for one request.

A client certificate carries a grant in an X.509 extension of our own
(``GRANT_EXTENSION_OID``, non-critical so that OpenSSL's chain check, which
refuses unknown critical extensions, still accepts the certificate). The CA
signs it at ``p2pfs client init --role ROLE [--prefix P ...]``, so a client
cannot widen its own rights, and every node decides every client request by
it alone: no node-side table to keep in step.

Roles are nested, each allowing what the one before it does:

    read   get, ls, stat, members, status
    write  + put and rm, of names starting with one of its prefixes (all names if it has none)
    admin  + leave, fsck, reload, revocation (handing a node a CRL)

Prefixes limit writes only; reading is cluster-wide for every role. A
certificate without the extension was issued before roles existed: it keeps
the rights every client had then (``GRANT_WITHOUT_EXTENSION``, admin) so that an
upgrade does not lock its operator out. docs/SECURITY.md says to reissue and
revoke such keys.

The value of the extension is UTF-8 JSON, ``{"role": "write", "prefixes": ["a/"]}``:
``openssl x509 -text`` shows it readably, and it is small and signed. Pure: no
I/O, no cryptography (``identity`` wraps the bytes into the certificate).
"""

from __future__ import annotations

import dataclasses
import enum
import json

from p2pfs.errors import AuthError

# Our own OID, under the UUID arc 2.25 (ITU-T X.667): unique without a registered
# enterprise number. Never change it: certificates in the field carry it.
GRANT_EXTENSION_OID = "2.25.165243234557108049737224323694978411909"
# Prefixes one certificate may carry, and the longest: a name is at most 1024 bytes
# (storage.naming), so a longer prefix could never match; the count keeps the check cheap.
PREFIXES_MAX = 32
PREFIX_BYTES_MAX = 1024
# The encoded grant: 32 prefixes of 1 KiB fit, with JSON's quoting.
GRANT_ENCODED_BYTES_MAX = 40 * 1024


class ClientRole(enum.Enum):
    """Ordered: each role allows what the ones before it do."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _ROLE_ORDER.index(self)


_ROLE_ORDER = (ClientRole.READ, ClientRole.WRITE, ClientRole.ADMIN)


class Operation(enum.Enum):
    """What a client request asks a node to do; ``REQUIRED_ROLE`` says who may."""

    GET = "get"
    LIST = "ls"
    STAT = "stat"
    MEMBERS = "members"
    STATUS = "status"
    PUT = "put"
    REMOVE = "rm"
    LEAVE = "leave"
    FSCK = "fsck"
    RELOAD = "reload"
    REVOCATION = "revocation"


REQUIRED_ROLE: dict[Operation, ClientRole] = {
    Operation.GET: ClientRole.READ,
    Operation.LIST: ClientRole.READ,
    Operation.STAT: ClientRole.READ,
    Operation.MEMBERS: ClientRole.READ,
    Operation.STATUS: ClientRole.READ,
    Operation.PUT: ClientRole.WRITE,
    Operation.REMOVE: ClientRole.WRITE,
    Operation.LEAVE: ClientRole.ADMIN,
    Operation.FSCK: ClientRole.ADMIN,
    Operation.RELOAD: ClientRole.ADMIN,
    Operation.REVOCATION: ClientRole.ADMIN,
}
assert set(REQUIRED_ROLE) == set(Operation), "every operation names the role it needs"
# Operations on one name that the grant's prefixes limit.
PREFIXED_OPERATIONS = frozenset({Operation.PUT, Operation.REMOVE})


class AccessDenied(AuthError):
    """This client's grant does not allow the request; the message says what would."""


class GrantError(AuthError):
    """A grant extension that cannot be read (not one our CA would sign)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Grant:
    """A client's role and the name prefixes it may write under (none: every name)."""

    role: ClientRole
    prefixes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if type(self.role) is not ClientRole:
            raise GrantError(f"role must be a ClientRole, got {self.role!r:.40}")
        if type(self.prefixes) is not tuple or len(self.prefixes) > PREFIXES_MAX:
            raise GrantError(f"a grant carries a tuple of at most {PREFIXES_MAX} prefixes")
        for prefix in self.prefixes:
            if type(prefix) is not str or not prefix:
                raise GrantError(f"a prefix must be a non-empty string, got {prefix!r:.40}")
            if len(prefix.encode("utf-8", "surrogatepass")) > PREFIX_BYTES_MAX:
                raise GrantError(f"a prefix is at most {PREFIX_BYTES_MAX} bytes")
        if self.prefixes and self.role is ClientRole.READ:
            raise GrantError("prefixes limit writes; a read grant has none")

    def allows(self, operation: Operation, name: str | None = None) -> bool:
        if self.role.rank < REQUIRED_ROLE[operation].rank:
            return False
        if operation in PREFIXED_OPERATIONS and self.prefixes:
            assert name is not None, f"{operation.value} is about one name"
            return any(name.startswith(prefix) for prefix in self.prefixes)
        return True

    def check(self, operation: Operation, name: str | None = None) -> None:
        """Raise AccessDenied, saying what is missing, unless the grant allows ``operation``."""
        if self.allows(operation, name):
            return
        needed = REQUIRED_ROLE[operation]
        if self.role.rank < needed.rank:
            raise AccessDenied(f"{operation.value} needs the {needed.value} role; this client's is {self.role.value}")
        raise AccessDenied(
            f"{operation.value} {name!r} is outside this client's prefixes ({', '.join(map(repr, self.prefixes))})"
        )

    def describe(self) -> str:
        """For people: ``write (a/, b/)`` or ``admin``."""
        return self.role.value + (f" ({', '.join(self.prefixes)})" if self.prefixes else "")

    def encode(self) -> bytes:
        return json.dumps({"role": self.role.value, "prefixes": list(self.prefixes)},
                          ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def decode(cls, data: bytes) -> Grant:
        """Parse ``encode``'s output; GrantError for anything else."""
        if len(data) > GRANT_ENCODED_BYTES_MAX:
            raise GrantError(f"a grant of {len(data)} bytes exceeds {GRANT_ENCODED_BYTES_MAX}")
        try:
            fields = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise GrantError(f"unreadable grant: {exc}") from None
        if type(fields) is not dict or set(fields) != {"role", "prefixes"} or type(fields["prefixes"]) is not list:
            raise GrantError("a grant is an object with a role and a list of prefixes")
        try:
            role = ClientRole(fields["role"])
        except ValueError:
            raise GrantError(f"unknown role {fields['role']!r:.40}") from None
        return cls(role, tuple(fields["prefixes"]))


# What a client certificate without the extension may do: everything, as before roles.
GRANT_WITHOUT_EXTENSION = Grant(ClientRole.ADMIN)
# What `p2pfs client init` grants when no --role is given: least privilege, so a key
# made in passing and then leaked exposes reads only. More is one explicit option away.
DEFAULT_CLIENT_ROLE = ClientRole.READ
