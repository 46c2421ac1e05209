"""Shared fixtures: identities are generated per test session, never committed."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from p2pfs import identity
from p2pfs.wire import Role

pytest_plugins = ["stop_on_sigterm"]

# The suite runs on shared machines: how long Hypothesis takes to draw an example says nothing about
# the code under test, so neither its deadline nor its too-slow check may fail a run.
settings.register_profile("shared_machine", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("shared_machine")


@pytest.fixture(scope="session")
def ca_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("ca")
    identity.init_ca(directory)
    return directory


@pytest.fixture(scope="session")
def make_identity(ca_dir, tmp_path_factory):
    """Create a fresh identity signed by the session CA: make_identity(Role.NODE)."""
    counter = itertools.count()
    ca = identity.load_ca(ca_dir)

    def make(role: Role = Role.NODE, *, authority: identity.CertificateAuthority | None = None, **kwargs):
        directory = tmp_path_factory.mktemp(f"{role.value}{next(counter)}")
        return identity.create_identity(directory, authority or ca, role, **kwargs)

    return make
