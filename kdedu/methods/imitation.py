"""Black-box imitation: stealing a translation model through its answers (Wallace et al. 2020, "Imitation
Attacks and Defenses for Black-box Machine Translation Systems"; seed deck 002, "Application: Model Stealing":
"imitate a blackbox production model ... utilizes seqKD style approaches").

A production system (the *victim*) answers queries with text: no probabilities, no beams, no weights. The
attacker sends it source sentences, keeps the translations, and trains its own model on them: Seq-KD where the
teacher is an API. Wallace et al.'s imitations of Google, Bing and Systran came within about a BLEU point of them
(the deck's table).

* :class:`BlackBox` turns a model into such a victim: its only public method is ``translate(sources) -> list of
  strings``; it counts the sentences and words it served (``queries``, ``words``). Any object with a
  ``translate`` method can be a victim (a remote API, a lookup table).
* :class:`Imitation` is the attack: ``transfer_set(split)`` asks the victim to translate the split's sources and
  keeps its answers as targets; ``fit(method, method.loader(split))`` trains the student on them with
  cross-entropy. Nothing else of the victim is read.
"""

from __future__ import annotations

import time

from torch import nn

from kdedu.methods.seqkd import WordKD

__all__ = ["BlackBox", "Imitation"]


class BlackBox:
    """A model behind an API that answers with text only.

    ``translate(sources)`` returns one string per source (:func:`kdedu.models.translate` with ``strategy`` and
    ``beam_size``). The model and vocabulary are kept in a closure, not as attributes: the victim exposes
    ``translate``, ``queries`` (sentences translated), ``words`` (words returned) and ``time_s`` (time spent
    answering), nothing else. It is not an ``nn.Module``, so no method can register it, move it or read its
    parameters.
    """

    def __init__(self, model: nn.Module, vocab, strategy: str = "beam", beam_size: int = 5,
                 max_length: int | None = None):
        from kdedu.models import translate

        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        model.eval()

        def answer(sources: list) -> list:
            return translate(model, sources, vocab, strategy=strategy, beam_size=beam_size, max_length=max_length)

        self._answer = answer
        self.queries = self.words = 0
        self.time_s = 0.0

    def translate(self, sources) -> list:
        if isinstance(sources, str) or not all(isinstance(s, str) for s in sources):
            raise TypeError("sources must be a list of strings")
        t0 = time.perf_counter()
        out = self._answer(list(sources))
        self.time_s += time.perf_counter() - t0
        self.queries += len(out)
        self.words += sum(len(t.split()) for t in out)
        return out

    def __repr__(self) -> str:
        return f"BlackBox(queries={self.queries}, words={self.words})"


class Imitation(WordKD):
    """The imitation attack: Seq-KD from a victim that only returns text.

    Steps: (1) :meth:`transfer_set` sends the sources of a split to ``victim.translate`` (the queries; which
    sources the attacker has is its choice: Wallace et al. use in-domain and out-of-domain monolingual text) and
    pairs each with the answer; (2) ``fit(method, method.loader(split))`` trains the student on those pairs with
    cross-entropy (this class's ``forward``: :class:`WordKD` with no teacher). The victim is not a teacher module:
    nothing but its text reaches the student. ``cost(history)`` gives the wall time (training plus the victim's
    answering time) and the victim's ``queries`` and ``words``.
    """

    def __init__(self, student: nn.Module, victim, vocab):
        if isinstance(victim, nn.Module) or not callable(getattr(victim, "translate", None)):
            raise TypeError("victim must be a black box with a translate(sources) -> list of strings method (wrap a "
                            "model in kdedu.methods.BlackBox), not a module")
        super().__init__(student, None, alpha=0.0)
        self.victim = victim                                                      # a plain attribute, not a submodule
        self.vocab = vocab
        self.query_time_s = 0.0

    def transfer_set(self, split):
        """``split`` with each target replaced by the victim's translation of its source."""
        t0 = time.perf_counter()
        answers = self.victim.translate(list(split.sources))
        self.query_time_s += time.perf_counter() - t0
        if len(answers) != len(split) or not all(isinstance(a, str) for a in answers):
            raise TypeError(f"the victim must answer {len(split)} strings, got {type(answers).__name__}")
        return split.with_targets(answers)

    def loader(self, split, batch_size: int = 64, shuffle: bool = True, seed: int | None = None, **kwargs):
        """:func:`kdedu.data.translation_loader` over :meth:`transfer_set` (``seed=None``: fit's seed orders it)."""
        from kdedu.data.seq_batches import translation_loader

        return translation_loader(self.transfer_set(split), self.vocab, batch_size, shuffle, seed, **kwargs)

    def cost(self, history) -> dict:
        from kdedu.methods.costs import run_cost

        c = run_cost(history, queries=getattr(self.victim, "queries", None), words=getattr(self.victim, "words", None),
                     query_time_s=self.query_time_s)
        c["time_s"] += self.query_time_s
        return c
