"""The model repository: ``<root>/<name>/<version>/{model.onnx, config.toml}``.

Every version loads at start-up; a bad version is recorded as FAILED with its error (shown by
``GetModel``, the log and ``xaiserve_model_load_failures_total``) and does not stop the others.
Request-time lookups are dictionary look-ups after the name is validated — a request never
touches the file system. A reload that fails keeps the last good version serving.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xaiserve.config import Settings
from xaiserve.contracts.names import validate_name
from xaiserve.errors import ModelNotFound, Unavailable
from xaiserve.imaging.preprocess import to_network_input
from xaiserve.models.config import CONFIG_FILE, MODEL_FILE, ModelConfig, load_config
from xaiserve.models.model import Model
from xaiserve.models.remote_model import build_remote_model
from xaiserve.models.warmup import warm_up
from xaiserve.observability import Metrics
from xaiserve.runtime.batcher import DynamicBatcher, ImageBudget
from xaiserve.runtime.onnx_session import OnnxSession
from xaiserve.runtime.priority import in_background_thread

log = logging.getLogger(__name__)


def version_key(version: str) -> tuple[int, int | str]:
    return (1, int(version)) if version.isdigit() else (0, version)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class VersionEntry:
    version: str
    model: Model | None = None
    error: str = ""
    config: ModelConfig | None = None
    sha256: str = ""
    stamp: tuple[tuple[int, int], ...] = ()  # (mtime_ns, size) of the files at the last attempt

    @property
    def ready(self) -> bool:
        return self.model is not None


@dataclass
class ModelEntry:
    name: str
    versions: dict[str, VersionEntry] = field(default_factory=dict)

    def newest_first(self) -> list[VersionEntry]:
        return sorted(self.versions.values(), key=lambda v: version_key(v.version), reverse=True)


class ModelRepository:
    def __init__(
        self, root: Path | str, settings: Settings, metrics: Metrics, budget: ImageBudget
    ) -> None:
        self.root = Path(root).resolve()
        self.settings = settings
        self.metrics = metrics
        self.budget = budget
        self._models: dict[str, ModelEntry] = {}
        self._lock = threading.RLock()
        self.loaded = threading.Event()

    # -- loading -------------------------------------------------------------------------------
    def load_all(self) -> None:
        """Load every version found under the root (errors are recorded, never raised)."""
        if not self.root.is_dir():
            log.error("model repository %s does not exist", self.root)
        else:
            for model_dir in sorted(self.root.iterdir()):
                if not model_dir.is_dir() or model_dir.name.startswith("."):
                    continue
                for version_dir in sorted(model_dir.iterdir()):
                    if version_dir.is_dir() and not version_dir.name.startswith("."):
                        self.load_version(model_dir.name, version_dir.name)
        self._update_ready_gauge()
        self.loaded.set()

    def scan(self) -> list[str]:
        """Load versions that appeared and reload those whose files changed since the last
        attempt (a failed reload keeps the last good load serving). Returns what it (re)loaded."""
        touched: list[str] = []
        if not self.root.is_dir():
            return touched
        for model_dir in sorted(self.root.iterdir()):
            if not model_dir.is_dir() or model_dir.name.startswith("."):
                continue
            for version_dir in sorted(model_dir.iterdir()):
                if not version_dir.is_dir() or version_dir.name.startswith("."):
                    continue
                with self._lock:
                    known = self._models.get(model_dir.name, ModelEntry("")).versions.get(
                        version_dir.name
                    )
                if known is None or known.stamp != _stamp(version_dir):
                    self.load_version(model_dir.name, version_dir.name)
                    touched.append(f"{model_dir.name}/{version_dir.name}")
        return touched

    def load_version(self, name: str, version: str) -> VersionEntry:
        """(Re)load one version. On failure a previously good version keeps serving."""
        with self._lock:
            entry = self._models.setdefault(name, ModelEntry(name))
            previous = entry.versions.get(version)
        stamp = _stamp(self.root / name / version)
        try:
            validate_name(name, "model folder")
            validate_name(version, "version folder")
            folder = (self.root / name / version).resolve()
            if self.root not in folder.parents:
                raise ValueError(f"{folder} resolves outside the repository {self.root}")
            model = self._build(name, version, folder)
        except Exception as exc:
            message = str(exc) or type(exc).__name__
            where = f"{name}/{version}"
            if where not in message:
                message = f"{where}: {message}"
            log.error(
                "model %s/%s failed to load: %s", name, version, message, extra={"model": name}
            )
            self.metrics.model_load_failures_total.labels(model=name).inc()
            with self._lock:
                if previous is not None and previous.ready:
                    previous.error = f"reload failed, still serving the last good load: {message}"
                    previous.stamp = stamp
                    return previous
                failed = VersionEntry(version=version, error=message, stamp=stamp)
                entry.versions[version] = failed
                self._update_ready_gauge()
                return failed
        with self._lock:
            entry.versions[version] = VersionEntry(
                version=version, model=model, config=model.config, sha256=model.sha256, stamp=stamp
            )
            self._update_ready_gauge()
        if previous is not None and previous.model is not None:
            self.metrics.model_info.labels(
                model=name,
                version=version,
                sha256=previous.sha256,
                providers=",".join(previous.model.providers),
            ).set(0)
            # Requests that already hold the old model finish on it; close it a little later.
            old = previous.model
            timer = threading.Timer(self.settings.drain_seconds, old.close)
            timer.daemon = True
            timer.start()
        self.metrics.model_info.labels(
            model=name, version=version, sha256=model.sha256, providers=",".join(model.providers)
        ).set(1)
        if model.provider_fallback:
            self.metrics.provider_fallback.labels(
                model=name, version=version, missing=",".join(model.provider_fallback)
            ).set(1)
        log.info(
            "model %s/%s ready",
            name,
            version,
            extra={"model": name, "version": version, "providers": ",".join(model.providers)},
        )
        return entry.versions[version]

    def _build(self, name: str, version: str, folder: Path) -> Model:
        for file_name in (CONFIG_FILE, MODEL_FILE):
            self._inside(folder / file_name)
        config = load_config(folder / CONFIG_FILE)
        onnx_path = folder / MODEL_FILE
        remote = config.backend.kind == "oip"
        if not onnx_path.is_file() and not remote:
            raise FileNotFoundError(
                f"{onnx_path}: file missing (every model version needs {MODEL_FILE})"
            )
        if config.torch is not None:
            self._inside(folder / config.torch.weights)
        sha = file_sha256(onnx_path) if onnx_path.is_file() else ""
        if config.sha256 and sha != config.sha256:
            raise ValueError(
                f"{onnx_path}: SHA-256 {sha or '(no file)'} does not match the pin in {CONFIG_FILE} "
                f"({config.sha256})"
            )
        if remote:
            model = build_remote_model(
                name=name,
                version=version,
                folder=folder,
                config=config,
                local_sha256=sha,
                metrics=self.metrics,
                budget=self.budget,
                torch_copies=self.settings.torch_copies,
                torch_batch_bytes=self.settings.torch_batch_bytes,
                providers=self.settings.providers,
            )
            return self._check_and_warm(model)
        # Created in a lowered thread: its intra-op threads run explanation batches at a lower
        # CPU priority than Predict's lane (runtime.priority).
        session = in_background_thread(
            lambda: OnnxSession(
                onnx_path,
                input_name=config.input.name,
                providers=self.settings.providers,
                threads=config.execution.intra_op_threads or self.settings.intra_op_threads,
            )
        )
        batcher = DynamicBatcher(
            session.run,
            model=name,
            version=version,
            runtime=session.runtime,
            max_batch_size=config.batching.max_batch_size,
            max_queue_delay_s=config.batching.max_queue_delay_ms / 1000.0,
            budget=self.budget,
            metrics=self.metrics,
            interactive_runner=self._interactive_runner(session, onnx_path, config),
            workers=config.execution.workers or self.settings.inference_workers,
        )
        model = Model(
            name=name,
            version=version,
            folder=folder,
            config=config,
            sha256=sha,
            batcher=batcher,
            providers=list(session.providers),
            input_name=session.input_name,
            intra_op_threads=session.intra_op_threads,
            torch_copies=self.settings.torch_copies,
            torch_batch_bytes=self.settings.torch_batch_bytes,
            artifact_folder=_artifact_folder(self.settings.artifacts_root, name, version),
        )
        model.provider_fallback = tuple(session.fallback)
        return self._check_and_warm(model)

    def _interactive_runner(
        self, session: OnnxSession, path: Path, config: ModelConfig
    ) -> Callable[[np.ndarray], np.ndarray]:
        """Predict's lane (``runtime.batcher``): on the CPU a second session of the graph with
        ``interactive_threads`` threads (one more copy of the weights), so that a Predict never
        waits for the main session's explanation batches; on an accelerator, or with
        ``interactive_threads = 0``, the main session itself (its ``run`` is thread-safe)."""
        if session.device != "cpu" or self.settings.interactive_threads == 0:
            return session.run
        lane = OnnxSession(
            path,
            input_name=config.input.name,
            providers=self.settings.providers,
            threads=self.settings.interactive_threads,
        )
        return lane.run

    def _check_and_warm(self, model: Model) -> Model:
        try:
            _smoke_test(model)
            if self.settings.warmup:
                warm_up(model, self.settings.warmup_budget_seconds, self.metrics)
        except Exception:
            model.close()
            raise
        return model

    def _inside(self, path: Path) -> None:
        """Refuse a file that is (or goes through) a symlink pointing outside the repository."""
        if path.is_symlink() or path.exists():
            target = path.resolve()
            if self.root not in target.parents:
                raise ValueError(f"{path} resolves to {target}, outside the repository {self.root}")

    def _update_ready_gauge(self) -> None:
        ready = sum(1 for e in self._models.values() for v in e.versions.values() if v.ready)
        self.metrics.models_ready.set(ready)

    # -- look-ups ------------------------------------------------------------------------------
    def get(self, name: str, version: str = "") -> Model:
        """The ready model for ``name`` (newest ready version when ``version`` is empty)."""
        validate_name(name, "model")
        if version:
            validate_name(version, "version")
        with self._lock:
            entry = self._models.get(name)
            if entry is None:
                raise ModelNotFound(
                    f"model {name!r} is not in the repository; ListModels shows what is"
                )
            if version:
                v = entry.versions.get(version)
                if v is None:
                    raise ModelNotFound(f"model {name!r} has no version {version!r}")
                if v.model is None:
                    raise Unavailable(
                        f"model {name!r} version {version!r} failed to load: {v.error}"
                    )
                return v.model
            for v in entry.newest_first():
                if v.model is not None:
                    return v.model
            reason = entry.newest_first()[0].error if entry.versions else "no versions found"
        raise Unavailable(f"model {name!r} has no version that loaded (newest failed: {reason})")

    def entries(self) -> list[ModelEntry]:
        with self._lock:
            return [self._models[k] for k in sorted(self._models)]

    def entry(self, name: str) -> ModelEntry:
        validate_name(name, "model")
        with self._lock:
            found = self._models.get(name)
        if found is None:
            raise ModelNotFound(
                f"model {name!r} is not in the repository; ListModels shows what is"
            )
        return found

    def ready_models(self) -> list[Model]:
        with self._lock:
            return [v.model for e in self._models.values() for v in e.versions.values() if v.model]

    def close(self) -> None:
        for model in self.ready_models():
            model.close()


def _smoke_test(model: Model) -> None:
    """Real forward passes on a grey and a random image: catches a config that does not fit
    the graph, and a model whose outputs are not finite numbers (NaN/inf would be served as
    probabilities and turn every heatmap to zeros). The input is bounded by the config's
    ``MAX_INPUT_PIXELS``."""
    h, w = model.input_size
    images = np.stack(
        [
            np.full((h, w, 3), 127.0, np.float32),
            np.random.default_rng(0).uniform(0.0, 255.0, (h, w, 3)).astype(np.float32),
        ]
    )
    for image in images:
        out = np.asarray(model.batcher.runner(to_network_input(image[None], model.config.input)))
        if out.ndim != 2 or out.shape[1] != model.num_classes:
            raise ValueError(
                f"the graph outputs shape {list(out.shape)} but output.labels has "
                f"{model.num_classes} labels: they must match"
            )
        if not np.isfinite(out).all():
            raise ValueError(
                "the graph's outputs are not finite (NaN or infinity) on a test image: "
                "the model cannot be served"
            )


def _stamp(folder: Path) -> tuple[tuple[int, int], ...]:
    out = []
    for name in (CONFIG_FILE, MODEL_FILE):
        try:
            st = (folder / name).stat()
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((0, -1))
    return tuple(out)


def _artifact_folder(root: str, name: str, version: str) -> Path:
    from xaiserve.models.artifacts import version_folder

    return version_folder(root, name, version)
