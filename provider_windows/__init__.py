"""zcompute provider adapter for Windows."""
