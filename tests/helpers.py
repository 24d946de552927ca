"""Small test helpers shared across the suites."""

from __future__ import annotations

import time


def wait_until(predicate, timeout: float, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def hidden_dir_wrapper(path) -> list[str]:
    """A command prefix that runs a process as on another machine as far as ``path`` goes: in a mount
    namespace of its own, with an empty tmpfs over ``path`` (root only; Linux ``unshare``)."""
    return ["unshare", "--mount", "sh", "-c", f'mount -t tmpfs zcompute-hidden "{path}" && exec "$@"', "sh"]
