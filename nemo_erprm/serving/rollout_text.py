"""Clean PRM inputs out of RL rollouts.

An RL actor hands the reward model what it generated, not what the PRM was trained on:
the response ends with the actor's end strings (NeMo-Aligner keeps ``<extra_id_1>`` /
``<|endoftext|>`` in the text, OpenRLHF decodes with ``skip_special_tokens=False``), and the
prompt is the actor's whole chat template around the question (often a task instruction
too). These helpers turn that back into (question, response):

- :func:`strip_end_strings` drops trailing end strings (and whitespace between them);
- :class:`QuestionExtractor` takes the raw question out of a templated prompt, either with a
  regex whose group ``question`` (or group 1) is the question, or with the actor tokenizer's
  chat template (the user turn is located by the template's own text around a sentinel);
- :func:`split_at_prompt` finds where the response starts in a query that should start with
  its prompt but may not (left-truncated prompt, decode(encode(prompt)) != prompt), with
  bounded work whatever the prompt's length (the fuzzy match sees the prompt's last
  :data:`FUZZY_TAIL_CHARS` characters only).
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher
from typing import Any, Iterable, Optional, Sequence

# End strings of common chat templates (NeMo-Aligner's PPO default is the first two).
DEFAULT_END_STRINGS = ("<|endoftext|>", "<extra_id_1>", "</s>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>",
                       "<|end|>", "<eos>", "<|end\u2581of\u2581sentence|>")
_SENTINEL = "\u2063ERPRM-QUESTION\u2063"
_MIN_PROMPT_TAIL = 16  # a left-truncated prompt must still share this many characters with the query
# The fuzzy match (difflib, quadratic) compares the prompt's last FUZZY_TAIL_CHARS characters with
# the query from FUZZY_SLACK_CHARS before where that tail should start to 64 characters past the
# prompt's length: at most ~1.4M character pairs, ~30 ms, where a whole 32k-character prompt took
# ~35 s. decode(encode(prompt)) changes are local (spaces, normalization), so the prompt's end
# locates the response as well as all of it does.
FUZZY_TAIL_CHARS = 1024
FUZZY_SLACK_CHARS = 256
_FUZZY_PAST_END = 64
_MAX_TRUNCATION_CANDIDATES = 256  # left-truncation cuts checked (many only in periodic text)


def end_strings_with(tokenizer: Any, extra: Iterable[str] = DEFAULT_END_STRINGS) -> tuple[str, ...]:
    """``extra`` plus the tokenizer's eos/pad tokens (when it has them)."""
    found = [getattr(tokenizer, name, None) for name in ("eos_token", "pad_token")] if tokenizer is not None else []
    return tuple(dict.fromkeys([*extra, *(t for t in found if isinstance(t, str) and t)]))


def strip_end_strings(text: str, end_strings: Sequence[str]) -> str:
    """``text`` without trailing end strings (repeated, e.g. ``"...<|im_end|>\\n</s>"``)."""
    out = text
    while True:
        stripped = out.rstrip()
        end = next((e for e in end_strings if e and stripped.endswith(e)), None)
        if end is None:
            return out if out is text else stripped
        out = stripped[: -len(end)]


