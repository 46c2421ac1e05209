"""The pure rules under put -r, get -r and resumed puts: which names may become paths,
what a put's default prefix is, and the held-chunks bitmap."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pfs import errors
from p2pfs.client.tree import put_prefix, relative_path
from p2pfs.replication import messages as dm


@pytest.mark.parametrize("name, prefix, expected", [
    ("photos/a.jpg", "photos/", "a.jpg"),
    ("photos/2024/d e.jpg", "photos/", "2024/d e.jpg"),
    ("photos/new\nline", "photos/", "new\nline"),
    ("a/..b/c..", "a/", "..b/c.."),  # dots inside a part are only characters
    ("top", "", "top"),
])
def test_names_that_map_below_the_directory(name, prefix, expected):
    assert relative_path(name, prefix) == expected


@pytest.mark.parametrize("name, prefix", [
    ("photos/../x", "photos/"), ("photos/a/../../x", "photos/"), ("photos//x", "photos/"),
    ("photos/./x", "photos/"), ("photos/x/", "photos/"), ("photos/", "photos/"), ("/etc/passwd", ""),
    ("..", ""), (".", ""),
])
def test_names_that_could_leave_the_directory_are_refused(name, prefix):
    with pytest.raises(errors.BadInput):
        relative_path(name, prefix)


@pytest.mark.parametrize("directory, prefix, expected", [
    (Path("/data/photos"), None, "photos/"), (Path("/data/photos"), "trips/2024/", "trips/2024/"),
    (Path("/data/photos"), "trips", "trips/"), (Path("/data/photos"), "", ""), (Path("/"), None, ""),
])
def test_the_prefix_of_a_put_tree(directory, prefix, expected):
    assert put_prefix(directory, prefix) == expected


def test_the_held_bitmap_marks_exactly_the_held_chunks():
    held = [i % 3 == 0 or i == 10 for i in range(17)]
    bitmap = dm.held_bitmap(held)
    assert len(bitmap) == 3
    assert [dm.is_held(bitmap, i) for i in range(17)] == held
    assert not dm.is_held(bitmap, 100)  # past the bitmap: sent
    assert dm.held_bitmap([]) == b""
