"""Decoding for autoregressive models: greedy search, beam search (length-normalised, batched) and sampling.

Every function works with one small protocol, a **step function**::

    step(prefixes (N, t) int64, rows (N,) int64) -> log p(next token | source rows[n], prefixes[n])  (N, V)

Prefixes start with BOS. A :class:`~kdedu.models.Seq2Seq` or :class:`~kdedu.models.GPT` builds one with
``model.prefix_scorer(input_ids, attention_mask)`` (it encodes the sources once); pass the model and the
sources, or pass any such callable and the number of sources instead of ``input_ids`` (the tests use tiny
hand-made ones). PAD and BOS are never generated. A hypothesis ends with EOS or when it has ``max_length``
tokens; its tokens are returned without BOS and EOS.

Beam search ranks finished hypotheses by the **length-normalised** score ``log p(y) / |y| ** length_penalty``
(``|y|`` counts EOS; ``length_penalty=0`` ranks by ``log p(y)``), the convention of fairseq. At each step it
keeps the ``beam_size`` best unfinished prefixes by ``log p`` and finishes the EOS extensions that rank among
the ``beam_size`` best candidates; a source stops when it has ``beam_size`` finished hypotheses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Hypothesis", "greedy", "beam_search", "sample", "translate", "HFSeq2Seq"]

PAD, BOS, EOS = 0, 1, 2  # the ids of kdedu.data.SeqVocab


@dataclass(frozen=True)
class Hypothesis:
    """One output: ``tokens`` (without BOS/EOS), ``logprob`` = log p(tokens, EOS | x), ``score`` = the
    length-normalised ``logprob / length ** length_penalty``; ``finished``: it ended with EOS."""

    tokens: tuple
    logprob: float
    score: float
    finished: bool = True


class HFSeq2Seq:
    """Wrap a Hugging Face encoder–decoder (``MarianMTModel``, ``T5ForConditionalGeneration``, ...) so the
    functions here (and :func:`kdedu.methods.teacher_beams`) decode with it: the `full` profile's teachers.
    Its prefixes start with ``config.decoder_start_token_id``; pass ``bos_id``/``eos_id``/``banned`` from
    :meth:`ids`, e.g. ``beam_search(HFSeq2Seq(marian), ids, mask, 5, **HFSeq2Seq(marian).ids())``."""

    def __init__(self, model):
        if not hasattr(model, "get_encoder"):
            raise TypeError(f"model must be a Hugging Face encoder-decoder (with get_encoder()), got "
                            f"{type(model).__name__}")
        self.model = model

    @property
    def training(self) -> bool:
        return self.model.training

    def eval(self):
        self.model.eval()
        return self

    def train(self, mode: bool = True):
        self.model.train(mode)
        return self

    def ids(self) -> dict:
        c = self.model.config
        return {"bos_id": c.decoder_start_token_id, "eos_id": c.eos_token_id,
                "banned": tuple({c.pad_token_id, c.decoder_start_token_id} - {c.eos_token_id})}

    def prefix_scorer(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        if attention_mask is None:
            attention_mask = (input_ids != self.model.config.pad_token_id).long()
        memory = self.model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        def step(prefixes: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            out = self.model(encoder_outputs=(memory[rows],), attention_mask=attention_mask[rows],
                             decoder_input_ids=prefixes, use_cache=False)
            return torch.log_softmax(out.logits[:, -1].float(), dim=-1)          # (N, V)

        return step


def _setup(model, input_ids, attention_mask):
    """``(step, number of sources, device, restore)``; the model is put in eval mode until ``restore()``."""
    if hasattr(model, "prefix_scorer"):
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"input_ids must be a (B, S) tensor of source ids, got {type(input_ids).__name__}")
        was_training = model.training
        model.eval()
        return (model.prefix_scorer(input_ids, attention_mask), input_ids.shape[0], input_ids.device,
                lambda: model.train(was_training))
    if callable(model):
        if isinstance(input_ids, bool) or not isinstance(input_ids, int) or input_ids < 1:
            raise TypeError("with a step function as model, pass the number of sources (a positive int) as input_ids")
        return model, input_ids, torch.device("cpu"), lambda: None
    raise TypeError(f"model must have prefix_scorer(input_ids, attention_mask) or be a step function "
                    f"step(prefixes, rows) -> (N, V) log-probs, got {type(model).__name__}")


def _max_length(max_length, input_ids) -> int:
    if max_length is None:
        if not isinstance(input_ids, torch.Tensor):
            raise ValueError("max_length is required with a step function")
        return input_ids.shape[1] + 10
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
    return max_length


def _logprobs(step, prefixes, rows, banned) -> torch.Tensor:
    logp = step(prefixes, rows).float()                                          # (N, V)
    logp[:, list(banned)] = -float("inf")
    return logp


@torch.no_grad()
def _autoregressive(model, input_ids, attention_mask, max_length, choose, bos_id, eos_id, banned):
    step, b, device, restore = _setup(model, input_ids, attention_mask)
    try:
        max_length = _max_length(max_length, input_ids)
        rows = torch.arange(b, device=device)
        prefixes = torch.full((b, 1), bos_id, dtype=torch.long, device=device)  # (B, 1)
        done = torch.zeros(b, dtype=torch.bool, device=device)
        total = torch.zeros(b, device=device)
        for _ in range(max_length):
            logp = _logprobs(step, prefixes, rows, banned)                       # (B, V)
            nxt = choose(logp)                                                   # (B,)
            total += torch.where(done, torch.zeros_like(total), logp.gather(1, nxt[:, None])[:, 0])
            nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
            prefixes = torch.cat([prefixes, nxt[:, None]], 1)
            done |= nxt == eos_id
            if done.all():
                break
    finally:
        restore()
    out = []
    for row in prefixes[:, 1:].tolist():
        out.append(row[:row.index(eos_id)] if eos_id in row else row)
    return out, total


def greedy(model, input_ids, attention_mask=None, max_length: int | None = None, bos_id: int = BOS,
           eos_id: int = EOS, banned=(PAD, BOS)) -> list:
    """The argmax token at every step, batched: one token list per source (without BOS/EOS)."""
    return _autoregressive(model, input_ids, attention_mask, max_length, lambda lp: lp.argmax(-1), bos_id, eos_id,
                           banned)[0]


def sample(model, input_ids, attention_mask=None, temperature: float = 1.0, max_length: int | None = None,
           generator: torch.Generator | None = None, bos_id: int = BOS, eos_id: int = EOS, banned=(PAD, BOS)):
    """Ancestral sampling from ``softmax(log p / temperature)``, batched: ``(token lists, log p under the model
    (B,))``. ``temperature`` < 1 sharpens towards greedy, > 1 flattens; ``generator`` makes it repeatable."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")

    def choose(logp):
        probs = torch.softmax(logp / temperature, dim=-1)
        return torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].to(logp.device)

    return _autoregressive(model, input_ids, attention_mask, max_length, choose, bos_id, eos_id, banned)


