"""One task's loop: the steps from the first answer to a good enough one (``runner``), the
task's paid calls to models (``calls``), the evaluators' verdicts and score (``evaluation``),
and what its prompt carries of the tasks it depends on (``dependency_context``)."""