class QuestionExtractor:
    """The raw question inside a (chat-templated) prompt; a prompt that does not look
    templated is returned unchanged."""

    def __init__(self, regex: Optional[str] = None, tokenizer: Any = None, response_marker: Optional[str] = None):
        """``response_marker``: a prompt cut at this marker (a combined text split there) ends
        with the template's tail up to the marker, not the whole tail."""
        self.regex = re.compile(regex, re.DOTALL) if regex else None
        if self.regex is not None and self.regex.groups < 1:
            raise ValueError(f"--prompt-regex {regex!r} needs a group: (?P<question>...) or (...)")
        self.before = self.after = None
        self.tails: tuple[str, ...] = ()
        template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
        if self.regex is None and template:
            rendered = tokenizer.apply_chat_template([{"role": "user", "content": _SENTINEL}], tokenize=False,
                                                     add_generation_prompt=True)
            if _SENTINEL in rendered:
                self.before, self.after = rendered.split(_SENTINEL, 1)
                tails = [self.after.rstrip()]
                if response_marker and response_marker in self.after:
                    tails.append(self.after[: self.after.rfind(response_marker)].rstrip())
                self.tails = tuple(dict.fromkeys(tails))

    @property
    def active(self) -> bool:
        return self.regex is not None or self.before is not None

    def __call__(self, prompt: str) -> str:
        if self.regex is not None:
            m = self.regex.search(prompt)
            if m is None:
                return prompt
            q = m.group("question") if "question" in self.regex.groupindex else m.group(1)
            return q.strip() or prompt
        if self.before is None:
            return prompt
        body = prompt.rstrip()
        for tail in self.tails:  # the template's tail whole, or cut where a response marker split the text
            if not tail or body.endswith(tail):
                body = body[: len(body) - len(tail)]
                break
        else:
            return prompt  # not this template
        # the template's text before the question may hold a default system prompt that the
        # actor replaced: find the longest tail of it (the user header) that the prompt has
        before = self.before
        for k in range(len(before), 0, -1):
            at = body.rfind(before[-k:])
            if at >= 0 and (k >= _MIN_PROMPT_TAIL or k == len(before)):
                body = body[at + k:]
                break
        return body.strip() or prompt


def split_at_prompt(query: str, prompt: str) -> Optional[int]:
    """Index in ``query`` where the response starts, given the prompt it was generated from;
    ``None`` when the query does not continue this prompt.

    Exact prefix first; then a left-truncated prompt (the query starts with a tail of it,
    as OpenRLHF keeps the last tokens of an over-long prompt); then decode(encode(prompt))
    differences: the longest matching block of text that ends where the prompt ends. The work
    is bounded whatever the lengths (see :data:`FUZZY_TAIL_CHARS`)."""
    if query.startswith(prompt):
        return len(prompt)
    cut = _left_truncation(query, prompt)
    if cut is not None:
        return len(prompt) - cut
    return _fuzzy_prompt_end(query, prompt)


def _left_truncation(query: str, prompt: str) -> Optional[int]:
    """The smallest cut with ``query.startswith(prompt[cut:])`` leaving at least
    ``_MIN_PROMPT_TAIL`` characters: every such cut is an occurrence of the query's first
    characters in the prompt, found by ``str.find`` instead of trying every cut."""
    probe = query[:_MIN_PROMPT_TAIL]
    last = len(prompt) - _MIN_PROMPT_TAIL
    if len(probe) < _MIN_PROMPT_TAIL or last < 1:
        return None
    at = prompt.find(probe, 1, last + len(probe))
    for _ in range(_MAX_TRUNCATION_CANDIDATES):
        if at < 0:
            return None
        if query.startswith(prompt[at:]):
            return at
        at = prompt.find(probe, at + 1, last + len(probe))
    return None


def _fuzzy_prompt_end(query: str, prompt: str) -> Optional[int]:
    tail = prompt[-FUZZY_TAIL_CHARS:]
    lo = max(len(prompt) - len(tail) - FUZZY_SLACK_CHARS, 0)
    window = query[lo: len(prompt) + _FUZZY_PAST_END]
    anchor = tail[-_MIN_PROMPT_TAIL:]
    if anchor not in window:  # the last matching block must hold the prompt's last characters
        return None
    matcher = SequenceMatcher(None, tail, window, autojunk=False)
    blocks = [b for b in matcher.get_matching_blocks() if b.size]
    if not blocks:
        return None
    last = blocks[-1]
    matched = sum(b.size for b in blocks)
    if last.a + last.size == len(tail) and last.size >= min(_MIN_PROMPT_TAIL, len(tail)) \
            and matched >= 0.9 * len(tail):
        return lo + last.b + last.size
    return None
