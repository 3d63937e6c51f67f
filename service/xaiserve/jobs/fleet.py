"""One replica's part in the fleet: the state store, its operations API, the chunk workers.

Start-up: the store is opened (``state_url``: PostgreSQL; empty: the SQLite file
``<data_dir>/state.db``) and migrated in a background thread that retries with backoff and logs
why while the database is unreachable; :attr:`Fleet.ready` is set once it answers, and the
server reports SERVING only then (readiness stays false until the store is reachable). The
workers start once the store is ready *and* the models have loaded (a chunk needs its model).

While serving: housekeeping every :data:`HOUSEKEEPING_S` refreshes the fleet-wide gauges
(operations by kind/state, stored operations, pending chunks); every :data:`RETENTION_S` it
applies retention and sweeps temporary artifact folders left by crashed writers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from xaiserve.config import Settings
from xaiserve.imaging.decode import ImageLimits
from xaiserve.jobs import dataset_evaluation, gad_fitting
from xaiserve.jobs.chunk_sizing import ChunkSizer
from xaiserve.jobs.migrations import SchemaTooNew
from xaiserve.jobs.operations import ChunkRunner, OperationStore, Retention, backoff
from xaiserve.jobs.store import StoreUnavailable, open_store
from xaiserve.jobs.workers import WorkerPool
from xaiserve.models.artifacts import sweep_temporary
from xaiserve.observability import Metrics

log = logging.getLogger(__name__)

HOUSEKEEPING_S = 2.0
RETENTION_S = 60.0


class Fleet:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        models: dataset_evaluation.ModelSource,
        limits: ImageLimits,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = open_store(settings.state_url, settings.data_dir)
        sizer = ChunkSizer(settings.chunk_seconds, settings.chunk_items)
        self.operations = OperationStore(
            self.store,
            metrics,
            max_active=settings.max_active_operations,
            retention=Retention(
                settings.operations_retention_count,
                settings.operations_retention_days * 86400.0,
            ),
            chunk_sizer=sizer,
        )
        runners: dict[str, ChunkRunner] = {
            dataset_evaluation.KIND: dataset_evaluation.DatasetEvaluationRunner(
                models, self.store, limits, settings.datasets_dir, settings.artifacts_root, sizer
            ),
            gad_fitting.KIND: gad_fitting.GadFitRunner(
                models, self.store, limits, settings.datasets_dir
            ),
        }
        self.pool = WorkerPool(
            self.store,
            runners,
            metrics,
            workers=settings.operation_workers,
            lease_seconds=settings.lease_seconds,
            housekeeping=self.housekeeping,
            housekeeping_seconds=HOUSEKEEPING_S,
        )
        self.ready = threading.Event()
        self._stopped = threading.Event()
        self._last_retention = 0.0
        metrics.state_store_up.set(0)

    def start(self, on_ready: Callable[[], None], models_loaded: threading.Event) -> None:
        """Connect and migrate in the background (retrying), then start the workers."""

        def connect() -> None:
            attempt = 0
            while not self._stopped.is_set():
                try:
                    version = self.store.migrate()
                    break
                except (StoreUnavailable, SchemaTooNew) as exc:
                    delay = max(1.0, backoff(attempt, base=0.5, cap=15.0))
                    log.warning(
                        "state store not ready (%s); retrying in %.1f s, not ready until then",
                        exc,
                        delay,
                        extra={"store": self.store.url, "attempt": attempt + 1},
                    )
                    attempt += 1
                    self._stopped.wait(delay)
            else:
                return
            self.ready.set()
            self.metrics.state_store_up.set(1)
            log.info("state store ready", extra={"store": self.store.url, "schema": version})
            on_ready()
            try:
                self.housekeeping()
            except Exception as exc:
                if self._stopped.is_set():
                    return  # the server stopped meanwhile and closed the store
                log.warning("state store housekeeping failed: %s", exc)
            while not models_loaded.wait(0.5):
                if self._stopped.is_set():
                    return
            if not self._stopped.is_set():
                self.pool.start()  # operation_workers = 0: housekeeping only, no chunks

        threading.Thread(target=connect, name="state-store", daemon=True).start()

    def housekeeping(self) -> None:
        """Gauges every call; retention and the temporary-folder sweep every
        :data:`RETENTION_S` (sooner for a short age limit), and at once when more ended
        operations are stored than the count limit allows."""
        ended = self.operations.refresh_metrics()
        retention = self.operations.retention
        every = RETENTION_S
        if retention.max_age_seconds > 0:
            every = min(every, max(HOUSEKEEPING_S, retention.max_age_seconds / 4))
        now = time.monotonic()
        over = 0 < retention.max_count < ended
        if over or now - self._last_retention >= every:
            self._last_retention = now
            self.operations.apply_retention()
            sweep_temporary(self.settings.artifacts_root)

    def stop(self, timeout: float = 10.0) -> None:
        """Running chunks are released ("interrupted by shutdown") for others to resume."""
        self._stopped.set()
        self.pool.stop(timeout)
        self.operations.shutdown(timeout=2.0)
        self.store.close()
