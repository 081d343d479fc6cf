"""Tokenize PRM inputs: token ids, the position of every step tag, float32 targets.

The step tag must be **exactly one token** wherever it occurs: checked on the tokenizer's
character offsets for every tag of every example. When the tokenizer splits the tag or
merges it with a neighbour, :class:`StepTagTokenError` says so and names the fixes: another
tag that is a single token here (candidates listed), or adding the tag as a special token
(``add_step_tag_token``; the embedding then grows by one row).

Truncation never leaves a label without its tag: a sequence longer than ``seq_length`` is
cut right after the last tag that fits, and the labels after it are dropped; an example
with no tag inside ``seq_length`` is dropped. Both are counted and reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from nemo_erprm.errors import ERPRMError

CANDIDATE_TAGS = ("ки", "<step>", "<|step|>", " +", "\n\n", "⟨step⟩", "ſ", "¶", "§", "Ċ")


class StepTagTokenError(ERPRMError, ValueError):
    pass


def single_token_id(tokenizer: Any, text: str) -> int | None:
    """The id if ``text`` (and `` text``, as it follows a space in PRM inputs) is one token."""
    for variant in (text, " " + text):
        ids = tokenizer(variant, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            return int(ids[0])
    return None


def step_tag_id(tokenizer: Any, step_tag: str, suggest: bool = True,
                add_token_hint: str = "data.add_step_tag_token=true") -> int:
    """The token id of ``step_tag`` in PRM-like text; :class:`StepTagTokenError` (listing
    single-token candidates when ``suggest``) if it is not exactly one token there."""
    probe = f"Question 12? Step one is 3 + 4 = 7. {step_tag}\nThe answer is 7. {step_tag}"
    st = StepTokenizer(tokenizer, step_tag, 1 << 20, suggest=suggest, add_token_hint=add_token_hint)
    st(probe, [0.0, 0.0])
    assert st.tag_id is not None
    return st.tag_id


def suggest_step_tags(tokenizer: Any, candidates: Sequence[str] = CANDIDATE_TAGS) -> list[str]:
    """Candidate tags that pass the single-token check in PRM-like text for this tokenizer."""
    out = []
    for tag in candidates:
        if not tag.strip():
            continue
        try:
            step_tag_id(tokenizer, tag, suggest=False)
        except (StepTagTokenError, ValueError):
            continue
        out.append(tag)
    return out


def add_step_tag_token(tokenizer: Any, step_tag: str) -> int:
    """Register ``step_tag`` as a special token; returns its id (the model must resize its
    embedding to ``len(tokenizer)``)."""
    if not isinstance(step_tag, str) or not step_tag.strip():
        raise StepTagTokenError(f"the step tag {step_tag!r} is blank: a blank special token would match everywhere")
    tokenizer.add_special_tokens({"additional_special_tokens": [step_tag]})
    return int(tokenizer.convert_tokens_to_ids(step_tag))


@dataclass
class TokenizedExample:
    input_ids: list[int]
    tag_positions: list[int]
    targets: list[float]
    truncated: bool = False


class StepTokenizer:
    """Turns ``{"text", "values"}`` into token ids with validated single-token tags."""

    def __init__(self, tokenizer: Any, step_tag: str, seq_length: int, suggest: bool = True,
                 add_token_hint: str = "data.add_step_tag_token=true"):
        """``add_token_hint``: how the caller's user adds the tag as a special token (the
        training key, or a tool's flag), named in the error when the tag is not one token."""
        self.suggest, self.add_token_hint = suggest, add_token_hint
        if not isinstance(step_tag, str) or not step_tag.strip():
            raise StepTagTokenError(f"the step tag {step_tag!r} is blank: use a non-blank tag such as 'ки'")
        if not getattr(tokenizer, "is_fast", False):
            raise StepTagTokenError("a fast (Rust) Hugging Face tokenizer is needed: tag checks use character offsets")
        self.tokenizer, self.step_tag, self.seq_length = tokenizer, step_tag, seq_length
        self.tag_id: int | None = None

    def _fail(self, detail: str) -> None:
        candidates = suggest_step_tags(self.tokenizer) if self.suggest else []
        raise StepTagTokenError(
            f"the step tag {self.step_tag!r} is not a single token for this tokenizer ({detail}). Fix: use a tag "
            f"that is one token here (candidates: {candidates or 'none found'}), or add it as a special "
            f"token ({self.add_token_hint}; the embedding grows by one row)"
        )

    def __call__(self, text: str, values: Sequence[float]) -> TokenizedExample | None:
        enc = self.tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        spans = []
        start = text.find(self.step_tag)
        while start >= 0:
            spans.append((start, start + len(self.step_tag)))
            start = text.find(self.step_tag, start + len(self.step_tag))
        if len(spans) != len(values):
            raise ValueError(f"{len(spans)} step tags in the text but {len(values)} labels")
        positions = []
        t = 0
        for a, b in spans:
            covering = []
            while t < len(offsets) and offsets[t][1] <= a:
                t += 1
            k = t
            while k < len(offsets) and offsets[k][0] < b:
                if offsets[k][1] > offsets[k][0]:  # skip zero-width special tokens
                    covering.append(k)
                k += 1
            if len(covering) != 1:
                self._fail(f"{len(covering)} tokens cover it in {text[max(0, a - 15):b + 15]!r}")
            pos = covering[0]
            s, e = offsets[pos]
            if text[s:a].strip() or text[b:e].strip():
                self._fail(f"it merges with its neighbours into {text[s:e]!r}")
            if self.tag_id is None:
                self.tag_id = int(ids[pos])
            elif int(ids[pos]) != self.tag_id:
                self._fail(f"it maps to several token ids ({self.tag_id}, {ids[pos]}) depending on context")
            positions.append(pos)
        targets = [float(v) for v in values]
        truncated = False
        if len(ids) > self.seq_length:
            keep = sum(1 for p in positions if p < self.seq_length)
            if keep == 0:
                return None
            truncated = True
            positions, targets = positions[:keep], targets[:keep]
            ids = ids[: positions[-1] + 1]
        return TokenizedExample(list(ids), positions, targets, truncated)


