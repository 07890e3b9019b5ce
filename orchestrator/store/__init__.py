"""Where a run's state lives: the store seam, SQLite and PostgreSQL behind it, the state manager
and its parts (tables, projects and checkpoints, who holds a project, the journal of paid calls,
the ledger's books, what runs measured) and the project lease."""
