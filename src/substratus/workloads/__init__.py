"""The programs inside the built-in images; locally each runs as a process."""
