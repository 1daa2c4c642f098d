"""Metric plug-ins run by the unit runner (shb.runner): each turns one work unit into rows, chunk by chunk,
and declares what its chunks read and wait for (shb.metrics.base).

Metric modules import torch only inside methods (the modules that import it at their top: shb.engine,
shb.scorers.*): ``estimate`` runs in ``shb plan`` and executors read the declarations without torch.
Everything else they use is imported at module level.
"""
