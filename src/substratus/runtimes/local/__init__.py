"""The embedded local runtime: a supervisor process, SQLite state, workloads as processes."""
