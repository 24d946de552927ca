"""The zcompute head node: accepts jobs, shards them, leases shards to providers, assembles results."""
