"""Per-process state of the node: settings, job store, spool, the model loaded once, and the
process's policy for patient identifiers in logs (:mod:`medversa.node.phi`)."""

from __future__ import annotations

import logging
import threading
from functools import cached_property

from medversa.dicom_mapping import AlgorithmInfo
from medversa.inference import model_identity

from . import phi
from .job_store import Store
from .monitoring import Metrics
from .settings import NodeSettings
from .spool import Spool

LOGGER = logging.getLogger(__name__)


class NodeContext:
    def __init__(self, settings: NodeSettings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        settings.results_dir.mkdir(parents=True, exist_ok=True)
        phi.configure(settings.logging.log_phi, settings.data_dir)
        self.store = Store(settings.db_url)
        self.spool = Spool(settings.spool_dir)
        self.metrics = metrics or Metrics()
        self._model_lock = threading.Lock()

    @cached_property
    def analyzer(self):
        """The model, loaded once per process (a worker keeps it for every job)."""
        from medversa.inference import load_analyzer

        with self._model_lock:
            m = self.settings.model
            analyzer = load_analyzer(m.checkpoint, preset=m.preset, device=m.device)
            LOGGER.info("model loaded: %s (%s)", analyzer.model.config.name, model_identity(analyzer))
            return analyzer

    @cached_property
    def choose_for(self):
        """The scripted-answer chooser when configured (integration testing), else None."""
        path = self.settings.model.scripted_answers
        if path is None:
            return None
        import yaml

        from medversa.inference import scripted_chooser

        LOGGER.warning("SCRIPTED ANSWERS from %s: results are planted, not the model's (testing only)", path)
        return scripted_chooser(self.analyzer.tokenizer, yaml.safe_load(path.read_text()))

    @cached_property
    def algorithm(self) -> AlgorithmInfo:
        from .infer import algorithm_for

        return algorithm_for(self.analyzer, self.settings.organisation_uid_root)
