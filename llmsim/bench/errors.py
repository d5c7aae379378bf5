"""The one exception bench raises for a run that cannot start."""

from __future__ import annotations


class BenchError(RuntimeError):
    """The run cannot start or cannot go on; str() is one line saying why.

    The CLI prints it as `llmsim: error: …` and exits 2, the same status as a usage error, so a
    CI job never mistakes "could not run" for "ran and missed an SLO" (exit 1).
    """
