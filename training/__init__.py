"""Offline training: dataset readers, templates, sampler, losses, trainer, evaluation.

No other room imports training (it builds checkpoint folders that ``medversa.inference``
loads); the command line reaches it through its commands (``training.cli``,
``training.eval_cli``), so the package exports nothing.
"""

__all__: list[str] = []
