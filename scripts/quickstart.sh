#!/usr/bin/env bash
# The README's first command: set everything up, start a local 5-node network,
# and show a put and a get. Run it again to reuse the running network.
#   QUICKSTART_DIR (default ./testnet)  where identities, data and logs go
#   QUICKSTART_PORT (default 7001)      port of node1; nodes use consecutive ports
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
P2PFS="$PWD/.venv/bin/p2pfs"
dir=${QUICKSTART_DIR:-testnet}
port=${QUICKSTART_PORT:-7001}

echo "== starting a 5-node network in $dir (logs: $dir/node*/daemon.log)"
eval "$($P2PFS testnet up --dir "$dir" --nodes 5 --base-port "$port")"
export P2PFS_IDENTITY P2PFS_NODE
$P2PFS testnet status --dir "$dir"
echo
echo "== members, as node1 sees them"
$P2PFS members

sample=$(mktemp)
trap 'rm -f "$sample" "$sample.out"' EXIT
head -c $((20 * 1024 * 1024 + 12345)) /dev/urandom > "$sample"
echo
echo "== put a 20 MiB file at node1, get it back from node3"
$P2PFS put "$sample" --name quickstart/sample.bin
$P2PFS --node "127.0.0.1:$((port + 2))" get quickstart/sample.bin -o "$sample.out" --force
cmp "$sample" "$sample.out" && echo "round trip: byte-exact"
echo
$P2PFS stat quickstart/sample.bin | head -8
echo
$P2PFS ls
echo
echo "The network keeps running. Point your shell at it with:"
echo "  export P2PFS_IDENTITY=$P2PFS_IDENTITY P2PFS_NODE=$P2PFS_NODE"
echo "and stop it with: $P2PFS testnet down --dir $dir"
