"""What a prompt's text says about the length of its reply, computed in microseconds.

``signals(text, prompt_tokens)`` returns ``SIGNALS``, hand-written features of one prompt
(the text of the current user message; ``prompt_tokens`` may count earlier turns too, as
with ``--turns all``):

* sizes: characters, lines, words, and ``history_tokens``, the prompt tokens beyond what
  the text itself takes (``prompt_tokens - chars / 4``, at least 0: earlier turns);
* explicit length asks: the number before a unit of words, of items (list 10, 5 ideas,
  3 examples...), of paragraphs/pages, and of lines/sentences; 0 when absent;
* what the prompt asks for, as 0/1 flags (``KEYWORDS``): code (a fence or code-like
  characters), translate, summarize, rewrite, explain, write long-form, list, continue,
  brevity (briefly, one word, yes or no...), detail (in detail, step by step), table,
  email/letter, a question (ends with ``?`` or starts with a question word);
* the language: the fraction of characters outside ASCII, and flags for CJK, Hangul,
  Cyrillic and other scripts.

``ngram_counts(words)`` hashes the lower-cased words and word pairs into ``NGRAM_BUCKETS``
(CRC-32) with their counts, for the TF-IDF text model (``tfidf_score``); ``text_features``
gives a prompt's signals and sorted buckets and counts at once.

``category(text, prompt_tokens)`` is the router's rule (``CATEGORIES``), deterministic and
ordered: the first that matches wins.
"""

from __future__ import annotations

import re
import string
import zlib
from math import log, sqrt

NGRAM_BUCKETS = 2**17
_SEPARATORS = bytes(32 if chr(b) in string.punctuation and chr(b) != "_" else b for b in range(256))

_UNITS = {
    "words": ("word", "words", "character", "characters", "token", "tokens"),
    "items": (
        "item", "items", "idea", "ideas", "example", "examples", "question", "questions", "tip", "tips", "way",
        "ways", "step", "steps", "name", "names", "title", "titles", "headline", "headlines", "option", "options",
        "reason", "reasons", "point", "points", "bullet", "bullets", "fact", "facts", "thing", "things", "slogan",
        "slogans", "tagline", "taglines", "tweet", "tweets", "post", "posts", "prompt", "prompts", "suggestion",
        "suggestions", "topic", "topics", "keyword", "keywords", "sentence", "sentences",
    ),
    "paragraphs": (
        "paragraph", "paragraphs", "page", "pages", "section", "sections", "chapter", "chapters", "part", "parts",
        "scene", "scenes", "verse", "verses", "stanza", "stanzas",
    ),
    "lines": ("line", "lines", "row", "rows"),
}  # fmt: skip
_UNIT_OF = {word.encode(): kind for kind, words in _UNITS.items() for word in words}
_LIST_VERBS = {w.encode() for w in ("list", "top", "generate", "write", "create", "provide", "give", "suggest")}
# Each keyword flag: words (any present) and phrases (any present as consecutive words).
KEYWORDS = {
    "code": (
        "code script function program implement python javascript java sql typescript react html css api bug error"
        " regex class method def import return const var println printf console",
        "c++",
    ),
    "translate": ("translate translation translated translating 翻译 번역", "in english|in chinese|in korean"),
    "summarize": ("summarize summarise summary summarized tldr tl 总结 요약", "key points|main points|in short"),
    "rewrite": ("rewrite rephrase paraphrase proofread correct improve edit polish revise grammar shorten", "re write"),
    "explain": ("explain describe why", "what is|what are|what does|difference between"),
    "longform": (
        "essay article blog story poem script report outline speech proposal chapter novel screenplay lyrics song"
        " plan guide course curriculum description",
        "lesson plan",
    ),
    "write": ("write create generate draft compose make design develop build", ""),
    "list": ("list bullet ideas examples options suggest", ""),
    "continue": ("", ""),  # the first word: continue, go (on), keep (going), more, next, ok, yes...
    "brief": (
        "briefly brief short concise acknowledge understood",
        "one word|one sentence|yes or no|only answer|only reply|only respond|only say|only output|just answer"
        "|just reply|just say|reply with|respond with|do not explain|don t explain|do not write|don t write"
        "|wait for|say ok",
    ),
    "detail": ("detailed comprehensive thorough elaborate long", "in detail|step by step"),
    "table": ("table", ""),
    "email": ("email letter", "e mail|cover letter|message to"),
    "act_as": ("pretend roleplay", "act as|you are a|i want you to|role play"),
}
_KEYWORD_WORDS = [frozenset(w.encode() for w in words.split()) for words, _ in KEYWORDS.values()]
_KEYWORD_PHRASES = [[p.encode() for p in phrases.split("|") if p] for _, phrases in KEYWORDS.values()]
_FLAG_WORDS: dict[bytes, list[int]] = {}
_PHRASE_STARTS: dict[bytes, list[tuple[int, bytes]]] = {}
for _k, (_words, _phrases) in zip(range(len(_KEYWORD_WORDS)), zip(_KEYWORD_WORDS, _KEYWORD_PHRASES)):
    for _w in _words:
        _FLAG_WORDS.setdefault(_w, []).append(_k)
    for _p in _phrases:
        _PHRASE_STARTS.setdefault(_p.split()[0], []).append((_k, b" " + _p + b" "))
