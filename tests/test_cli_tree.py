"""`put -r` and `get -r` through the real CLI against real daemons: a tree comes back
byte-exact, and nothing a name holds can write outside the directory."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from p2pfs.cli import ExitCode
from testnet_helpers import running_testnet

pytestmark = pytest.mark.integration

BIG_BYTES = 50 * 1024 * 1024 + 12345
# Names a shell or a terminal would trip on: spaces, Unicode (composed and not), a newline.
ODD_NAMES = ["with space.txt", "caf\u00e9 \u6587\u4ef6.txt", "e\u0301t\u00e9", "new\nline", "'quoted'",
             "back\\slash"]


def files_under(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    with running_testnet(tmp_path_factory.mktemp("tree"), nodes=3) as network:
        yield network


def make_tree(root: Path, outside: Path) -> dict[str, bytes]:
    """A tree with nested folders, empty files, a 50 MiB file and odd names; plus a symbolic
    link and a FIFO, which are not stored. Returns what must come back."""
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "empty folder").mkdir()
    expected = {
        "top.txt": b"top\n",
        "empty": b"",
        "a/also empty": b"",
        "a/b/c/deep.bin": os.urandom(70_000),
        "a/big.bin": os.urandom(BIG_BYTES),
    }
    expected.update({f"a/b/{name}": name.encode() * 3 for name in ODD_NAMES})
    for relative, data in expected.items():
        (root / relative).write_bytes(data)
    (outside / "secret").write_bytes(b"outside the tree")
    os.symlink(outside / "secret", root / "a" / "link-to-file")
    os.symlink(outside, root / "link-to-dir")
    os.mkfifo(root / "a" / "fifo")
    return expected


def test_a_tree_goes_up_and_comes_back_byte_exact(net, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "photos"
    expected = make_tree(root, outside)

    put = net.cli("put", "-r", str(root), "--name", "trips/2024", "--json")
    stored = json.loads(put.stdout)
    assert stored["files_ok"] == len(expected) and stored["files_failed"] == 0
    assert stored["prefix"] == "trips/2024/"
    assert sorted(f["path"] for f in stored["files"]) == sorted(expected)
    assert {f["name"] for f in stored["files"]} == {f"trips/2024/{p}" for p in expected}
    assert stored["size_bytes"] == sum(map(len, expected.values()))
    assert sorted((s["path"], s["reason"].split(" ")[0]) for s in stored["skipped"]) == [
        ("a/fifo", "not"), ("a/link-to-file", "symbolic"), ("link-to-dir", "symbolic")]

    out = tmp_path / "out"
    got = net.cli("get", "-r", "trips/2024", "-o", str(out), "--json")
    fetched = json.loads(got.stderr)
    assert fetched["files_ok"] == len(expected) and fetched["files_failed"] == 0 and fetched["complete"]
    assert files_under(out) == expected
    assert not any(p.is_symlink() for p in out.rglob("*"))
    assert (outside / "secret").read_bytes() == b"outside the tree"

    # Text output: one summary line each, exit 0.
    again = net.cli("get", "-r", "trips/2024/a/b", "-o", str(tmp_path / "text"))
    assert again.stderr.decode().strip().splitlines()[-1].startswith(
        f"wrote {len(ODD_NAMES) + 1} file(s)")
    assert files_under(tmp_path / "text") == {k[len("a/b/"):]: v for k, v in expected.items()
                                              if k.startswith("a/b/")}


def test_the_default_prefix_is_the_directory_name(net, tmp_path):
    root = tmp_path / "notes"
    root.mkdir()
    (root / "n.txt").write_bytes(b"n")
    put = net.cli("put", "-r", str(root))
    assert put.stdout.decode().strip() == "stored 1 file(s), 1 B, under notes/"
    assert json.loads(net.cli("stat", "notes/n.txt", "--json").stdout)["size_bytes"] == 1


def test_names_that_would_leave_the_directory_are_refused_and_the_rest_arrive(net, tmp_path):
    bad = ["up/../escape", "up/../../etc/passwd", "up//double", "up/./dot", "up/ends/", "up/a"]
    for name in [*bad, "up/a/b", "up/fine.txt"]:
        net.cli("put", "-", "--name", name, stdin=name.encode())
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out"
    result = net.cli("get", "-r", "up", "-o", str(out), "--json", check=False)
    assert result.returncode == ExitCode.FAILURE, result.stderr
    facts = json.loads(result.stderr)
    failed = {f["name"] for f in facts["files"] if f["error"] is not None}
    # "up/a" is also the directory of "up/a/b": it cannot be both.
    assert failed == set(bad)
    assert facts["files_failed"] == len(bad) and facts["files_ok"] == 2
    assert files_under(out) == {"a/b": b"up/a/b", "fine.txt": b"up/fine.txt"}
    assert sorted(p.name for p in work.iterdir()) == ["out"]

    text = net.cli("get", "-r", "up", "-o", str(tmp_path / "text"), check=False)
    assert text.returncode == ExitCode.FAILURE
    lines = text.stderr.decode().strip().splitlines()
    assert sum(line.startswith("failed up/") for line in lines) == len(bad)
    assert lines[-1].endswith(f", {len(bad)} failed")
    assert "Traceback" not in text.stderr.decode()


def test_symbolic_links_in_the_directory_are_not_followed(net, tmp_path):
    for name in ("links/sub/f.txt", "links/g.txt"):
        net.cli("put", "-", "--name", name, stdin=b"from the cluster")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "g.txt").write_bytes(b"keep me")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(outside, out / "sub")  # a directory on the way is a link out of DIR
    os.symlink(outside / "g.txt", out / "g.txt")  # the file itself is a link out of DIR

    refused = net.cli("get", "-r", "links", "-o", str(out), "--json", check=False)
    assert refused.returncode == ExitCode.FAILURE
    errors = {f["name"]: f["error"] for f in json.loads(refused.stderr)["files"]}
    assert "symbolic link" in errors["links/sub/f.txt"] and "exists" in errors["links/g.txt"]
    assert sorted(p.name for p in outside.iterdir()) == ["g.txt"]

    forced = net.cli("get", "-r", "links", "-o", str(out), "--force", "--json", check=False)
    assert forced.returncode == ExitCode.FAILURE  # the linked directory is still refused
    assert (out / "g.txt").is_file() and not (out / "g.txt").is_symlink()
    assert (out / "g.txt").read_bytes() == b"from the cluster"
    assert (outside / "g.txt").read_bytes() == b"keep me"
    assert sorted(p.name for p in outside.iterdir()) == ["g.txt"]


def test_a_tree_with_an_unreadable_file_reports_it_and_stores_the_rest(net, tmp_path):
    root = tmp_path / "mixed"
    root.mkdir()
    (root / "ok.txt").write_bytes(b"ok")
    (root / "bad\udcff.txt").write_bytes(b"a file name that is not UTF-8")
    result = net.cli("put", "-r", str(root), "--json", check=False)
    assert result.returncode == ExitCode.FAILURE
    facts = json.loads(result.stdout)
    assert facts["files_ok"] == 1 and facts["files_failed"] == 1
    assert [f["error"] is None for f in facts["files"]] == [False, True]  # sorted: b... before o...
    assert json.loads(net.cli("stat", "mixed/ok.txt", "--json").stdout)["size_bytes"] == 2


def test_get_r_needs_an_output_directory(net):
    result = net.cli("get", "-r", "trips", check=False)
    assert result.returncode == ExitCode.BAD_INPUT
    assert "get -r needs -o DIR" in result.stderr.decode()
