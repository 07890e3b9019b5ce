"""Work beyond one run: jobs, each a project with its own budget and caps, run by several
orchestrators at once (``agents``), and projects queued in PostgreSQL for workers on other
processes or machines (``workers``)."""
