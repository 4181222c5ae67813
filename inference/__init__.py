"""MedVersa: the model and orchestrated inference.

Public entry points: :class:`~medversa.inference.analyzer.Analyzer` (run task
requests), :func:`~medversa.inference.presets.create_config` (named presets) and
:mod:`~medversa.inference.checkpoint` (save/load). This room knows nothing of
DICOM or networking (see ``ARCHITECTURE.md``).
"""
