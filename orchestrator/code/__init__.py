"""Model-written code: the validators, the sandbox that runs it (and the runners inside it), the
project tree it is assembled into, the integration rounds, and the writer of the output."""
