"""A read-only page over the state store, to watch runs in a browser (``--serve``; the ``web``
extra): ``views`` reads what the store holds into what a page shows, ``graph`` draws a task
graph, ``app`` serves the pages and ``serve`` runs the server. Nothing here is imported by a run
that does not serve."""
