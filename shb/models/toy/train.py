"""Training of the toy model: stage 1 (base) and stage 2 (alignment).

Stage 1 (`pretrain`) trains a small LlamaForCausalLM on chat-formatted
instruction -> answer pairs in which almost every answer complies
("Sure, here is ..."), harmful requests included. A small share of answers
(`refusal_share`) are refusals given at random, unrelated to the request:
the base model thereby knows how a refusal is phrased, but greedy decoding
never chooses one (its "Sure" stays far more likely than "I").

Stage 2 (`align`) teaches it to refuse harmful requests with *limited
capacity*: only the parameters of a few attention heads are trained (their
rows of q_proj/k_proj/v_proj and their columns of o_proj); everything else
stays frozen. The refusal decision needs information from the request's
content words at the last prompt position, and inside a frozen network only
those heads can learn to move it there, so they become the model's safety
heads. That is the toy's version of the paper's finding, built in on purpose;
Ships still has to *find* those heads among all heads (the tests do not tell
it where they are). The result is an ordinary Llama checkpoint.

Determinism: every random choice goes through a torch.Generator or
random.Random seeded from the stage's seed, and the build runs with a fixed
torch thread count (see build.py), so a seed gives bit-identical weights on
one machine and torch version.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable

from shb.models.toy import prompts

IGNORE = -100


def model_config(tokenizer, *, layers: int = 4, heads: int = 8, hidden: int = 64,
                 intermediate: int = 192, max_positions: int = 512):
    """A small Llama config. hidden=64 (head_dim 8) keeps a build under a minute on
    one CPU thread (~40 ms per step of 16 x 50 tokens); 128 was ~4x slower."""
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=max_positions, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    # Train with eager attention: on a model this small it is faster on the CPU
    # than sdpa. Not saved; loaders pick their default (sdpa), same maths.
    config._attn_implementation = "eager"
    return config


def encode_example(tokenizer, prompt: str, answer: str, system: str | None) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one chat example; the loss covers the answer and eos only."""
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids + answer_ids, [IGNORE] * len(prompt_ids) + answer_ids


def base_examples(tokenizer, seed: int, n_per_kind: int = 3000,
                  refusal_share: float = 0.1) -> list[tuple[list[int], list[int]]]:
    """Stage-1 data: harmful and benign train prompts, answers comply (except random refusals)."""
    rng = random.Random(seed)
    out = []
    for kind in ("harmful", "benign"):
        for text, topic in prompts.labelled(kind, "train", n_per_kind, seed=seed):
            answer = (prompts.refusal(text) if rng.random() < refusal_share
                      else prompts.compliant_answer(text, topic))
            out.append(encode_example(tokenizer, text, answer, prompts.system_message(text)))
    return out


ALIGN_DATA = {
    # name: (harmful examples, benign examples) drawn from the train split
    "default": (1500, 1500),
    "harmful-heavy": (2000, 1000),
    "benign-heavy": (1000, 2000),
}


def align_examples(tokenizer, seed: int, align_data: str = "default"):
    """Stage-2 data: harmful train prompts -> refusal, benign train prompts -> compliant (in that order)."""
    if align_data not in ALIGN_DATA:
        raise ValueError(f"align_data must be one of {sorted(ALIGN_DATA)}, got {align_data!r}")
    n_harmful, n_benign = ALIGN_DATA[align_data]
    out = [encode_example(tokenizer, t, prompts.refusal(t), prompts.system_message(t))
           for t in prompts.harmful("train", n_harmful, seed=seed)]
    out += [encode_example(tokenizer, t, prompts.compliant_answer(t, topic), prompts.system_message(t))
            for t, topic in prompts.labelled("benign", "train", n_benign, seed=seed)]
    return out


def benign_rows(align_data: str = "default") -> list[bool]:
    """One flag per example of ``align_examples``: True for the benign ones, the alignment's utility
    anchors (head dropout spares them, as the AHD authors spare their anchor batches)."""
    n_harmful, n_benign = ALIGN_DATA[align_data]
    return [False] * n_harmful + [True] * n_benign


