"""shb (safety-head bench): which attention heads carry a model's refusals, and what happens without them.

Reproduces and extends Zhou et al., "On the Role of Attention Heads in Large Language Model
Safety" (ICLR 2025, arXiv 2410.13708). Importing ``shb`` is cheap: torch and transformers are
imported only by the modules that run models.
"""

__version__ = "0.1.0"


def cache_dir():
    """shb's cache (toy models, downloaded benchmarks): $SHB_CACHE, else the user cache directory."""
    import os
    from pathlib import Path

    from platformdirs import user_cache_dir

    return Path(os.environ.get("SHB_CACHE") or user_cache_dir("shb"))
