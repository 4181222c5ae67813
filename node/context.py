"""Per-process state of the node: settings, job store, spool, and the model loaded once."""

from __future__ import annotations

import logging
import threading
from functools import cached_property

from medversa import __version__
from medversa.dicom_mapping.identity import AlgorithmInfo

from .config import NodeSettings
from .metrics import Metrics
from .spool import Spool
from .store import Store

LOGGER = logging.getLogger(__name__)


class NodeContext:
    def __init__(self, settings: NodeSettings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        settings.results_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(settings.db_url)
        self.spool = Spool(settings.spool_dir)
        self.metrics = metrics or Metrics()
        self._model_lock = threading.Lock()

    @cached_property
    def analyzer(self):
        """The model, loaded once per process (a worker keeps it for every job)."""
        from medversa.inference.bundled import load_default_analyzer

        with self._model_lock:
            m = self.settings.model
            analyzer = load_default_analyzer(m.checkpoint, m.preset, m.device)
            LOGGER.info("model loaded: %s (%s)", analyzer.model.config.name, self.model_id_of(analyzer))
            return analyzer

    @staticmethod
    def model_id_of(analyzer) -> str:
        return getattr(analyzer, "model_id", "") or f"random-{analyzer.model.config.name}"

    @cached_property
    def choose_for(self):
        """The scripted-answer chooser when configured (integration testing), else None."""
        path = self.settings.model.scripted_answers
        if path is None:
            return None
        import yaml

        from medversa.inference.scripted import scripted_chooser

        LOGGER.warning("SCRIPTED ANSWERS from %s: results are planted, not the model's (testing only)", path)
        return scripted_chooser(self.analyzer.tokenizer, yaml.safe_load(path.read_text()))

    @cached_property
    def algorithm(self) -> AlgorithmInfo:
        analyzer = self.analyzer
        return AlgorithmInfo(
            version=__version__,
            model_id=self.model_id_of(analyzer),
            software_version=f"medversa-node {__version__}",
            model_name=f"MedVersa {analyzer.model.config.name}",
            org_root=self.settings.organisation_uid_root,
        )
