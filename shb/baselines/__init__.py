"""Fitted interventions: the methods of the paper's Table 1 that locate safety outside attention heads.

Contract between method modules and the framework (shb.baselines.fits, shb.metrics.asr) - every
method module ``shb/baselines/<name>.py`` exposes::

    KIND = "actsvd"                                   # the suite kind (a key of shb.registry.INTERVENTIONS)
    def fit(lm, data: FitData, params: dict, progress=None) -> Artefact
    def intervention(artefact: Artefact, params: dict) -> shb.interventions.Intervention

with, in shb/baselines/base.py::

    @dataclass class FitData:
        harmful: list[str]               # formatted prompts, exactly as fed to the model
        harmless: list[str]
        reference: LoadedModel | None = None   # the unaligned model, for methods that need one
        max_new_tokens: int = 32         # for methods that fit on the model's own responses
    @dataclass class Artefact:
        kind: str
        tensors: dict[str, torch.Tensor]
        meta: dict                       # JSON-able
        def to_bytes(self) -> bytes      # safetensors (no pickle)
        @classmethod def from_bytes(cls, b) -> Artefact

``params`` are the suite entry's keys other than ``id``, ``kind`` and ``fit``. Interventions
implement shb.interventions' protocol: ``identity()``, ``applied(lm)`` (a context manager that
always restores the model) and ``parameters_modified(lm) -> ParamCount(entries, dof)`` measured
from the edit itself. ``fit`` must be deterministic given (model, data, params): a fit killed
midway is recomputed and must give the same artefact.

Methods:
- ``refusal_direction`` (Arditi et al. 2024): shb.baselines.refusal_direction
- ``layers`` (layer skip/scaling, Zhao et al. 2024 LSP; Li et al. 2024 safety layers): shb.baselines.layers
- ``actsvd`` (Wei et al. 2024, top-rank removal and orthogonal variant): shb.baselines.actsvd
- ``setdiff`` (Wei et al. 2024, Wanda/SNIP set difference): shb.baselines.setdiff
- ``safety_neurons`` (Chen et al. 2024, GTAC + DAP): shb.baselines.safety_neurons
- ``heads`` (a fixed head set, no fit): shb.interventions.HeadAblation

No torch at import time.
"""