def _tokenize_batch(batch: dict[str, list], tokenizer: Any, step_tag: str, seq_length: int) -> dict[str, list]:
    st = StepTokenizer(tokenizer, step_tag, seq_length)
    out: dict[str, list] = {"input_ids": [], "tag_positions": [], "targets": [], "truncated": [], "dropped": []}
    for text, values in zip(batch["text"], batch["values"]):
        ex = st(text, values)
        out["input_ids"].append(ex.input_ids if ex else [])
        out["tag_positions"].append(ex.tag_positions if ex else [])
        out["targets"].append(ex.targets if ex else [])
        out["truncated"].append(bool(ex and ex.truncated))
        out["dropped"].append(ex is None)
    return out


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Identity of a tokenizer for cache keys: vocabulary and special tokens."""
    import hashlib
    import json

    vocab = tokenizer.get_vocab()
    h = hashlib.sha256(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode())
    h.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    h.update(str(type(tokenizer).__name__).encode())
    return h.hexdigest()[:16]


def tokenize_dataset(
    examples: Sequence[dict[str, Any]],
    tokenizer: Any,
    step_tag: str,
    seq_length: int,
    cache_dir: str | None = None,
    cache_key: str = "",
    num_proc: int | None = None,
):
    """Tokenize with `datasets.map` (``num_proc`` workers), cached in ``cache_dir`` under a key
    of (``cache_key``, tokenizer, tag, seq_length). Returns ``(dataset, counts)``; the dataset
    holds the kept examples' ``input_ids``, ``tag_positions``, ``targets``."""
    import hashlib
    import os

    import datasets

    ds = datasets.Dataset.from_dict(
        {"text": [e["text"] for e in examples], "values": [list(e["values"]) for e in examples]}
    )
    cache_file = None
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
        key = hashlib.sha256(
            f"{cache_key}|{tokenizer_fingerprint(tokenizer)}|{step_tag}|{seq_length}|v1".encode()
        ).hexdigest()[:20]
        cache_file = os.path.join(cache_dir, f"tokenized-{key}.arrow")
    ds = ds.map(
        _tokenize_batch,
        batched=True,
        fn_kwargs={"tokenizer": tokenizer, "step_tag": step_tag, "seq_length": seq_length},
        remove_columns=["text", "values"],
        num_proc=num_proc if num_proc and num_proc > 1 and len(examples) >= 2 * num_proc else None,
        cache_file_name=cache_file,
        load_from_cache_file=cache_file is not None,
        desc="tokenize",
    )
    counts = {
        "examples": len(ds),
        "dropped": int(sum(ds["dropped"])),
        "truncated": int(sum(ds["truncated"])),
    }
    ds = ds.filter(lambda d: not d, input_columns=["dropped"]).remove_columns(["dropped", "truncated"])
    counts["kept"] = len(ds)
    return ds, counts
