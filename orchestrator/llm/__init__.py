"""Calling models: the catalog of models and prices, one adapter per vendor SDK, the client with
its retries and circuit breakers (and beside it: what fits a context window, whole answers from
cut-off ones, vendor failures), the gateway every paid call goes through, and the embedded local
model."""