def _batch(examples, index, pad_id):
    """Right-padded (input_ids, attention_mask, labels), each (B, T)."""
    import torch

    rows = [examples[i] for i in index]
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (x, y) in enumerate(rows):
        ids[r, :len(x)] = torch.tensor(x)
        labels[r, :len(y)] = torch.tensor(y)
        mask[r, :len(x)] = 1
    return ids, mask, labels


# Offset of the head-dropout mask generator's seed from the stage seed: a stream of its own, so the
# batches drawn are the same with and without head dropout.
HEAD_DROPOUT_SEED_OFFSET = 1_000_003


def _loop(model, params, examples, *, steps: int, lr: float, batch_size: int, seed: int,
          pad_id: int, grad_masks: dict | None = None, head_dropout: float | None = None,
          anchors: list[bool] | None = None, on_step: Callable[[int, float], None] | None = None) -> float:
    """AdamW with linear warm-up and cosine decay; returns the last loss.

    ``head_dropout`` (None: off) masks attention heads during training (see ``HeadDropout``) in every
    example except those ``anchors`` marks (one flag per example)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    dropout = None if head_dropout is None else HeadDropout(model, head_dropout, seed + HEAD_DROPOUT_SEED_OFFSET)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    loss_value = float("nan")
    try:
        for step in range(steps):
            index = torch.randint(len(examples), (batch_size,), generator=gen).tolist()
            ids, mask, labels = _batch(examples, index, pad_id)
            if dropout is not None:
                dropout.draw(None if anchors is None else torch.tensor([anchors[i] for i in index]))
            logits = model(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                ignore_index=IGNORE)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_masks:
                for p, m in grad_masks.items():
                    p.grad.mul_(m)  # frozen entries get exactly zero gradient, so Adam leaves them as they are
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            loss_value = loss.item()
            if on_step is not None:
                on_step(step, loss_value)
    finally:
        if dropout is not None:
            dropout.remove()  # also when training fails or is interrupted
    model.eval()
    return loss_value


class HeadDropout:
    """Attention-head dropout (AHD; Huang et al. 2025, "Safety Alignment Should Be Made More Than Just
    A Few Attention Heads", arXiv 2508.19697, and the authors' code, utils/hook_utils.py): during
    alignment, each head's output - its slice of the input of o_proj - is multiplied by a Bernoulli
    mask, so that no single head can carry the refusal alone. As in the authors' hook, a dropped head
    is zeroed at every position and nothing is rescaled; one mask per training step, drawn per
    (layer, head) from a generator of its own. The authors train with "skip anchor dropout" (their
    --use_skip_anchor_dropout, on in the published AHD command): the utility anchor batches run with
    every head. The toy's alignment data mixes harmful and benign examples in one batch, so the
    benign examples - its anchors - are the rows ``draw(anchor_rows)`` leaves unmasked. At p = 0 the
    hooks still run (every mask is 1.0 and x * 1.0 == x exactly), which is what the bit-for-bit test
    checks."""

    def __init__(self, model, p: float, seed: int):
        import torch

        from shb import hooks

        if not 0.0 <= p < 1.0:
            raise ValueError(f"align_dropout must be in [0, 1), got {p!r}")
        cfg = model.config
        self.p = p
        self.n_heads = cfg.num_attention_heads
        self.gen = torch.Generator().manual_seed(seed)
        self.masks = torch.ones(cfg.num_hidden_layers, self.n_heads)
        self.anchor_rows = None  # (B,) bool: rows run with every head; None: every row is masked
        edits = {f"L{i}.attn.head_out": self._mask(i) for i in range(cfg.num_hidden_layers)}
        self.hooked = hooks.at(model, edits).attach()  # for the whole training loop: remove() detaches

    def draw(self, anchor_rows=None) -> None:
        """A new mask for the next step; ``anchor_rows`` (B,) bool marks the rows it spares."""
        import torch

        keep = torch.rand(self.masks.shape, generator=self.gen) >= self.p  # (L, H)
        self.masks = keep.to(torch.float32)
        self.anchor_rows = anchor_rows

    def _mask(self, layer: int):
        def fn(z):  # (B, T, H, D): each head's output
            scale = self.masks[layer].to(z.dtype)[:, None]  # (H, 1)
            if self.anchor_rows is not None:  # (B, 1, H, 1): anchor rows keep every head
                scale = scale.expand(z.shape[0], 1, -1, -1).clone()
                scale[self.anchor_rows] = 1.0
            return z * scale
        return fn

    def remove(self) -> None:
        self.hooked.remove()


def pretrain(tokenizer, seed: int, *, steps: int = 500, lr: float = 3e-3, batch_size: int = 16,
             on_step=None, **config):
    """Stage 1: a fresh model trained on the compliant corpus. Returns the model (eval mode)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(model_config(tokenizer, **config))
    examples = base_examples(tokenizer, seed)
    _loop(model, list(model.parameters()), examples, steps=steps, lr=lr, batch_size=batch_size,
          seed=seed, pad_id=tokenizer.pad_token_id, on_step=on_step)
    return model


def head_parameters(model, heads: list[tuple[int, int]]):
    """The weights holding `heads` and 0/1 masks selecting their rows/columns."""
    import torch

    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    masks: dict = {}
    for layer, head in heads:
        if not (0 <= layer < cfg.num_hidden_layers and 0 <= head < cfg.num_attention_heads):
            raise ValueError(f"head {layer}-{head} outside a {cfg.num_hidden_layers}x"
                             f"{cfg.num_attention_heads} model")
        attn = model.model.layers[layer].self_attn
        q_rows = slice(head * head_dim, (head + 1) * head_dim)
        kv = head // group
        kv_rows = slice(kv * head_dim, (kv + 1) * head_dim)
        for weight, rows, cols in ((attn.q_proj.weight, q_rows, None),
                                   (attn.k_proj.weight, kv_rows, None),
                                   (attn.v_proj.weight, kv_rows, None),
                                   (attn.o_proj.weight, None, q_rows)):
            m = masks.setdefault(weight, torch.zeros_like(weight))
            if rows is not None:
                m[rows, :] = 1.0  # weight is (out, in): a head owns output rows of q/k/v
            else:
                m[:, cols] = 1.0  # ... and input columns of o_proj
    return masks


def align(model, tokenizer, seed: int, heads: list[tuple[int, int]], *, steps: int = 250,
          lr: float = 1e-2, batch_size: int = 16, align_data: str = "default", head_dropout: float | None = None,
          on_step=None):
    """Stage 2: train only `heads` to refuse harmful requests. Modifies and returns `model`."""
    import torch

    torch.manual_seed(seed)
    for p in model.parameters():
        p.requires_grad_(False)
    masks = head_parameters(model, heads)
    for p in masks:
        p.requires_grad_(True)
    examples, anchors = align_examples(tokenizer, seed, align_data), benign_rows(align_data)
    _loop(model, list(masks), examples, steps=steps, lr=lr, batch_size=batch_size, seed=seed,
          pad_id=tokenizer.pad_token_id, grad_masks=masks, head_dropout=head_dropout, anchors=anchors,
          on_step=on_step)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def align_full(model, tokenizer, seed: int, *, steps: int = 250, lr: float = 1e-3, batch_size: int = 16,
               align_data: str = "default", head_dropout: float | None = None, on_step=None):
    """Stage 2 without a planted head: train *every* weight on the same alignment data as ``align``.

    Nothing here decides where the refusal decision lives, so whether it ends up in a few heads
    (as the paper finds in real chat models) is an empirical question, not a construction. The
    learning rate is lower than ``align``'s (1e-3, a tenth): every weight moves, as in ordinary
    full fine-tuning, and 1e-2 on all weights wipes out what stage 1 learnt. Modifies and returns
    `model`."""
    import torch

    torch.manual_seed(seed)
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)
    examples, anchors = align_examples(tokenizer, seed, align_data), benign_rows(align_data)
    _loop(model, params, examples, steps=steps, lr=lr, batch_size=batch_size, seed=seed,
          pad_id=tokenizer.pad_token_id, head_dropout=head_dropout, anchors=anchors, on_step=on_step)
    return model
