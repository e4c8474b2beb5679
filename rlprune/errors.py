"""Errors a user can cause. The CLI prints them as one line; anything else is a bug."""


class RlpruneError(Exception):
    """Base class for errors whose message tells the user what to fix."""


class ConfigError(RlpruneError):
    """A configuration value is unknown, of the wrong type, or out of range."""


class BudgetError(RlpruneError):
    """The latency budget cannot be met by any policy in the search space."""


class ModelError(RlpruneError):
    """The model cannot be searched (no prunable layer, bad checkpoint, shape mismatch)."""


class DataError(RlpruneError):
    """A dataset is missing, empty or in the wrong format."""


class MeasurementError(RlpruneError):
    """Timings taken on this machine contradict each other (it was busy while they were taken)."""


class TrackingError(RlpruneError):
    """The run finished and wrote its outputs, but W&B tracking failed.

    Args:
        message: one line naming the run folder and what failed.
        report: the finished run's report.
    """

    def __init__(self, message: str, report: dict | None = None) -> None:
        super().__init__(message)
        self.report = report