_CONTINUE_FLAG, _TABLE_FLAG = list(KEYWORDS).index("continue"), list(KEYWORDS).index("table")
_CONTINUE = {w.encode() for w in ("continue", "go", "keep", "more", "next", "finish", "ok", "okay", "yes")}
_QUESTION = {
    w.encode() for w in "what why how when where who which is are can could do does did should would will".split()
}
_CJK = re.compile("[\u4e00-\u9fff\u3040-\u30ff]")
_HANGUL = re.compile("[\uac00-\ud7af]")
_CYRILLIC = re.compile("[\u0400-\u04ff]")
_NON_ASCII = re.compile("[^\x00-\x7f]")
SIGNALS = (
    "text_chars",
    "text_lines",
    "text_words",
    "history_tokens",
    "ask_words",
    "ask_items",
    "ask_paragraphs",
    "ask_lines",
    "code_fence",
    "code_chars",
    *(f"kw_{k}" for k in KEYWORDS),
    "question",
    "non_ascii",
    "script_cjk",
    "script_hangul",
    "script_cyrillic",
    "script_other",
)
CATEGORIES = ("code", "rewrite", "longform", "brief", "question", "followup", "other")
FOLLOWUP_TOKENS = 16  # slack of the chars / 4 estimate before a prompt counts as a follow-up
TEXT_CHARS = 8000  # prompts are read up to here (the asks are at the start or the end of long prompts)


