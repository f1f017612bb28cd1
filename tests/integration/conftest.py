"""Fixtures shared by the integration tests of one kind."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from tests.support.env import Lab
from tests.support.libvirtd import PrivateLibvirtd, session_libvirtd

_ids = itertools.count(1)


@pytest.fixture(scope="module")
def libvirtd(lab: Lab) -> Iterator[PrivateLibvirtd]:
    """A private libvirtd for the test module, in namespaces of its own."""
    yield from session_libvirtd(lab.dir / f"libvirtd-{os.getpid()}-{next(_ids)}")
