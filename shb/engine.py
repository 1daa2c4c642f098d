"""Exact, batched evaluation of many head ablations: the expensive part of Ships and Sahara.

The paper's loop runs one batch-1 forward pass per head per prompt. The engine gives the same
numbers (to float rounding) with far fewer FLOPs:

* prompts are batched with left padding (explicit position ids, so every prompt sees the
  positions it has alone);
* a head in layer l cannot change anything below layer l, so the hidden states entering every
  layer are computed once per prompt batch (the base pass) and each head set starts at its lowest
  ablated layer;
* several head sets share one forward pass: the prompt rows are repeated and row i carries its own
  head set (``shb.ablation.ablate_rows``);
* only the last position goes through the LM head.

Layers below the start layer are swapped for pass-through stand-ins and a pre-hook on the start
layer substitutes the cached hidden states, so the stock model runs its own embeddings, masks,
rotary tables and attention code (no forked attention, nothing architecture-specific here).

``strategy="naive"`` is the paper's loop (one forward per prompt and head set, batch 1) and shares
nothing with the fast path beyond ``shb.ablation.ablate``; tests check that the two agree.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence

import torch

from shb.scorers.kl import kl_from_log_probs, log_probs

Head = tuple[int, int]
HeadSet = tuple[Head, ...]

# Architectures (HF model_type) on which the fast path has been checked against the naive loop.
FAST_PATH_ARCHS = frozenset({"llama", "mistral", "qwen2", "gemma", "gemma2", "phi3", "gpt2", "gpt_neox", "opt"})
STRATEGIES = ("engine", "naive")
CPU_BUDGET_BYTES = 2 << 30  # activation budget per forward pass on the CPU (batch_size="auto")
CUDA_FREE_SHARE = 0.6  # share of free CUDA memory one forward pass may use (batch_size="auto")


class Engine:
    """Scores head ablations of ``lm`` on ``prompts`` (formatted strings, fed as they are).

    ``lm`` has ``.model`` (a transformers causal LM), ``.tokenizer`` and optionally ``.layout``.
    ``kind``/``epsilon``/``site`` are passed to ``shb.ablation``. ``batch_size`` counts rows of one
    forward pass (prompt x head set); ``"auto"`` sizes it from free memory and halves it on
    out-of-memory. ``dtype`` (None = the model's) converts the model in place. ``progress`` is
    called as ``progress(n)`` after every forward pass with the number of (prompt, head set)
    evaluations it completed.
    """

    def __init__(self, lm, prompts: Sequence[str], *, kind="undifferentiated", epsilon=1e-5, site=None,
                 strategy="engine", batch_size="auto", dtype=None, progress: Callable[[int], None] | None = None):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if isinstance(prompts, str) or not prompts:
            raise ValueError("prompts must be a non-empty list of strings")
        bad = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p]
        if bad:
            raise ValueError(f"prompts must be non-empty strings; bad prompt indices: {bad[:10]}")
        if not (batch_size == "auto" or (isinstance(batch_size, int) and batch_size >= 1)):
            raise ValueError(f"batch_size must be 'auto' or a positive integer, got {batch_size!r}")
        self.lm = lm
        self.model = lm.model
        self.tokenizer = lm.tokenizer
        if dtype is not None:
            dtype = _as_dtype(dtype)
            if next(self.model.parameters()).dtype != dtype:
                self.model.to(dtype)
        self.layout = getattr(lm, "layout", None) or _detect_layout(self.model)
        self.n_layers = self.layout.n_layers
        self.n_heads = self.layout.n_heads
        self.prompts = list(prompts)
        self.kind, self.epsilon, self.site = kind, epsilon, site
        self.progress = progress
        self.requested_strategy = strategy
        self.strategy = strategy
        if strategy == "engine":
            reason = fast_path_unsupported(self.model)
            if reason:
                warnings.warn(f"shb engine: {reason}; falling back to the naive loop (same numbers, much slower)",
                              RuntimeWarning, stacklevel=2)
                self.strategy = "naive"
        if self.strategy == "engine":
            self._backend = _BatchedBackend(self, batch_size)
        else:
            self._backend = _NaiveBackend(self)

    # -- public API ---------------------------------------------------------------------------

    @property
    def n_prompts(self) -> int:
        return len(self.prompts)

    @property
    def base_log_probs(self) -> torch.Tensor:
        """(P, V) float64 log-probabilities of the next token after each prompt, unablated."""
        return self._backend.base()[0]

    @property
    def base_hidden(self) -> torch.Tensor:
        """(P, d) float32 last-token hidden states after the final norm, unablated."""
        return self._backend.base()[1]

    def ships_layer(self, layer: int) -> torch.Tensor:
        """(P, H) KL(p_base || p_ablated) for each prompt and each single-head ablation of ``layer``."""
        self._check_layer(layer)
        return self.ships_head_sets([[(layer, h)] for h in range(self.n_heads)])

    def ships_head_sets(self, head_sets: Iterable[Iterable[Head]]) -> torch.Tensor:
        """(P, S) float64 KL(p_base || p_ablated) for each prompt and each head set (the empty set gives 0)."""
        return self.evaluate(head_sets, hidden=False)[0]

    def hidden_head_sets(self, head_sets: Iterable[Iterable[Head]]) -> torch.Tensor:
        """(S, P, d) float32 last-token final-norm hidden states under each head set (empty set = base)."""
        return self.evaluate(head_sets, kl=False)[1]

    def evaluate(self, head_sets, *, kl: bool = True, hidden: bool = True):
        """(kl (P, S) or None, hidden (S, P, d) or None) from one pass over the head sets."""
        sets = self.normalize_head_sets(head_sets)
        return self._backend.evaluate(sets, want_kl=kl, want_hidden=hidden)

    # -- validation -----------------------------------------------------------------------------

    def normalize_head_sets(self, head_sets) -> list[HeadSet]:
        """Head sets as sorted tuples of (layer, head), validated against the model's geometry."""
        if isinstance(head_sets, (str, bytes)):
            raise TypeError("head_sets must be a list of head sets, e.g. [[(2, 26)], [(2, 26), (3, 8)]]")
        out = []
        for i, hs in enumerate(head_sets):
            heads = set()
            for h in hs:
                try:
                    layer, head = h
                    layer, head = int(layer), int(head)
                except (TypeError, ValueError):
                    raise ValueError(f"head set {i}: {h!r} is not a (layer, head) pair") from None
                if not (0 <= layer < self.n_layers and 0 <= head < self.n_heads):
                    raise ValueError(f"head set {i}: head {layer}-{head} is outside the model "
                                     f"({self.n_layers} layers x {self.n_heads} heads, 0-indexed)")
                heads.add((layer, head))
            out.append(tuple(sorted(heads)))
        return out

    def _check_layer(self, layer) -> None:
        if not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise ValueError(f"layer must be an integer in [0, {self.n_layers}), got {layer!r}")

    def _advance(self, n: int) -> None:
        if self.progress is not None:
            self.progress(n)


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids of one prompt exactly as the model sees it alone (the tokenizer's special tokens added)."""
    ids = tokenizer(prompt)["input_ids"]
    if len(ids) == 0:
        raise ValueError(f"prompt {prompt[:40]!r} tokenizes to nothing")
    return list(ids)


def fast_path_unsupported(model) -> str | None:
    """Why the batched fast path cannot run on ``model`` (None when it can)."""
    arch = getattr(model.config, "model_type", None)
    if arch not in FAST_PATH_ARCHS:
        return f"the fast path is not checked on architecture {arch!r} (checked: {', '.join(sorted(FAST_PATH_ARCHS))})"
    try:
        import shb.ablation as ablation
    except ImportError as e:
        return f"shb.ablation is not importable ({e})"
    if not hasattr(ablation, "ablate_rows"):
        return "shb.ablation has no ablate_rows (per-row head sets)"
    return None


def _as_dtype(dtype):
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(names)}")
    return names[dtype]


def _detect_layout(model):
    from shb.models.layout import detect

    return detect(model)


# -- the paper's loop -------------------------------------------------------------------------------


class _NaiveBackend:
    """One batch-1 forward pass per prompt and head set over the whole prompt, as the reference code does."""

    def __init__(self, engine: Engine):
        self.e = engine
        self.device = next(engine.model.parameters()).device
        self._base = None

    def _ids(self, prompt: str) -> torch.Tensor:
        return torch.tensor([encode_prompt(self.e.tokenizer, prompt)], device=self.device)  # (1, T)

    @torch.no_grad()
    def _run(self, ids, want_kl: bool, want_hidden: bool):
        with _lm_head_input(self.e.model) as final:
            logits = self.e.model(input_ids=ids).logits  # (1, T, V)
        logp = log_probs(logits[0, -1]) if want_kl else None  # (V,)
        hidden = final.hidden[0, -1].float() if want_hidden else None  # (d,)
        return logp, hidden

    def base(self):
        if self._base is None:
            self.e.model.eval()
            runs = [self._run(self._ids(p), True, True) for p in self.e.prompts]
            self._base = (torch.stack([r[0] for r in runs]), torch.stack([r[1] for r in runs]))
        return self._base

    def evaluate(self, sets, want_kl: bool, want_hidden: bool):
        import shb.ablation as ablation

        base_logp, base_hidden = self.base()
        n_prompts, n_sets = len(self.e.prompts), len(sets)
        kl = torch.zeros(n_prompts, n_sets, dtype=torch.float64, device=self.device) if want_kl else None
        hidden = base_hidden.new_empty(n_sets, n_prompts, base_hidden.shape[-1]) if want_hidden else None
        for p, prompt in enumerate(self.e.prompts):
            ids = self._ids(prompt)
            for s, heads in enumerate(sets):
                if not heads:  # no ablation: the base distribution itself
                    if want_hidden:
                        hidden[s, p] = base_hidden[p]
                    continue
                with ablation.ablate(self.e.model, list(heads), kind=self.e.kind, epsilon=self.e.epsilon,
                                     site=self.e.site):
                    logp, h = self._run(ids, want_kl, want_hidden)
                if want_kl:
                    kl[p, s] = kl_from_log_probs(base_logp[p], logp)
                if want_hidden:
                    hidden[s, p] = h
                self.e._advance(1)
        return kl, hidden


# -- the fast path ----------------------------------------------------------------------------------


class _PromptGroup:
    """Prompts of similar length, left-padded into one batch, with the hidden states entering each layer."""

    def __init__(self, index, ids, mask, positions):
        self.index = index  # (g,) positions of these prompts in the engine's prompt list
        self.ids, self.mask, self.positions = ids, mask, positions  # (g, T) each
        self.layer_inputs = None  # list over layers of (g, T, d), filled by the base pass
        self.base_logp = None  # (g, V) float64
        self.base_hidden = None  # (g, d) float32


class _PassThrough(torch.nn.Module):
    """Stands in for a decoder layer below the start layer: returns its input hidden states unchanged."""

    def __init__(self, original):
        super().__init__()
        # Some model forwards read per-layer attributes (mask type); keep them visible.
        for name in ("attention_type", "layer_type", "is_sliding", "sliding_window"):
            if hasattr(original, name):
                setattr(self, name, getattr(original, name))

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class _BatchedBackend:
    def __init__(self, engine: Engine, batch_size):
        self.e = engine
        self.model = engine.model
        self.layers = engine.layout.layers(self.model)
        if len(self.layers) != engine.n_layers:
            raise RuntimeError(f"layout says {engine.n_layers} layers, the model has {len(self.layers)}")
        self.device = next(self.model.parameters()).device
        self.token_ids = [encode_prompt(engine.tokenizer, p) for p in engine.prompts]
        pad = engine.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else 0  # pad positions are masked; any id will do
        self.auto = batch_size == "auto"
        self.batch_size = self._auto_batch_size() if self.auto else batch_size
        import inspect

        self.keep_last = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self.groups = None
        self._base = None

    # memory ---------------------------------------------------------------------------------------

    def _auto_batch_size(self) -> int:
        cfg = self.model.config
        t = max(len(ids) for ids in self.token_ids)
        d = self.e.layout.hidden_size
        inter = getattr(cfg, "intermediate_size", None) or getattr(cfg, "ffn_dim", None) or 4 * d
        vocab = getattr(cfg, "vocab_size", 32000)
        elem = next(self.model.parameters()).element_size()
        # Live activations of one row through one layer (residual, norms, q/k/v/o, MLP), the attention
        # scores when the kernel materialises them, and the float64 log-softmax of the last position.
        per_row = t * (12 * d + 4 * inter) * elem + self.e.n_heads * t * t * 4 + 4 * vocab * 8
        if self.device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(self.device)
            budget = int(free * CUDA_FREE_SHARE)
        else:
            budget = CPU_BUDGET_BYTES
        return int(max(1, min(4096, budget // per_row)))

    def _shrink(self, rows: int) -> None:
        self.batch_size = max(1, min(self.batch_size, rows) // 2)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # base pass ------------------------------------------------------------------------------------

    def _make_groups(self) -> list[_PromptGroup]:
        order = sorted(range(len(self.token_ids)), key=lambda i: -len(self.token_ids[i]))
        size = max(1, min(len(order), self.batch_size))
        groups = []
        for start in range(0, len(order), size):
            index = order[start:start + size]
            t = max(len(self.token_ids[i]) for i in index)
            ids = torch.full((len(index), t), self.pad_id, dtype=torch.long)  # (g, T)
            mask = torch.zeros((len(index), t), dtype=torch.long)  # (g, T)
            for row, i in enumerate(index):
                n = len(self.token_ids[i])
                ids[row, t - n:] = torch.tensor(self.token_ids[i])
                mask[row, t - n:] = 1
            # Each prompt sees positions 0..n-1, as it does alone: left padding must not shift them.
            positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (g, T)
            groups.append(_PromptGroup(torch.tensor(index), ids.to(self.device), mask.to(self.device),
                                       positions.to(self.device)))
        return groups

    @torch.no_grad()
    def _base_pass(self, group: _PromptGroup) -> None:
        captured = [None] * len(self.layers)

        def capture(i):
            def hook(_module, args, kwargs):
                captured[i] = args[0] if args else kwargs["hidden_states"]  # (g, T, d)
            return hook

        handles = [layer.register_forward_pre_hook(capture(i), with_kwargs=True) for i, layer in enumerate(self.layers)]
        try:
            logits, hidden = self._forward(group.ids, group.mask, group.positions)
        finally:
            for h in handles:
                h.remove()
        group.layer_inputs = captured
        group.base_logp, group.base_hidden = log_probs(logits), hidden

    def base(self):
        if self.groups is None:
            self.model.eval()
            while True:
                groups = self._make_groups()
                try:
                    for g in groups:
                        self._base_pass(g)
                    break
                except Exception as exc:  # noqa: BLE001 - re-raised unless it is an out-of-memory error
                    if not _is_oom(exc) or self.batch_size == 1:
                        raise
                    del groups
                    self._shrink(self.batch_size)
            self.groups = groups
            n, d = len(self.token_ids), groups[0].base_hidden.shape[-1]
            self._base = (torch.empty(n, groups[0].base_logp.shape[-1], dtype=groups[0].base_logp.dtype, device=self.device),
                          torch.empty(n, d, device=self.device))
            for g in groups:
                self._base[0][g.index] = g.base_logp
                self._base[1][g.index] = g.base_hidden
            if not torch.isfinite(self._base[1]).all():
                # Seen with eager attention in float16/float64: a padding query that may attend to nothing
                # overflows the additive mask to -inf, and its NaN reaches real tokens through 0 * NaN.
                raise RuntimeError(
                    "the batched base pass produced NaN/inf hidden states (left padding under "
                    f"attn_implementation={getattr(self.model.config, '_attn_implementation', '?')!r}, "
                    f"dtype {next(self.model.parameters()).dtype}); load the model with attn_implementation='sdpa', "
                    "use float32/bfloat16, or strategy='naive'")
        return self._base

    # ablated passes -------------------------------------------------------------------------------

    def _forward(self, ids, mask, positions):
        """Stock forward pass -> (last-position logits (B, V), last-position final hidden (B, d) float32)."""
        extra = {"logits_to_keep": 1} if self.keep_last else {}
        with _lm_head_input(self.model) as final:
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False, **extra)
        return out.logits[:, -1], final.hidden[:, -1].float()

    @torch.no_grad()
    def _run(self, group: _PromptGroup, rows: torch.Tensor, start: int, sets: list[HeadSet]):
        """KL (k, r) and hidden (k, r, d) for head sets ``sets`` (k) on prompt rows ``rows`` (r) of a group."""
        import shb.ablation as ablation

        k, r = len(sets), len(rows)
        try:
            hidden_in = group.layer_inputs[start][rows].repeat(k, 1, 1)  # (k*r, T, d), set-major
            ids, mask, pos = (t[rows].repeat(k, 1) for t in (group.ids, group.mask, group.positions))  # (k*r, T)
            row_sets = [list(s) for s in sets for _ in range(r)]
            with ablation.ablate_rows(self.model, row_sets, kind=self.e.kind, epsilon=self.e.epsilon,
                                      site=self.e.site), _start_at_layer(self.layers, start, hidden_in):
                logits, hidden = self._forward(ids, mask, pos)
            kl = kl_from_log_probs(group.base_logp[rows].repeat(k, 1), log_probs(logits)).view(k, r)
            return kl, hidden.view(k, r, -1)
        except Exception as exc:  # noqa: BLE001 - re-raised unless it is an out-of-memory error
            if not _is_oom(exc) or k * r == 1:
                raise
        # Out of memory: halve the batch and split this piece of work in two.
        self._shrink(k * r)
        if k > 1:
            a, b = self._run(group, rows, start, sets[: k // 2]), self._run(group, rows, start, sets[k // 2:])
            return torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])
        a, b = self._run(group, rows[: r // 2], start, sets), self._run(group, rows[r // 2:], start, sets)
        return torch.cat([a[0], b[0]], 1), torch.cat([a[1], b[1]], 1)

    def evaluate(self, sets, want_kl: bool, want_hidden: bool):
        base_logp, base_hidden = self.base()
        n_prompts, n_sets = base_hidden.shape[0], len(sets)
        kl = torch.zeros(n_prompts, n_sets, dtype=torch.float64, device=self.device)
        hidden = base_hidden.new_empty(n_sets, n_prompts, base_hidden.shape[-1])
        by_start: dict[int, list[int]] = {}
        for s, heads in enumerate(sets):
            if heads:  # heads are sorted: the first one is in the lowest layer
                by_start.setdefault(heads[0][0], []).append(s)
            else:  # no ablation: the base itself (KL exactly 0)
                hidden[s] = base_hidden
        for start in sorted(by_start):
            todo = by_start[start]
            for group in self.groups:
                g = len(group.index)
                done = 0
                while done < g:
                    rows = torch.arange(done, min(g, done + self.batch_size), device=self.device)
                    k = max(1, self.batch_size // len(rows))
                    for c in range(0, len(todo), k):
                        chunk = todo[c:c + k]
                        kl_c, hid_c = self._run(group, rows, start, [sets[s] for s in chunk])
                        cols = torch.tensor(chunk, device=self.device)
                        prompts = group.index.to(self.device)[rows]
                        kl[prompts[:, None], cols[None, :]] = kl_c.T
                        hidden[cols[:, None], prompts[None, :]] = hid_c
                        self.e._advance(len(chunk) * len(rows))
                    done += len(rows)
        return (kl if want_kl else None), (hidden if want_hidden else None)


class _start_at_layer:  # noqa: N801 - used as a context manager, reads like one
    """Run the model from decoder layer ``start``: the layers below become pass-throughs and a pre-hook
    hands layer ``start`` the cached hidden states ``hidden`` (B, T, d) instead of what reaches it."""

    def __init__(self, layers, start: int, hidden: torch.Tensor):
        self.layers, self.start, self.hidden = layers, start, hidden
        self.originals, self.handle = [], None

    def _substitute(self, _module, args, kwargs):
        incoming = args[0] if args else kwargs["hidden_states"]
        if incoming.shape != self.hidden.shape:
            raise RuntimeError(f"cached hidden states {tuple(self.hidden.shape)} do not fit layer {self.start}'s "
                               f"input {tuple(incoming.shape)}")
        if args:
            return (self.hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": self.hidden}

    def __enter__(self):
        self.handle = self.layers[self.start].register_forward_pre_hook(self._substitute, with_kwargs=True)
        try:
            for i in range(self.start):
                self.originals.append(self.layers[i])
                self.layers[i] = _PassThrough(self.layers[i])
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for i, original in enumerate(self.originals):
            self.layers[i] = original
        self.originals = []
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        return False


class _lm_head_input:  # noqa: N801 - a context manager
    """Captures what the LM head reads: the final-layer hidden states after the final norm (B, T', d).

    The LM head's input is the one definition of "final hidden state" that holds on every
    architecture (some causal-LM wrappers call an inner decoder rather than their base model).
    """

    def __init__(self, model):
        self.head = model.get_output_embeddings()
        if self.head is None:
            raise RuntimeError(f"{type(model).__name__} has no output embeddings (LM head) to read hidden states from")
        self.hidden, self.handle = None, None

    def _grab(self, _module, args, kwargs):
        self.hidden = args[0] if args else next(iter(kwargs.values()))

    def __enter__(self):
        self.handle = self.head.register_forward_pre_hook(self._grab, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()
        return False


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, getattr(torch, "OutOfMemoryError", ())) or isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
