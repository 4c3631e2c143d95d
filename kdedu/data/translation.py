"""Translation corpora from a small documented grammar (offline), with their true distributions p(y | x).

The grammar
-----------
A **source** sentence is toy English, one of two shapes (3 to 8 words)::

    sentence := NP_agent VERB_t NP [ADVERB]       "the big dog chases a ball today"
              | NP_agent VERB_i [ADVERB]           "a cat sleeps"
    NP       := DET [ADJECTIVE] NOUN               DET: the | a

Each **domain** (``"animals"``, ``"office"``) has its own nouns, adjectives and verbs; determiners and
adverbs are shared. The source is drawn at random (transitive 75 %, an adjective in half the NPs, an adverb
in half the sentences) and is unambiguous. Its **translation** into a target language is not: it is
*sampled*, word by word and rule by rule, so one source has many valid translations:

* **synonyms with unequal probabilities**: ``dog`` is ``chien`` (0.7) or ``toutou`` (0.3) in ``fr``;
* **free word order**: the adjective goes after the noun (``fr`` 0.7, ``es`` 0.8) or before it; the adverb
  goes to the end or the front (``fr``, ``es``), or after the verb or to the end (``de``; the same place when
  there is no object);
* **multi-word alternatives where greedy search misses the mode**: ``again`` is ``encore`` (0.4), ``de nouveau``
  (0.35) or ``de plus`` (0.25) in ``fr``: the most likely first word is ``de`` (0.6), yet the most likely
  translation is ``encore``; ``often`` and ``again`` are built this way in every language. A model that learned
  the data's distribution exactly still says ``de nouveau`` under greedy decoding; beam search (or a student
  trained on a beam-search teacher's outputs) says ``encore`` (Kim & Rush 2016: Seq-KD students need no beam);
* **optional words**: a particle that adds nothing (``fr`` "bien" after the verb, 0.3; ``de`` "doch" after
  the verb, 0.3; ``es`` "pues" at the front, 0.25).

The three target languages (``fr``, ``de``, ``es``: French-, German- and Spanish-like, without gender,
agreement or accents) have disjoint vocabularies, so you can tell which language each word of an output
belongs to. Every choice is independent given the source, and different choices give different strings,
so the **true conditional distribution** ``p(y | x)`` is known exactly (:meth:`TranslationSplit.distribution`)
and so is the corpus' conditional entropy ``H(Y | X)``, the data complexity of Zhou et al. (2020)
(:func:`kdedu.data.complexity.conditional_entropy`; :func:`~kdedu.data.complexity.corpus_conditional_entropy`
estimates it from a corpus, e.g. one distilled by a teacher).

The variants of Part V, all from :func:`translation`:

* one language pair, ``target="fr"`` (en→fr), ``"de"`` or ``"es"``;
* the **three-language set** ``target=("fr", "de", "es")`` (Zhou et al. 2020): each source is paired with its
  translation into one of the three languages, drawn uniformly; nothing in the source says which;
* **several language pairs** in one corpus, ``tag=True``: the source starts with a tag ``<2fr>`` that names
  the target language (one-to-many multilingual translation, Johnson et al. 2017);
* **two domains**, ``domain="animals"``, ``"office"`` or both.

The splits are fixed by ``seed`` (Python's ``random.Random``, the same on every platform): a pool of distinct
sources is drawn and cut into train/val/test, so no source is in two splits.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, replace
from functools import lru_cache

__all__ = ["TranslationSplit", "translation", "LANGUAGES", "THREE_LANGUAGES", "DOMAINS", "languages_of",
           "mixes_languages", "parse_source"]

DETERMINERS = ("the", "a")
ADVERBS = ("today", "often", "again")
DOMAINS = {
    "animals": {"agents": ("dog", "cat", "bird", "horse"), "things": ("ball", "bone", "apple", "tree"),
                "adjectives": ("big", "small", "old", "young", "happy"),
                "transitive": ("sees", "chases", "finds", "likes", "hears"), "intransitive": ("sleeps", "runs",
                                                                                              "sings")},
    "office": {"agents": ("manager", "clerk", "doctor", "teacher"), "things": ("letter", "report", "book", "phone"),
               "adjectives": ("new", "busy", "long", "short", "important"),
               "transitive": ("writes", "reads", "sends", "checks", "signs"), "intransitive": ("works", "waits",
                                                                                             "calls")},
}
P_TRANSITIVE, P_ADJECTIVE, P_ADVERB = 0.75, 0.5, 0.5


@dataclass(frozen=True)
class Language:
    """A target language: a lexicon (source word -> ((target word, probability), ...)) and its order rules."""

    lexicon: dict
    adj_after: float                 # P(adjective after its noun)
    adverb: tuple                    # ((position, probability), ...); positions: "end", "front", "after_verb"
    particle: tuple                  # (word, position "after_verb" | "front", probability of inserting it)


def _lex(text: str) -> dict:
    """``"dog: chien .7 toutou .3; cat: chat"`` -> ``{"dog": (("chien", .7), ("toutou", .3)),
    "cat": (("chat", 1.0),)}``; ``_`` joins the words of a multi-word alternative (``de_nouveau``)."""
    out = {}
    for entry in text.split(";"):
        src, alts = entry.split(":")
        parts = alts.split()
        if len(parts) == 1:
            out[src.strip()] = ((parts[0], 1.0),)
        else:
            out[src.strip()] = tuple((w.replace("_", " "), float(p)) for w, p in zip(parts[::2], parts[1::2],
                                                                                     strict=True))
    return out


LANGUAGES = {
    "fr": Language(_lex(
        "the: le; a: un; today: aujourdhui; often: souvent .4 par_moments .3 par_habitude .3;"
        "again: encore .4 de_nouveau .35 de_plus .25;"
        "dog: chien .7 toutou .3; cat: chat .75 minou .25; bird: oiseau; horse: cheval .6 dada .4;"
        "ball: balle .55 ballon .45; bone: os; apple: pomme; tree: arbre; big: grand .6 gros .4; small: petit;"
        "old: vieux .7 ancien .3; young: jeune; happy: heureux .6 joyeux .4; sees: voit .8 regarde .2;"
        "chases: chasse .6 poursuit .4; finds: trouve; likes: aime .7 adore .3; hears: entend .8 ecoute .2;"
        "sleeps: dort; runs: court .7 galope .3; sings: chante; manager: directeur .6 chef .4;"
        "clerk: employe .7 commis .3; doctor: medecin .6 docteur .4; teacher: professeur .7 maitre .3;"
        "letter: lettre; report: rapport .8 bilan .2; book: livre; phone: telephone .7 portable .3;"
        "new: nouveau .6 neuf .4; busy: occupe; long: long; short: bref .6 concis .4;"
        "important: important .7 majeur .3;"
        "writes: ecrit; reads: lit .75 parcourt .25; sends: envoie .8 expedie .2; checks: verifie .7 controle .3;"
        "signs: signe; works: travaille .8 bosse .2; waits: attend; calls: appelle"),
        adj_after=0.7, adverb=(("end", 0.75), ("front", 0.25)), particle=("bien", "after_verb", 0.3)),
    "de": Language(_lex(
        "the: der; a: ein; today: heute; often: oft .4 immer_wieder .35 immer_oefter .25;"
        "again: erneut .4 noch_einmal .35 noch_mal .25;"
        "dog: hund .8 koeter .2; cat: katze .8 mieze .2; bird: vogel; horse: pferd .7 gaul .3; ball: ball;"
        "bone: knochen; apple: apfel; tree: baum; big: gross .7 riesig .3; small: klein; old: alt; young: jung;"
        "happy: froh .5 gluecklich .5; sees: sieht .8 erblickt .2; chases: jagt; finds: findet; likes: mag .7 liebt .3;"
        "hears: hoert; sleeps: schlaeft; runs: rennt .6 laeuft .4; sings: singt; manager: leiter .6 vorgesetzter .4;"
        "clerk: angestellter .7 sachbearbeiter .3; doctor: arzt .8 doktor .2; teacher: lehrer; letter: brief;"
        "report: bericht; book: buch; phone: handy .6 telefon .4; new: neu; busy: beschaeftigt .7 fleissig .3;"
        "long: lang; short: kurz; important: wichtig; writes: schreibt; reads: liest; sends: schickt .6 sendet .4;"
        "checks: prueft .7 kontrolliert .3; signs: unterschreibt; works: arbeitet; waits: wartet; calls: ruft"),
        adj_after=0.0, adverb=(("after_verb", 0.6), ("end", 0.4)), particle=("doch", "after_verb", 0.3)),
    "es": Language(_lex(
        "the: el; a: una; today: hoy; often: frecuentemente .4 con_frecuencia .35 con_regularidad .25;"
        "again: nuevamente .4 otra_vez .35 otra_ocasion .25;"
        "dog: perro .7 chucho .3; cat: gato .8 michi .2; bird: pajaro .6 ave .4; horse: caballo;"
        "ball: pelota .6 bola .4; bone: hueso; apple: manzana; tree: arbol; big: grande .7 enorme .3;"
        "small: pequeno .6 chico .4; old: viejo; young: joven; happy: feliz .6 contento .4; sees: ve .7 mira .3;"
        "chases: persigue; finds: encuentra .8 halla .2; likes: quiere; hears: oye .7 escucha .3; sleeps: duerme;"
        "runs: corre; sings: canta; manager: gerente .6 jefe .4; clerk: empleado .5 oficinista .5;"
        "doctor: medico .7 galeno .3; teacher: maestro .6 profesor .4; letter: carta; report: informe .7 reporte .3;"
        "book: libro; phone: movil .5 celular .5; new: nuevo; busy: ocupado; long: largo; short: corto;"
        "important: importante; writes: escribe; reads: lee; sends: envia .7 manda .3; checks: revisa .6 comprueba .4;"
        "signs: firma; works: trabaja; waits: espera; calls: llama"),
        adj_after=0.8, adverb=(("end", 0.5), ("front", 0.5)), particle=("pues", "front", 0.25)),
}
THREE_LANGUAGES = ("fr", "de", "es")
SIZES = {"train": 4000, "val": 300, "test": 500}
SPLITS = tuple(SIZES)


# --------------------------------------------------------------------------------------------
# sources: sampling and parsing
# --------------------------------------------------------------------------------------------
def _source(rng: random.Random, domain: str) -> str:
    d = DOMAINS[domain]

    def np(nouns):
        adj = [rng.choice(d["adjectives"])] if rng.random() < P_ADJECTIVE else []
        return [rng.choice(DETERMINERS), *adj, rng.choice(nouns)]

    words = np(d["agents"])
    if rng.random() < P_TRANSITIVE:
        words += [rng.choice(d["transitive"]), *np(d["agents"] + d["things"])]
    else:
        words.append(rng.choice(d["intransitive"]))
    if rng.random() < P_ADVERB:
        words.append(rng.choice(ADVERBS))
    return " ".join(words)


_ADJECTIVES = {a for d in DOMAINS.values() for a in d["adjectives"]}
_VERBS = {v for d in DOMAINS.values() for v in d["transitive"] + d["intransitive"]}


def parse_source(source: str) -> tuple:
    """``(tag, subject, verb, object, adverb)`` of a grammar source; an NP is ``(det, adjective | None, noun)``;
    ``tag`` is the target language named by a ``<2xx>`` prefix (or None), ``object``/``adverb`` None if absent."""
    if not isinstance(source, str):
        raise TypeError(f"source must be a string, got {type(source).__name__}")
    words = source.split()
    tag = None
    if words and words[0].startswith("<2") and words[0].endswith(">"):
        tag, words = words[0][2:-1], words[1:]
    pos = 0

    def np():
        nonlocal pos
        if pos >= len(words) or words[pos] not in DETERMINERS:
            raise ValueError(f"source is not in the grammar (expected a determiner at word {pos}): {source!r}")
        det, pos = words[pos], pos + 1
        adj = words[pos] if pos < len(words) and words[pos] in _ADJECTIVES else None
        pos += adj is not None
        if pos >= len(words):
            raise ValueError(f"source is not in the grammar (a noun phrase has no noun): {source!r}")
        pos += 1
        return det, adj, words[pos - 1]

    subj = np()
    if pos >= len(words) or words[pos] not in _VERBS:
        raise ValueError(f"source is not in the grammar (expected a verb after the subject): {source!r}")
    verb, pos = words[pos], pos + 1
    obj = np() if pos < len(words) and words[pos] in DETERMINERS else None
    adv = words[pos] if pos < len(words) and words[pos] in ADVERBS else None
    pos += adv is not None
    if pos != len(words):
        raise ValueError(f"source is not in the grammar (unexpected words at the end): {source!r}")
    return tag, subj, verb, obj, adv


# --------------------------------------------------------------------------------------------
# translation: one traversal, driven by a chooser (sampling, enumeration)
# --------------------------------------------------------------------------------------------
def _translate(parsed: tuple, lang: str, choose) -> list[str]:
    """The words of a translation; ``choose(context, options, probs)`` makes each random choice in turn.
    ``context`` names the choice for the entropy estimate: ``("word", lang, source word)``, ``("adj_after",
    lang)``, ``("adverb", lang)`` or ``("particle", lang)``."""
    _, subj, verb, obj, adv = parsed
    L = LANGUAGES[lang]

    def word(w):
        alts = L.lexicon[w]
        return alts[0][0] if len(alts) == 1 else choose(("word", lang, w), *zip(*alts, strict=True))

    def np(phrase):
        det, adj, noun = phrase
        out = [word(det)]
        if adj is None:
            return out + [word(noun)]
        a, n = word(adj), word(noun)
        if 0.0 < L.adj_after < 1.0:
            after = choose(("adj_after", lang), (True, False), (L.adj_after, 1 - L.adj_after))
        else:
            after = L.adj_after == 1.0
        return out + ([n, a] if after else [a, n])

    particle_word, particle_pos, p_particle = L.particle
    has_particle = choose(("particle", lang), (True, False), (p_particle, 1 - p_particle))
    adverb = where = None
    if adv is not None:
        adverb = word(adv)
        options = dict(L.adverb)
        if obj is None and "after_verb" in options:  # no object: "after the verb" is the end, one choice
            options["end"] = options.get("end", 0.0) + options.pop("after_verb")
        where = choose(("adverb", lang), tuple(options), tuple(options.values())) if len(options) > 1 else "end"
    words = np(subj) + [word(verb)]
    if has_particle and particle_pos == "after_verb":
        words.append(particle_word)
    if where == "after_verb":
        words.append(adverb)
    if obj is not None:
        words += np(obj)
    if where == "end":
        words.append(adverb)
    front = ([particle_word] if has_particle and particle_pos == "front" else []) + ([adverb] if where == "front"
                                                                                       else [])
    return front + words


def _sample(parsed: tuple, lang: str, rng: random.Random) -> str:
    def choose(context, options, probs):
        return rng.choices(options, weights=probs)[0]

    return " ".join(_translate(parsed, lang, choose))


def _choice_points(parsed: tuple, lang: str) -> list:
    """``[(context, options, probs), ...]``: the choices of a translation, in the order they are made."""
    points = []
    _translate(parsed, lang, lambda c, o, p: points.append((c, o, p)) or o[0])
    return points


def _realize(parsed: tuple, lang: str, picks) -> list:
    """The words of the translation that takes option ``picks[i]`` at choice point ``i``."""
    it = iter(picks)
    return _translate(parsed, lang, lambda c, o, p: o[next(it)])


@lru_cache(maxsize=50_000)
def _derivations(source: str, languages: tuple) -> dict:
    """``{target: (probability, ((context, choice), ...))}`` over every derivation of ``source``: the choices
    of each language enumerated (``itertools.product``), the language itself a uniform choice unless the
    source is tagged or there is one language."""
    parsed = parse_source(source)
    if parsed[0] is not None:
        languages = (parsed[0],)
    out: dict = {}
    for lang in languages:
        points = _choice_points(parsed, lang)
        for picks in itertools.product(*[range(len(o)) for _, o, _ in points]):
            words = _realize(parsed, lang, picks)
            prob = math.prod(p[i] for (_, _, p), i in zip(points, picks, strict=True)) / len(languages)
            record = tuple((c, o[i]) for (c, o, _), i in zip(points, picks, strict=True))
            if len(languages) > 1:
                record = ((("language",), lang),) + record
            target = " ".join(words)
            if target in out:  # never happens in this grammar (tests check it); summed if it did
                prob += out[target][0]
            out[target] = (prob, record)
    return out


# --------------------------------------------------------------------------------------------
# corpora
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TranslationSplit:
    """Parallel sentences: ``sources`` and ``targets`` (N strings each), the target ``languages`` and source
    ``domains`` (N each). ``grammar_languages`` are the languages a grammar source may be translated into (its
    true distribution is a uniform mixture over them unless tagged); ``None`` for real data, which has no
    true distribution."""

    sources: list
    targets: list
    languages: list | None = None
    domains: list | None = None
    grammar_languages: tuple | None = None

    def __len__(self) -> int:
        return len(self.sources)

    def _check_grammar(self):
        if self.grammar_languages is None:
            raise ValueError("this split has no grammar (real data): its true distribution is unknown")

    def distribution(self, i: int) -> dict:
        """The true ``p(y | x_i)`` of source ``i``: ``{target sentence: probability}`` (sums to 1)."""
        self._check_grammar()
        return {t: p for t, (p, _) in _derivations(self.sources[i], self.grammar_languages).items()}

    def references(self, k: int, seed: int = 0) -> list:
        """``k`` translations of every source sampled from ``p(y | x)`` (for multi-reference BLEU): N lists."""
        self._check_grammar()
        rng = random.Random(seed)
        out = []
        for s in self.sources:
            d = _derivations(s, self.grammar_languages)
            out.append(rng.choices(list(d), weights=[p for p, _ in d.values()], k=k))
        return out

    def with_targets(self, targets) -> TranslationSplit:
        """The same sources with other targets (a distilled transfer set); the grammar is kept."""
        targets = list(targets)
        if len(targets) != len(self.sources) or not all(isinstance(t, str) for t in targets):
            raise ValueError(f"targets must be {len(self.sources)} strings (one per source), got {len(targets)}")
        return replace(self, targets=targets, languages=[_language_or_none(t) for t in targets]
                       if self.grammar_languages is not None else self.languages)

    def subset(self, indices) -> TranslationSplit:
        idx = list(indices)

        def pick(xs):
            return None if xs is None else [xs[i] for i in idx]

        return replace(self, sources=pick(self.sources), targets=pick(self.targets), languages=pick(self.languages),
                       domains=pick(self.domains))


def _as_tuple(name: str, value, allowed) -> tuple:
    values = (value,) if isinstance(value, str) else tuple(value)
    bad = [v for v in values if v not in allowed]
    if not values or bad or len(set(values)) != len(values):
        raise ValueError(f"{name} must be one of {sorted(allowed)} or a tuple of distinct ones, got {value!r}")
    return values


@lru_cache(maxsize=16)
def _corpus(languages: tuple, domains: tuple, tag: bool, seed: int) -> dict:
    rng = random.Random(seed)
    total = sum(SIZES.values())
    seen: dict = {}
    while len(seen) < total:  # distinct sources only (a tagged source counts per tag), so splits are disjoint
        domain = rng.choice(domains)
        source, lang = _source(rng, domain), rng.choice(languages)
        if tag:
            source = f"<2{lang}> {source}"
        seen.setdefault(source, (domain, lang))
    items = list(seen.items())
    rng.shuffle(items)
    out, start = {}, 0
    for name, size in SIZES.items():
        chunk = items[start:start + size]
        start += size
        targets = [_sample(parse_source(s), lang, rng) for s, (_, lang) in chunk]
        out[name] = TranslationSplit([s for s, _ in chunk], targets, [lang for _, (_, lang) in chunk],
                                     [d for _, (d, _) in chunk], languages)
    return out


def translation(split: str = "train", target="fr", domain="animals", tag: bool = False, seed: int = 0,
                limit: int | None = None) -> TranslationSplit:
    """One split of a grammar translation corpus (4,000 train / 300 val / 500 test sources).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        target: a target language (``"fr"``, ``"de"``, ``"es"``) or a tuple of them: each source is then paired
            with its translation into one of them, drawn uniformly (:data:`THREE_LANGUAGES`: Zhou et al.'s set).
        domain: ``"animals"``, ``"office"`` or both (each source from one, drawn uniformly).
        tag: prefix each source with ``<2xx>``, the language it is translated into (multilingual training).
        seed: draws the sources and samples their translations; the same seed gives the same corpus.
        limit: keep the first ``limit`` pairs.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    languages = _as_tuple("target", target, LANGUAGES)
    domains = _as_tuple("domain", domain, DOMAINS)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    data = _corpus(languages, domains, bool(tag), seed)[split]
    return data if limit is None or limit >= len(data) else data.subset(range(limit))


# --------------------------------------------------------------------------------------------
# languages of an output, and data complexity
# --------------------------------------------------------------------------------------------
_WORD_LANGUAGE = {w: lang for lang, L in LANGUAGES.items() for alts in L.lexicon.values() for a, _ in alts
                  for w in a.split()} | {L.particle[0]: lang for lang, L in LANGUAGES.items()}


def languages_of(sentence: str) -> set:
    """The target languages whose words occur in ``sentence`` (words of no target language are ignored)."""
    return {_WORD_LANGUAGE[w] for w in sentence.split() if w in _WORD_LANGUAGE}


def mixes_languages(sentence: str) -> bool:
    """True when ``sentence`` has words of more than one target language (a NAT's typical error)."""
    return len(languages_of(sentence)) > 1


def _language_or_none(sentence: str):
    langs = languages_of(sentence)
    return next(iter(langs)) if len(langs) == 1 else None
