"""The `sub` command line."""
