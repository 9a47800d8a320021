"""Where things live on the shared volume (DESIGN.md section 3)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Topic names follow the deployment fraudpipe replaces, so operators find what they know.
RAW = "raw-transactions"
FEATURES = "features-ready"
RESULTS = "inference-results"
TOPICS = (RAW, FEATURES, RESULTS)


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def queue(self) -> Path:
        return self.root / "queue"

    def topic(self, name: str) -> Path:
        return self.queue / name

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def results(self) -> Path:
        """Scored batches, partitioned by date: results/date=YYYY-MM-DD/<id>.parquet."""
        return self.root / "results"

    @property
    def status(self) -> Path:
        """One heartbeat/stats JSON file per live worker."""
        return self.root / "status"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def log(self) -> Path:
        """The event log written by gather: state/log/{transactions,labels}/day=.../<id>.parquet."""
        return self.state / "log"

    @property
    def feature_store(self) -> Path:
        """Features as computed for serving, kept for training: state/features/day=.../<id>."""
        return self.state / "features"

    @property
    def gather_checkpoint(self) -> Path:
        return self.state / "gather"

    @property
    def control(self) -> Path:
        """Operator requests (e.g. train-now) dropped as files."""
        return self.root / "control"
