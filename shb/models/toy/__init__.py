"""The built-in toy aligned chat model: a tiny Llama trained on the CPU in under a minute.

It refuses harmful requests and complies with benign ones, and its refusal is
carried by one attention head (trained with limited capacity, see train.py),
so the whole shb loop (find the safety heads, ablate them, watch refusals
drop) runs on a laptop with no download.

    ensure(seed=0, **variant) -> Path   # cached build under $SHB_CACHE/toy/<key>
    ensure_base(seed=0, **variant) -> Path   # the stage-1 model before alignment (cached)
    build(out, seed=0, **variant) -> Path
    prompts.harmful(split, n=None, seed=0), prompts.benign(split, n=None, seed=0)
    config_dict(seed=0, **variant) -> dict   # geometry without building (no torch)
    evaluate.refusal_rates(path) -> dict
"""
from shb.models.toy import prompts
from shb.models.toy.build import (
    TOY_VERSION,
    build,
    cache_root,
    config_dict,
    ensure,
    ensure_base,
    resolve,
)

__all__ = ["TOY_VERSION", "build", "cache_root", "config_dict", "ensure", "ensure_base", "prompts", "resolve"]
