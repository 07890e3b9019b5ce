"""The ``orchestrator`` command line: its flags (``app``), what each mode does (``commands``)
and project files."""
