"""The replication room: put/get coordination, quorums, hinted handoff, read repair, self-healing.

Pure decisions: ``placement`` (who is in the ring, where a write goes, which
answer wins), ``quorum`` (quorums, stand-ins, read repair and hint decisions,
one answer at a time), ``healing`` (digests, pacing). The trio side:
``replicas`` (this node and its peers behind one interface), ``coordinator``
(puts and gets), ``handlers`` (answers as a replica), the background jobs
``antientropy``, ``handoff``, ``hinted``, ``scrub``, ``gc`` and ``fsck``, each
run by ``background.run_rounds``; ``service`` wires them together.
"""
