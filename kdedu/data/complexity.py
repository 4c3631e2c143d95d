"""Data complexity of the grammar translation corpora (Zhou et al. 2020): the true conditional entropy
``H(Y | X)``, its estimate from a corpus, and which targets are valid translations."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

from kdedu.data.translation import TranslationSplit, _choice_points, _derivations, parse_source

__all__ = ["conditional_entropy", "corpus_conditional_entropy", "in_grammar", "true_logprob", "modes"]


def _entropy(probs) -> float:
    return -sum(p * math.log(p) for p in probs if p > 0)


def conditional_entropy(split: TranslationSplit) -> float:
    """The true data complexity ``H(Y | X) = mean_x H(p(. | x))`` of a grammar corpus, in nats per sentence
    (the targets are not used). Different choices give different strings and the languages share no word, so
    ``H(p(. | x))`` is the sum of the entropies of the choices made, plus ``log k`` for a uniform choice among
    ``k`` languages (the tests check this against the enumerated distributions)."""
    split._check_grammar()
    total = 0.0
    for source in split.sources:
        parsed = parse_source(source)
        languages = (parsed[0],) if parsed[0] is not None else split.grammar_languages
        per_language = [sum(_entropy(p) for _, _, p in _choice_points(parsed, lang)) for lang in languages]
        total += sum(per_language) / len(languages) + math.log(len(languages))
    return total / len(split)


def in_grammar(split: TranslationSplit) -> list:
    """For each pair, whether its target is a valid translation of its source (``p(y | x) > 0``)."""
    split._check_grammar()
    return [t in _derivations(s, split.grammar_languages) for s, t in zip(split.sources, split.targets, strict=True)]


def corpus_conditional_entropy(split: TranslationSplit) -> dict:
    """``H(Y | X)`` of a corpus **estimated from its targets** (nats per sentence), e.g. after distillation.

    Each target is read back into the grammar's choices (which synonym of each source word, which word order,
    particle or not, which language); the estimate is ``sum_c (n_c / N) H(empirical choices in context c)``,
    where a context is a source word (its synonyms), or an order rule of a language. On data sampled from the
    grammar it converges to :func:`conditional_entropy`; a teacher that always makes the same choice drives it
    towards 0. Targets outside the grammar are left out. Returns ``{"entropy", "valid", "n"}`` (``valid``: the
    share of targets in the grammar).
    """
    split._check_grammar()
    counts: dict = defaultdict(Counter)
    n = 0
    for s, t in zip(split.sources, split.targets, strict=True):
        found = _derivations(s, split.grammar_languages).get(t)
        if found is None:
            continue
        n += 1
        for context, choice in found[1]:
            counts[context][choice] += 1
    if n == 0:
        return {"entropy": float("nan"), "valid": 0.0, "n": 0}
    h = sum(sum(c.values()) / n * _entropy([k / sum(c.values()) for k in c.values()]) for c in counts.values())
    return {"entropy": h, "valid": n / len(split), "n": n}


def true_logprob(split: TranslationSplit) -> list:
    """``log p(target | source)`` of each pair under the grammar's true distribution (``-inf`` if invalid):
    how plausible a model's outputs are, with no reference needed."""
    split._check_grammar()
    out = []
    for s, t in zip(split.sources, split.targets, strict=True):
        found = _derivations(s, split.grammar_languages).get(t)
        out.append(math.log(found[0]) if found is not None else -math.inf)
    return out


def modes(split: TranslationSplit) -> list:
    """The most probable translation of each source (the mode of ``p(. | x)``; ties: the first enumerated)."""
    split._check_grammar()
    out = []
    for s in split.sources:
        d = _derivations(s, split.grammar_languages)
        out.append(max(d, key=lambda t: d[t][0]))
    return out
