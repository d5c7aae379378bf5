"""The files `llmsim bench` reads: DIR/requests.csv (one row per request) and DIR/llm_metrics.json.

requests.csv is appended as rows arrive (from this process, or from workers' reports), so the
end of a run only flushes; llm_metrics.json is small and rewritten atomically each time the run
reaches an end point (test stop, quitting, quit), so a Ctrl-C still leaves a complete file.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from llmsim.load.metrics import ROW_FIELDS

SUMMARY_FILE = "llm_metrics.json"
REQUESTS_FILE = "requests.csv"


class ResultsWriter:
    """Writes one run's requests.csv and llm_metrics.json into `directory` (created if missing)."""

    def __init__(self, directory: str) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._fh = None
        self._csv: Any = None

    def start(self) -> None:
        """Begin a new run: requests.csv starts over with its header."""
        self.close()
        self._fh = open(self.dir / REQUESTS_FILE, "w", newline="", encoding="utf-8")  # noqa: SIM115
        self._csv = csv.writer(self._fh)
        self._csv.writerow(ROW_FIELDS)

    def write_rows(self, rows: list[list[Any]]) -> None:
        """Append requests.csv rows (RequestRecord.row lists); dropped when no run has started."""
        if rows and self._csv is not None:
            self._csv.writerows(rows)

    def flush(self) -> None:
        """Push the rows buffered so far into requests.csv."""
        if self._fh is not None:
            self._fh.flush()

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Flush the rows, then atomically replace llm_metrics.json with `summary` (via .tmp)."""
        self.flush()
        path = self.dir / SUMMARY_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    def close(self) -> None:
        """Close requests.csv; rows written after it are dropped until the next start()."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            self._csv = None
