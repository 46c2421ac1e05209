"""How long the client waits for a node, per kind of request (seconds).

Shared by both drivers (``node.py`` over trio, ``blocking.py``), so that an
operation has the same deadline whichever runs it.
"""

# Deadline for small requests (status, members, ...).
REQUEST_TIMEOUT_S = 10.0
# Deadline for a node's answer once a put's last byte is sent: the chunks still in
# flight and the name entry must reach their quorums.
PUT_COMMIT_TIMEOUT_S = 120.0
# Deadline for the first answer of a get, ls, rm or stat: a quorum read, or asking every node.
CLUSTER_REQUEST_TIMEOUT_S = 60.0
# Deadline for fsck, which lists every node's names and chunks.
FSCK_TIMEOUT_S = 300.0
