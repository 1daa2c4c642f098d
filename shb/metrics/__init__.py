"""Metric plug-ins run by ``shb.run``: each turns one work unit into rows, chunk by chunk.

Metric modules import torch only inside methods: ``estimate`` runs in ``shb plan``.
"""
