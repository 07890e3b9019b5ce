"""Where a run's state lives: the store seam, SQLite and PostgreSQL behind it, the state manager
(projects, checkpoints, the journal of paid calls) and the project lease."""