def words_of(text: str) -> list[bytes]:
    """The lower-cased words of a prompt's first and last characters (split at whitespace and
    ASCII punctuation other than ``_``)."""
    if len(text) > TEXT_CHARS:
        text = text[: TEXT_CHARS // 2] + " " + text[-TEXT_CHARS // 2 :]
    return text.lower().encode().translate(_SEPARATORS).split()


def _asks(words: list[bytes]) -> tuple[float, float, float, float]:
    """The first number before a unit of each kind (within two words), and 'list 10'-style counts."""
    found = {"words": 0.0, "items": 0.0, "paragraphs": 0.0, "lines": 0.0}
    for i, w in enumerate(words):
        if not (w.isdigit() and len(w) <= 5):
            continue
        for unit in words[i + 1 : i + 4]:
            kind = _UNIT_OF.get(unit)
            if kind is not None:
                if not found[kind]:
                    found[kind] = float(w)
                break
        if not found["items"] and i and words[i - 1] in _LIST_VERBS:
            found["items"] = float(w)
    return found["words"], found["items"], found["paragraphs"], found["lines"]


def signals(text: str | None, prompt_tokens: float, words: list[bytes] | None = None) -> tuple[float, ...]:
    """The ``SIGNALS`` of one prompt (what an empty prompt gives without text); ``words`` are
    its ``words_of`` when the caller has them."""
    if not text:
        return (*_EMPTY[:3], max(0.0, float(prompt_tokens)), *_EMPTY[4:])
    words = words_of(text) if words is None else words
    chars = len(text)
    head = text[:4000]
    n = max(len(head), 1)
    vocabulary = set(words)
    flags = [0.0] * len(KEYWORDS)
    for word in vocabulary & _FLAG_WORDS.keys():  # a keyword flag: any of its words...
        for k in _FLAG_WORDS[word]:
            flags[k] = 1.0
    starts = vocabulary & _PHRASE_STARTS.keys()
    if starts:  # ... or any of its phrases, as consecutive words
        joined = b" " + b" ".join(words) + b" "
        for word in starts:
            for k, phrase in _PHRASE_STARTS[word]:
                if not flags[k] and phrase in joined:
                    flags[k] = 1.0
    if text.count("|") >= 2:
        flags[_TABLE_FLAG] = 1.0
    flags[_CONTINUE_FLAG] = float(bool(words) and words[0] in _CONTINUE)
    code_chars = head.count("{") + head.count("}") + head.count(";") + head.count("=>") + head.count("==")
    if head.isascii():
        non_ascii = cjk = hangul = cyrillic = 0
    else:
        non_ascii = len(_NON_ASCII.findall(head))
        cjk, hangul, cyrillic = (len(p.findall(head)) for p in (_CJK, _HANGUL, _CYRILLIC))
    stripped = text.rstrip()
    return (
        float(chars),
        float(text.count("\n") + 1 if text else 0),
        float(len(words)),
        max(0.0, float(prompt_tokens) - chars / 4.0),
        *_asks(words),
        float("```" in text),
        code_chars / n * 100,
        *flags,
        float(stripped.endswith("?") or (bool(words) and words[0] in _QUESTION)),
        non_ascii / n,
        cjk / n,
        hangul / n,
        cyrillic / n,
        (non_ascii - cjk - hangul - cyrillic) / n,
    )


_INDEX = {name: i for i, name in enumerate(SIGNALS)}
_EMPTY = (0.0,) * len(SIGNALS)  # what a prompt without text gives (but history_tokens = prompt_tokens)


def category(values: tuple[float, ...]) -> int:
    """The router: a prompt's category (index into ``CATEGORIES``) from its ``signals``, the
    first rule that holds, in the order of ``CATEGORIES``: code (a fence, code-like
    characters or a code word), rewrite (rewrite, translate, summarize), longform (an essay,
    story, article... or a length in words or paragraphs), brief (asks for a short answer, or
    starts like 'continue'), question, followup (a prompt that counts earlier turns: more
    prompt tokens beyond its text's than ``FOLLOWUP_TOKENS`` and than the text's own), other."""
    get = values.__getitem__
    if get(_INDEX["code_fence"]) or get(_INDEX["code_chars"]) > 1.0 or get(_INDEX["kw_code"]):
        return 0
    if get(_INDEX["kw_rewrite"]) or get(_INDEX["kw_translate"]) or get(_INDEX["kw_summarize"]):
        return 1
    if get(_INDEX["kw_longform"]) or get(_INDEX["ask_words"]) or get(_INDEX["ask_paragraphs"]):
        return 2
    if get(_INDEX["kw_brief"]) or get(_INDEX["kw_continue"]):
        return 3
    if get(_INDEX["question"]):
        return 4
    if get(_INDEX["history_tokens"]) > max(FOLLOWUP_TOKENS, get(_INDEX["text_chars"]) / 4.0):
        return 5
    return 6


def ngram_counts(words: list[bytes]) -> dict[int, int]:
    """Hash bucket -> count of the words and word pairs of a prompt's ``words_of``."""
    crc, counts = zlib.crc32, {}
    get = counts.get
    for w in words:
        g = crc(w) % NGRAM_BUCKETS
        counts[g] = get(g, 0) + 1
    for a, b in zip(words, words[1:]):
        g = crc(b" " + b, crc(a)) % NGRAM_BUCKETS  # the CRC-32 of a + b" " + b
        counts[g] = get(g, 0) + 1
    return counts


def text_features(text: str | None, prompt_tokens: float) -> tuple[tuple[float, ...], list[int], list[int]]:
    """``signals``, and the sorted n-gram buckets and their counts (``ngram_counts``) of one
    prompt, its words split once."""
    if not text:
        return signals(text, prompt_tokens), [], []
    words = words_of(text)
    counts = ngram_counts(words)
    buckets = sorted(counts)
    return signals(text, prompt_tokens, words), buckets, [counts[b] for b in buckets]


def tfidf_score(buckets, counts, idf, weights, bias: float) -> float:
    """The linear text model's score (of log(1 + output tokens)) of one prompt given by its
    sorted buckets and their counts: bias + w . v / |v| with v = (1 + log count) * idf.  Plain
    Python over sequences (lists are faster to index one by one than arrays), summed in bucket
    order, so that logs and Requests score identically."""
    dot = norm = 0.0
    for b, c in zip(buckets, counts):
        v = (1.0 + log(c)) * idf[b]
        dot += v * weights[b]
        norm += v * v
    return bias + dot / sqrt(norm) if norm > 0 else bias
