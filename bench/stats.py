"""Summaries of repeated measurements: min/median/max and how noisy they were."""
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    n: int
    min: float
    median: float
    max: float

    @property
    def spread(self) -> float:
        """(max - min) / median: 0.05 means the repetitions agreed within 5%."""
        return (self.max - self.min) / self.median if self.median else 0.0

    def as_dict(self) -> dict:
        return {"n": self.n, "min": self.min, "median": self.median, "max": self.max,
                "spread": round(self.spread, 4)}


def summarize(values) -> Summary | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return Summary(len(values), min(values), statistics.median(values), max(values))


def ratio(a: Summary | None, b: Summary | None) -> float | None:
    """How many times b's median is a's (a/b): > 1 means a takes longer per unit than b."""
    if a is None or b is None or not b.median:
        return None
    return a.median / b.median
