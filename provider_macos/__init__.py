"""zcompute provider adapter for macOS."""
