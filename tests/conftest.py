"""Fixtures that own their cleanup: local clusters of real processes on free ports."""

from __future__ import annotations

import pytest

from user_client import LocalCluster

FAST = {"heartbeat_interval": 0.2, "dead_after": 1.5}


@pytest.fixture
def make_cluster():
    """Factory: ``make_cluster(providers=2, **LocalCluster kwargs)``; every cluster is stopped after the test."""
    clusters: list[LocalCluster] = []

    def factory(providers: int = 2, **kwargs) -> LocalCluster:
        options = {**FAST, "insecure": True, "log_level": "info", **kwargs}
        cluster = LocalCluster(providers, **options)
        clusters.append(cluster)
        return cluster.start()

    yield factory
    for cluster in clusters:
        cluster.stop()


@pytest.fixture(scope="module")
def shared_cluster():
    """One 2-provider cluster for a module's read-mostly tests."""
    cluster = LocalCluster(2, insecure=True, log_level="info", **FAST).start()
    yield cluster
    cluster.stop()
