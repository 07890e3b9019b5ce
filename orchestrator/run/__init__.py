"""One run of a project: the ``Orchestrator`` a user holds and what it shares with its runs
(the session, the config, the saved projects, what watches them, the channels between tasks),
the engine's loop with its plan and final status, the task graph, the prompts, and the run's
vocabulary (tasks, results, the project state). Each task's loop is ``orchestrator.task``; work
beyond one run (jobs, the agent pool, workers) is ``orchestrator.jobs``."""
