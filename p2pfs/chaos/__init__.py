"""The chaos suite: real daemons in a network namespace, a seeded workload, a nemesis, a checker.

``netns`` builds the sandbox and drives the packet filter inside it, ``nfq``
is the user-space packet delayer, ``cluster`` runs the daemons on the
namespace's loopback addresses, ``workload`` and ``nemesis`` are seeded plans
and their executors, ``history`` records what happened, ``checker`` decides
what was allowed to happen, and ``runner`` ties one run together.
``scripts/chaos.py`` is the command line; docs/CHAOS.md explains the whole.
"""
