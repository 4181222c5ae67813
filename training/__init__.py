"""Offline training: dataset readers, templates, sampler, losses, trainer, evaluation."""
