"""What a run shows of itself: events, hooks, progress, metrics, telemetry and the audit trail."""
