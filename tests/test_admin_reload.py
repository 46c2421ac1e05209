"""Log formats, run-time log levels and SIGHUP reload (the part that needs no daemon)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from p2pfs import observe
from p2pfs.node.admin.reload import reload_config
from p2pfs.config import CONFIG_FILE, NodeSettings
from p2pfs.node.config import load_node_config, render_node_config


@pytest.fixture
def captured(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    observe.setup_logging("info", "abcdef012345")
    yield stream
    root.handlers[:], level = saved
    root.setLevel(level)


def test_json_lines_carry_the_event_and_the_fields_a_query_filters_on(captured):
    observe.set_format("json")
    logging.getLogger("p2pfs.test").info("stored %s for %s", "f.txt", "c1",
                                         extra={"operation": "put", "file_name": "f.txt", "duration_s": 0.25})
    line = json.loads(captured.getvalue().strip().splitlines()[-1])
    assert line["level"] == "INFO" and line["node"] == "abcdef012345" and line["logger"] == "p2pfs.test"
    assert line["event"] == "stored %s for %s" and line["message"] == "stored f.txt for c1"
    assert line["operation"] == "put" and line["name"] == "f.txt" and line["duration_s"] == 0.25
    assert line["time"].endswith("Z")


def test_text_lines_stay_one_line_with_fields_appended(captured):
    logging.getLogger("p2pfs.test").warning("peer slow", extra={"peer": "10.0.0.2:7000"})
    (line,) = captured.getvalue().strip().splitlines()
    assert " WARNING node=abcdef012345 p2pfs.test: peer slow peer=10.0.0.2:7000" in line


def test_the_level_changes_at_run_time(captured):
    log = logging.getLogger("p2pfs.test")
    log.debug("hidden")
    observe.set_level("debug")
    log.debug("shown")
    assert "hidden" not in captured.getvalue() and "shown" in captured.getvalue()
    assert observe.current_level() == "debug"


def write_config(path, *, log_level="info", overrides=None):
    path.write_text(render_node_config(NodeSettings(log_level=log_level), overrides))


def test_reload_applies_level_and_format_and_names_what_needs_a_restart(tmp_path, captured):
    config_file = tmp_path / CONFIG_FILE
    write_config(config_file)
    running = load_node_config(config_file)
    write_config(config_file, log_level="debug",
                 overrides={"admin": {"log_format": "json"}, "replication": {"repair_bytes_per_s": 1000},
                            "membership": {"probe_interval_s": 2.0}})
    outcome = reload_config(running)
    now = outcome.config
    assert now.node.log_level == "debug" and now.admin.log_format == "json"
    assert now.replication.repair_bytes_per_s == 1000, "the repair cap changes at run time"
    assert observe.current_level() == "debug"
    assert now.replication.rf == running.replication.rf
    assert now.membership == running.membership, "a value not applied must not be reported as in force"
    assert outcome.applied == ("[node] log_level", "[replication] repair_bytes_per_s", "[admin] log_format")
    assert outcome.restart == ("[membership] probe_interval_s",)
    lines = [json.loads(line) for line in captured.getvalue().strip().splitlines() if line.startswith("{")]
    warning = next(line for line in lines if line["level"] == "WARNING")
    assert "[membership] probe_interval_s" in warning["message"]


def test_a_broken_file_on_reload_keeps_the_running_config(tmp_path, captured):
    config_file = tmp_path / CONFIG_FILE
    write_config(config_file)
    running = load_node_config(config_file)
    config_file.write_text("[node]\nlisten = 12\n")
    outcome = reload_config(running)
    assert outcome.config is running and "[node] listen" in outcome.error
    assert "reload failed, keeping the running config" in captured.getvalue()
