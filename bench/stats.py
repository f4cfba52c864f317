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


def clock_fit(xs, errs) -> tuple:
    """(slope, residuals) of a line through (x, err): the drift of a clock error against the ideal
    clock `x`, and what is left of each point once the drift is taken out (the jitter). The slope
    is the median of the slopes between each point and the one half the run later, so one late
    write (a host hiccup, which the jitter shows) does not pass for a drift in a short run."""
    n = len(xs)
    h = max(1, n // 2)
    slope = statistics.median((errs[i + h] - errs[i]) / (xs[i + h] - xs[i]) for i in range(n - h)
                              if xs[i + h] != xs[i])
    offset = statistics.median(e - slope * x for x, e in zip(xs, errs))
    return slope, [e - offset - slope * x for x, e in zip(xs, errs)]


def timing_figures(xs, errs) -> dict:
    """Drift (ms per minute of the ideal clock) and jitter (median |residual|, p99 residual, ms),
    and the largest lateness (ms), of clock errors `errs` (seconds) measured at ideal times `xs`."""
    slope, resid = clock_fit(xs, errs)
    resid = sorted(resid)
    return {"drift_ms_per_min": slope * 60e3, "jitter_median_ms": statistics.median(abs(r) for r in resid) * 1e3,
            "jitter_p99_ms": resid[int(0.99 * (len(resid) - 1))] * 1e3, "late_max_ms": max(errs) * 1e3,
            "points": len(xs)}
