"""Data validation: great-expectations suites plus drift checks against a reference snapshot.

`validate_dataset` runs two GX suites (documents, training data) through a checkpoint that
writes HTML data docs, adds drift checks (label distribution, text length distribution,
embedding centroid shift), and raises `ValidationFailed` when a critical check fails.
"""

from __future__ import annotations

from semflow.validation.checks import (
    ValidationFailed,
    ValidationReport,
    drift_checks,
    validate_dataset,
)

__all__ = ["ValidationFailed", "ValidationReport", "drift_checks", "validate_dataset"]
