#!/usr/bin/env bash
# The README's first command: set everything up and show p2pfs working.
# Creates a cluster CA, node and client identities under ./quickstart and shows them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
P2PFS=.venv/bin/p2pfs
dir=quickstart
if [ ! -f "$dir/ca/ca.pem" ]; then
    $P2PFS ca init "$dir/ca"
    for i in 1 2 3; do
        seed=()
        [ "$i" -gt 1 ] && seed=(--seed 127.0.0.1:7001)
        $P2PFS node init "$dir/node$i" --ca "$dir/ca" --listen "127.0.0.1:700$i" "${seed[@]}"
    done
    $P2PFS client init "$dir/client" --ca "$dir/ca" --node 127.0.0.1:7001
fi
for who in node1 node2 node3 client; do
    echo "== $dir/$who"
    $P2PFS whoami "$dir/$who"
done
