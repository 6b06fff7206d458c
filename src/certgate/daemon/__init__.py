"""`certgate start`: configuration, the services it runs, diagnostics."""
