"""The replication room: put/get coordination, quorums, hinted handoff, read repair.

``placement`` holds the pure decisions (who takes part in the ring, which
replicas to write, which answer is newest); ``service`` is the trio code that
carries them out over the network and the disk.
"""
