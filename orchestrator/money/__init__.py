"""Money: integer nano-dollar amounts, the one ledger that holds and settles every paid call,
the budget a run sees, and the forecasts and caps."""
