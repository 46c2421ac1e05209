"""p2pfs: a peer-to-peer, gossip-based file store.

Layers (one package or module per concern, see docs/ARCHITECTURE.md):
identity, wire, net, membership, ring, storage, replication, node, client, cli, testnet.
"""

__version__ = "0.1.0"
