"""The zcompute error tree.

    ZComputeError
    ├── ConfigError            bad settings or command-line values
    ├── ProtocolError          a message that cannot be trusted
    │   └── DecodeError        frames that do not decode (bad msgpack, sizes, dtypes)
    ├── RequestError           the head refused a request; carries an error code
    │   ├── ValidationError    bad job parameters or arrays
    │   ├── UnknownJobError    no such job (or not yours)
    │   ├── QueueFullError     too many queued jobs for this client
    │   └── AuthError          missing, bad or insufficient credentials
    ├── TransportError         the network did not deliver
    │   └── HeadUnreachable    no reply from the head after all retries
    ├── JobFailed              the job finished in state failed
    ├── JobCancelled           the job was cancelled
    └── TaskError              a shard's compute raised (provider side)
"""

from __future__ import annotations


class ZComputeError(Exception):
    """Base of every error zcompute raises on purpose."""


class ConfigError(ZComputeError):
    pass


class ProtocolError(ZComputeError):
    pass


class DecodeError(ProtocolError):
    pass


class RequestError(ZComputeError):
    code = "bad_request"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class ValidationError(RequestError):
    code = "invalid"


class UnknownJobError(RequestError):
    code = "unknown_job"


class QueueFullError(RequestError):
    code = "queue_full"


class AuthError(RequestError):
    code = "auth"


class TransportError(ZComputeError):
    pass


class HeadUnreachable(TransportError):
    pass


class JobFailed(ZComputeError):
    pass


class JobCancelled(ZComputeError):
    pass


class TaskError(ZComputeError):
    pass


_BY_CODE = {cls.code: cls for cls in (RequestError, ValidationError, UnknownJobError, QueueFullError, AuthError)}


def request_error(code: str, message: str) -> RequestError:
    """The RequestError subclass for an error code received in an ERROR reply."""
    cls = _BY_CODE.get(code, RequestError)
    return cls(message, code)
