"""The zcompute user client: ``Client`` and ``JobHandle`` to submit and collect work, ``LocalCluster``
to run a head and providers on this machine."""

from common.errors import (
    AuthError, HeadUnreachable, JobCancelled, JobFailed, QueueFullError, RequestError,
    UnknownJobError, ValidationError, ZComputeError,
)
from user_client.client import Client, JobHandle, TrainJob
from user_client.local import LocalCluster

__all__ = [
    "AuthError",
    "Client",
    "HeadUnreachable",
    "JobCancelled",
    "JobFailed",
    "JobHandle",
    "LocalCluster",
    "QueueFullError",
    "RequestError",
    "TrainJob",
    "UnknownJobError",
    "ValidationError",
    "ZComputeError",
]
