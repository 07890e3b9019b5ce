"""One run of a project: the ``Orchestrator`` a user holds, the engine's loop, each task's loop,
the task graph and the run's vocabulary (tasks, results, the project state)."""
