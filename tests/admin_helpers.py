"""Reading a live node's admin listener from tests: HTTP GET, Prometheus samples."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

# A local admin request answers in milliseconds; this only stops a hung test.
HTTP_TIMEOUT_S = 10.0


def http_get(url: str, token: str | None = None, context=None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def status_json(page: str) -> dict:
    code, body = http_get(page + "api/status")
    assert code == 200, body
    return json.loads(body)


def samples(page: str) -> dict[tuple[str, tuple], float]:
    """Every sample of ``/metrics``, parsed by prometheus-client's own parser:
    (sample name, sorted label pairs) -> value."""
    code, body = http_get(page + "metrics")
    assert code == 200, body
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict, name: str, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def http_post(url: str, token: str | None = None, context=None) -> tuple[int, bytes]:
    """POST with an empty body (the admin listener's actions take their arguments in the query)."""
    request = urllib.request.Request(url, data=b"", method="POST",
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
