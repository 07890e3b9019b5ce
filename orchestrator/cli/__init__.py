"""The ``orchestrator`` command line: its flags (``app``), what each mode does (``commands``),
the flags checked (``options``), the runs (``runs``) and how they are watched (``watch``), the
reports that run nothing (``reports``), and project files."""
