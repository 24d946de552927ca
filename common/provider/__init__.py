"""The provider runtime shared by the generic, macOS and Windows providers."""
