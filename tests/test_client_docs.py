"""docs/CLIENT.md: every Python example runs, in order, as a script of its own, against
a real 3-node network through the library (which names all three nodes)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from testnet_helpers import CLI_TIMEOUT_S, running_testnet

DOC = Path(__file__).resolve().parent.parent / "docs" / "CLIENT.md"
EXAMPLE = re.compile(r"```python\n(?P<code>.*?)```", re.S)


def examples() -> list[str]:
    return [m["code"] for m in EXAMPLE.finditer(DOC.read_text())]


def test_the_page_has_examples_of_each_part():
    text = "\n".join(examples())
    for used in ("sync.connect()", "put(", "get(", "ls(", "stat(", "rm(", "io.BytesIO", "trio.run",
                 "errors.NotFound", "errors.Unavailable", "last_node", "ls_pages(", "Listing()"):
        assert used in text, f"docs/CLIENT.md has no example using {used}"


@pytest.mark.integration
def test_the_examples_run(tmp_path):
    (tmp_path / "report.pdf").write_bytes(os.urandom(1_500_000))
    (tmp_path / "photos" / "2024").mkdir(parents=True)
    for name in ("a.txt", "b.txt", "c.txt", "2024/d.jpg"):
        (tmp_path / "photos" / name).write_bytes(os.urandom(20_000))
    with running_testnet(tmp_path / "testnet", nodes=3) as net:
        env = net.env()
        env["P2PFS_NODE"] = ",".join(net.address(name) for name in net.names)
        for code in examples():
            result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                    cwd=tmp_path, timeout=CLI_TIMEOUT_S)
            assert result.returncode == 0, f"example failed:\n{code}\n{result.stderr}"
        assert "stored photos/2024/d.jpg: 20000 bytes" in subprocess.run(
            [sys.executable, "-c", examples()[1]], capture_output=True, text=True, env=env, cwd=tmp_path,
            timeout=CLI_TIMEOUT_S).stdout
