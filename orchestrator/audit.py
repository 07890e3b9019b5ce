"""``orchestrator.audit``, the design document's path to :mod:`orchestrator.observe.audit`."""

from orchestrator.observe.audit import (
    GENESIS,
    INCOMPLETE,
    REDACTED,
    AuditCheck,
    AuditError,
    AuditLog,
    AuditRecord,
    log,
    record_hash,
    verify,
)

__all__ = [
    "GENESIS",
    "INCOMPLETE",
    "REDACTED",
    "AuditCheck",
    "AuditError",
    "AuditLog",
    "AuditRecord",
    "log",
    "record_hash",
    "verify",
]
