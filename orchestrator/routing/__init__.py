"""Which model does what: the router, its backends, and the policies that bound every choice."""
