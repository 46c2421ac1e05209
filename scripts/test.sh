#!/usr/bin/env bash
# Run the whole test suite (the README's second command; .ci/run runs this).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k ring`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# Some tests need system tools; install them when we can (root on Debian). Without
# them those tests skip and say why.
#   chaos tests: network namespaces and packet filters (iproute2, nftables, iptables);
#   operations tests: systemd-analyze (systemd), promtool (prometheus), and a headless
#   browser for the status page (chromium, chromium-driver: Debian's build, no download).
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    missing=()
    command -v ip >/dev/null || missing+=(iproute2)
    command -v nft >/dev/null || missing+=(nftables)
    command -v iptables >/dev/null || missing+=(iptables)
    command -v systemd-analyze >/dev/null || missing+=(systemd)
    command -v promtool >/dev/null || missing+=(prometheus)
    command -v chromium >/dev/null || missing+=(chromium)
    command -v chromedriver >/dev/null || missing+=(chromium-driver)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]} for the chaos and operations tests" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null) \
            || echo "could not install ${missing[*]}; the tests that need them will skip" >&2
    fi
fi
# Two worker processes (pytest-xdist), each given whole files, so that a file's shared
# network (a module fixture) starts once; P2PFS_TEST_WORKERS=0 runs everything in this process.
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n "${P2PFS_TEST_WORKERS:-2}" --dist loadfile "$@"