@torch.no_grad()
def beam_search(model, input_ids, attention_mask=None, beam_size: int = 4, max_length: int | None = None,
                n_best: int = 1, length_penalty: float = 1.0, bos_id: int = BOS, eos_id: int = EOS,
                banned=(PAD, BOS)) -> list:
    """Beam search over all sources at once: for each source, its ``n_best`` :class:`Hypothesis` objects,
    best (highest normalised score) first. ``beam_size=1`` is greedy search."""
    for name, value in (("beam_size", beam_size), ("n_best", n_best)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if n_best > beam_size:
        raise ValueError(f"n_best={n_best} cannot exceed beam_size={beam_size}")
    if not length_penalty >= 0:
        raise ValueError(f"length_penalty must be >= 0, got {length_penalty!r}")
    step, b, device, restore = _setup(model, input_ids, attention_mask)
    try:
        max_length = _max_length(max_length, input_ids)
        k = beam_size
        beams = torch.full((b, k, 1), bos_id, dtype=torch.long, device=device)  # (B, K, t) the live prefixes
        scores = torch.full((b, k), -float("inf"), device=device)               # (B, K) their log p
        scores[:, 0] = 0.0                                                       # one live beam to start
        finished = [[] for _ in range(b)]
        rows = torch.arange(b, device=device).repeat_interleave(k)               # (B*K,) source of each beam
        rank = torch.arange(2 * k, device=device)                                # (2K,)
        for t in range(1, max_length + 1):                                       # t = tokens after this step
            alive = scores.reshape(-1) > -float("inf")                           # (B*K,) only live beams run
            out = _logprobs(step, beams.reshape(b * k, -1)[alive], rows[alive], banned)  # (n, V)
            v = out.shape[-1]
            logp = out.new_full((b * k, v), -float("inf"))
            logp[alive] = out                                                    # (B*K, V)
            cand = (scores.reshape(-1, 1) + logp).reshape(b, k * v)              # (B, K*V) log p of extensions
            top, idx = cand.topk(min(2 * k, k * v), dim=1)                       # (B, 2K) best first
            beam, token = idx // v, idx % v                                      # (B, 2K) which prefix, which token
            live = top > -float("inf")
            ends = live & ((token == eos_id) | (t == max_length))                # EOS, or out of room
            # 1) finish the ending candidates that rank among the K best
            for s_, r in (ends & (rank[:top.shape[1]] < k)).nonzero().tolist():
                if len(finished[s_]) < k:
                    ended = token[s_, r].item() == eos_id
                    prefix = beams[s_, beam[s_, r], 1:].tolist() + ([] if ended else [token[s_, r].item()])
                    val = top[s_, r].item()
                    finished[s_].append(Hypothesis(tuple(prefix), val, val / t ** length_penalty, ended))
            # 2) the K best candidates that go on become the new beams
            goes_on = live & ~ends
            order = torch.sort((~goes_on).long() * top.shape[1] + rank[:top.shape[1]], dim=1).indices[:, :k]
            kept = goes_on.gather(1, order)                                      # (B, K) a real beam?
            done = torch.tensor([len(f) >= k for f in finished], device=device)[:, None]
            scores = torch.where(kept & ~done, top.gather(1, order), torch.full_like(scores, -float("inf")))
            parents = beams.gather(1, beam.gather(1, order)[..., None].expand(-1, -1, t))  # (B, K, t)
            beams = torch.cat([parents, token.gather(1, order)[..., None]], 2)  # (B, K, t + 1)
            if torch.isinf(scores).all():
                break
    finally:
        restore()
    return [sorted(f, key=lambda h: -h.score)[:n_best] for f in finished]


def translate(model, sources, vocab, strategy: str = "beam", beam_size: int = 4, batch_size: int = 256,
              max_length: int | None = None, length_penalty: float = 1.0, temperature: float = 1.0,
              seed: int = 0) -> list:
    """Translate a list of source strings with ``vocab`` (a :class:`kdedu.data.SeqVocab`): one string each.

    ``strategy``: ``"greedy"``, ``"beam"`` (``beam_size``, ``length_penalty``), ``"sample"`` (``temperature``,
    ``seed``), or ``"parallel"`` for a :class:`~kdedu.models.NAT` (its ``generate``; chosen automatically for one).
    Sources get EOS appended as in :func:`kdedu.data.translation_loader`.
    """
    if isinstance(sources, str) or not all(isinstance(s, str) for s in sources):
        raise TypeError("sources must be a list of strings")
    if hasattr(model, "generate") and hasattr(model, "length_head"):
        strategy = "parallel"
    if strategy not in ("greedy", "beam", "sample", "parallel"):
        raise ValueError(f"strategy must be 'greedy', 'beam', 'sample' or 'parallel', got {strategy!r}")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, len(sources), batch_size):
        ids = [vocab.encode(s) + [vocab.eos_id] for s in sources[start:start + batch_size]]
        width = max(len(x) for x in ids)
        input_ids = torch.tensor([x + [vocab.pad_id] * (width - len(x)) for x in ids], device=device)
        mask = (input_ids != vocab.pad_id).long()
        if strategy == "parallel":
            tokens = model.generate(input_ids, mask)[0].tolist()
        elif strategy == "greedy":
            tokens = greedy(model, input_ids, mask, max_length)
        elif strategy == "sample":
            tokens = sample(model, input_ids, mask, temperature, max_length, generator)[0]
        else:
            tokens = [h[0].tokens for h in beam_search(model, input_ids, mask, beam_size, max_length,
                                                        length_penalty=length_penalty)]
        out += [vocab.decode(t) for t in tokens]
    return out
