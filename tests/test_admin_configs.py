"""The dashboard and the alert rules in configs/: valid for their tools, firing when they
should, and naming only metrics a live daemon exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest

from admin_helpers import http_get
from testnet_helpers import running_testnet, wait_for

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
ALERTS = CONFIGS / "alerts.yml"
DASHBOARD = CONFIGS / "grafana-dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package prometheus; scripts/test.sh installs it as root)"
)

# What Grafana needs of a dashboard to import it and of each panel to draw it (a subset of
# Grafana's dashboard model; the full schema is not published as JSON Schema).
DASHBOARD_SCHEMA = {
    "type": "object",
    "required": ["title", "uid", "schemaVersion", "panels", "templating"],
    "properties": {
        "title": {"type": "string", "minLength": 1},
        "uid": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,40}$"},
        "schemaVersion": {"type": "integer", "minimum": 30},
        "panels": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "type", "title", "gridPos", "targets", "datasource"],
                "properties": {
                    "id": {"type": "integer"},
                    "type": {"enum": ["timeseries", "stat", "gauge", "table"]},
                    "title": {"type": "string", "minLength": 1},
                    "gridPos": {
                        "type": "object",
                        "required": ["h", "w", "x", "y"],
                        "properties": {"w": {"type": "integer", "minimum": 1, "maximum": 24},
                                       "x": {"type": "integer", "minimum": 0, "maximum": 23}},
                    },
                    "targets": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": "object", "required": ["refId", "expr"],
                                  "properties": {"expr": {"type": "string", "minLength": 1}}},
                    },
                },
            },
        },
    },
}

# Alert unit tests for `promtool test rules`: each alert fires after its `for`, not before.
ALERT_TESTS = """\
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'up{{job="p2pfs", instance="n1"}}'
        values: '1 0x10'
      - series: 'p2pfs_members{{state="dead", instance="n2"}}'
        values: '0 1x30'
      - series: 'p2pfs_antientropy_under_replicated_keys{{instance="n2"}}'
        values: '0x5 12x30'
      - series: 'p2pfs_antientropy_under_replicated_keys{{instance="n3"}}'
        values: '0x40'
      - series: 'p2pfs_corrupt_chunks_pending{{instance="n2"}}'
        values: '0x40'
      - series: 'p2pfs_store_used_bytes{{instance="n2"}}'
        values: '95x20'
      - series: 'p2pfs_store_capacity_bytes{{instance="n2"}}'
        values: '100x20'
      - series: 'p2pfs_certificate_expiry_seconds{{instance="n2"}}'
        values: '864000x90'
      - series: 'p2pfs_ca_certificate_expiry_seconds{{instance="n2"}}'
        values: '315360000x90'
    alert_rule_test:
      - eval_time: 2m
        alertname: P2pfsNodeDown
        exp_alerts: []
      - eval_time: 4m
        alertname: P2pfsNodeDown
        exp_alerts:
          - exp_labels: {{severity: page, job: p2pfs, instance: n1}}
      - eval_time: 17m
        alertname: P2pfsDataUnderReplicated
        exp_alerts: []
      - eval_time: 22m
        alertname: P2pfsDataUnderReplicated
        exp_alerts:
          - exp_labels: {{severity: page}}
      - eval_time: 12m
        alertname: P2pfsDiskAlmostFull
        exp_alerts:
          - exp_labels: {{severity: warning, instance: n2}}
      - eval_time: 70m
        alertname: P2pfsCertificateExpiring
        exp_alerts:
          - exp_labels: {{severity: warning, instance: n2}}
      - eval_time: 70m
        alertname: P2pfsCaCertificateExpiring
        exp_alerts: []
"""


@needs_promtool
def test_the_alert_rules_check():
    result = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_the_alerts_fire_after_their_delay_and_not_before(tmp_path):
    # The firing logic is under test, not the wording: the rules without their annotations
    # (each rule's last key), so the expected alerts need not repeat every text.
    rules = tmp_path / "alerts.yml"
    rules.write_text(re.sub(r"\n        annotations:\n(?:          .*\n)*", "\n", ALERTS.read_text()))
    assert "annotations" not in rules.read_text() and rules.read_text().count("- alert:") == 6
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(ALERT_TESTS.format(rules=rules))
    result = subprocess.run([PROMTOOL, "test", "rules", str(tests)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_has_the_shape_grafana_imports():
    dashboard = json.loads(DASHBOARD.read_text())
    jsonschema.validate(dashboard, DASHBOARD_SCHEMA)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def metric_names(text: str) -> set[str]:
    return set(re.findall(r"\b(p2pfs_[a-z_]+|process_[a-z_]+)\b", text))


@pytest.mark.integration
def test_dashboard_and_alerts_name_only_exported_metrics(tmp_path):
    # Anti-entropy every second: its figures appear once a round has run.
    with running_testnet(tmp_path / "net", nodes=1, overrides={"replication": {"anti_entropy_interval_s": 1.0}}) as net:
        page = net.status()["node1"].status_page
        wait_for(lambda: b"p2pfs_antientropy_under_replicated_keys " in http_get(page + "metrics")[1], timeout_s=30,
                 what="the first anti-entropy round")
        code, body = http_get(page + "metrics")
    assert code == 200
    exported = set()
    for line in body.decode().splitlines():
        # A labelled metric with nothing counted yet has its TYPE line and no samples.
        typed = re.match(r"# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) ", line)
        sample = None if line.startswith("#") else re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)
        name = typed.group(1) if typed else sample.group(0) if sample else None
        if name is not None:
            exported.add(name)
            exported.add(re.sub(r"_(bucket|count|sum)$", "", name))
    named = metric_names(DASHBOARD.read_text()) | metric_names(ALERTS.read_text())
    assert named, "no metric names found in the configs"
    assert not named - exported, f"named in configs/ but not exported: {sorted(named - exported)}"
