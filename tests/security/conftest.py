"""Fixtures of the security suite: secured clusters of real processes, an admin client, raw sockets.

``cluster`` is one secured cluster shared by this package (1 provider, debug logs, so
``test_secrets`` can search everything the suite made the processes say),
unless a module asks for its own with a module-level ``CLUSTER = {...}`` of
``LocalCluster`` keyword arguments (``providers`` included).
"""

from __future__ import annotations

import pytest

from tests.security.support import RawPeer, secured_cluster


@pytest.fixture(scope="package")
def shared_cluster():
    with secured_cluster(1, log_level="debug") as local:
        yield local


@pytest.fixture(scope="module")
def cluster(request):
    """A secured (CURVE + tokens) local cluster: the module's own if it sets ``CLUSTER``, else the shared one."""
    options = getattr(request.module, "CLUSTER", None)
    if options is None:
        yield request.getfixturevalue("shared_cluster")
        return
    with secured_cluster(**options) as local:
        yield local


@pytest.fixture(scope="module")
def admin(cluster):
    """The cluster's admin client (sees every job)."""
    with cluster.client(timeout=5.0, retries=1) as c:
        yield c


@pytest.fixture
def raw(cluster):
    """Raw pyzmq sockets for this test; all closed afterwards."""
    with RawPeer(cluster) as peer:
        yield peer


def pytest_collection_modifyitems(config, items):
    """test_secrets searches the shared cluster's logs for every secret the suite handed out: run it last
    of this package (the other packages' tests keep their places)."""
    here = [i for i, item in enumerate(items) if "tests/security/" in item.nodeid]
    ours = [items[i] for i in here]
    ours.sort(key=lambda item: "tests/security/test_secrets.py" in item.nodeid)
    for i, item in zip(here, ours):
        items[i] = item
