#!/usr/bin/env bash
# Run the whole test suite (the README's second command; .ci/run runs this).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k ring`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# The chaos tests need network namespaces and packet filters; install the tools when
# we can (root on Debian). Without them those tests skip and say why.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    missing=()
    command -v ip >/dev/null || missing+=(iproute2)
    command -v nft >/dev/null || missing+=(nftables)
    command -v iptables >/dev/null || missing+=(iptables)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]} for the chaos tests" >&2
        (apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null) \
            || echo "could not install ${missing[*]}; the chaos tests will skip" >&2
    fi
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
