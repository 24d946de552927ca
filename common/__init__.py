"""Parts shared by the head node, providers and user clients."""

__version__ = "0.1.0"
