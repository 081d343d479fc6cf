"""From a policy response to a reward: segmentation into steps (the training segmentation),
step scores from the PRM (all steps in one forward), aggregation and an optional transform.

Prompt/response boundary: requests give them apart (``prompt`` + ``response`` or ``steps``),
or as one text split at the last ``response_marker`` (e.g. the chat template's assistant
header ``<|im_start|>assistant\\n``), or after ``prompt_length`` characters (OpenRLHF sends the
prompt next to the full query: the query's prefix is the prompt). Token ids from an actor are
decoded with the actor's tokenizer first; the PRM re-tokenizes with its own (it inserts the
step tags anyway), so actor and PRM tokenizers may differ.

One bad sample never fails a batch: a sample that cannot be scored (no response marker,
too long, no steps, the step tag inside its text, a prompt that its query does not continue,
or the model failing on it alone) is an :class:`Unscorable`; it gets the fallback reward
(``RewardConfig.fallback_reward``, by default the floor: the reward of an empty response, never
above it), is counted by reason (``RewardService.unscorable``, in ``/metrics``) and logged with
its reason. A misconfiguration that makes most samples unscorable is not silent: the fallback
rate over the last samples is watched (:mod:`.fallback_monitor`, a loud warning above
``fallback_alarm``), and a batch split at the response marker in which the marker occurs in no
sample, before the marker was ever found, is refused (:class:`MarkerNotFound`).
RL inputs are cleaned first (:mod:`.rollout_text`): trailing end strings are stripped, and the
raw question is taken out of a chat-templated prompt.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

from nemo_erprm.errors import ERPRMError
from nemo_erprm.eval.aggregate import AGGREGATIONS, aggregate
from nemo_erprm.labeling.segmentation import SegmentationConfig, StepTagError, split_steps
from nemo_erprm.serving.fallback_monitor import FallbackMonitor
from nemo_erprm.serving.rollout_text import QuestionExtractor, split_at_prompt, strip_end_strings

TRANSFORMS = ("none", "minus_half", "logit")
log = logging.getLogger("nemo_erprm.serving.unscorable")


class RequestError(ERPRMError, ValueError):
    """A bad request: the HTTP layer answers 4xx naming ``field``."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status = field, message, status


class Unscorable(RequestError):
    """A well-formed sample the PRM cannot score; ``reason`` is one of :data:`UNSCORABLE_REASONS`.
    The service answers it with the fallback reward instead of failing its batch."""

    def __init__(self, reason: str, field: str, message: str, status: int = 422):
        super().__init__(field, message, status)
        self.reason = reason


class MarkerNotFound(RequestError):
    """The response marker occurs in no sample of a batch, and was never found before: the
    server's marker is wrong (e.g. a literal backslash-n), so the batch is refused rather than
    answered with a constant fallback reward."""


UNSCORABLE_REASONS = ("no_marker", "prompt_mismatch", "step_tag", "too_long", "no_steps", "empty_prompt",
                      "bad_length", "no_question", "scoring_error")
Item = Union[tuple[str, list[str]], Unscorable]


@dataclass
class RewardConfig:
    aggregation: str = "min"
    transform: str = "none"  # none | minus_half (score - 0.5) | logit
    segmentation_rule: str = "newline"
    min_step_chars: int = 8
    response_marker: Optional[str] = None  # split a combined text at its last occurrence
    fallback_reward: Optional[float] = None  # reward of an unscorable sample (None: the floor)
    end_strings: tuple[str, ...] = ()  # stripped from the end of every response
    prompt_regex: Optional[str] = None  # group "question" (or 1): the raw question in a templated prompt
    fallback_window: int = 256  # samples over which the fallback rate is watched
    fallback_alarm: float = 0.5  # a fallback rate above this over the window: a loud warning

    def validate(self) -> "RewardConfig":
        if self.fallback_reward is not None and not math.isfinite(self.fallback_reward):
            raise ValueError(f"fallback reward must be a finite number, got {self.fallback_reward}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {sorted(AGGREGATIONS)}")
        if self.transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}")
        floor = floor_reward(self.transform)
        if self.fallback_reward is not None and self.fallback_reward > floor:
            raise ValueError(f"fallback reward {self.fallback_reward} is above the floor {floor:g} (the reward of an "
                             f"empty response with --transform {self.transform}): an unscorable sample must never "
                             "earn more than a scored one")
        if self.fallback_window < 1 or not 0.0 <= self.fallback_alarm <= 1.0:
            raise ValueError(f"fallback window must be >= 1 and the fallback alarm rate in [0, 1], got "
                             f"{self.fallback_window}, {self.fallback_alarm}")
        return self


@dataclass
class Scored:
    steps: list[str]
    step_scores: list[float]
    reward: float
    unscorable: Optional[str] = None  # the reason, when ``reward`` is the fallback
    error: Optional[str] = None  # what was wrong with the sample (field: message)


def transform_reward(score: float, how: str) -> float:
    if how == "minus_half":
        return score - 0.5
    if how == "logit":
        p = min(max(score, 1e-6), 1 - 1e-6)
        return math.log(p / (1 - p))
    return score


def floor_reward(transform: str) -> float:
    """The lowest reward a scored sample can get (a step score of 0, transformed): the reward
    of an empty response and the default fallback. The one definition of the floor."""
    return transform_reward(0.0, transform)


class RewardService:
    """Turns (prompt, response) into steps and a reward with a step scorer (synchronous; the
    HTTP layer batches many requests into one ``score_items`` call)."""

    def __init__(self, scorer: Any, config: RewardConfig, actor_tokenizer: Any = None):
        self.scorer, self.config = scorer, config.validate()
        self.segmentation = SegmentationConfig(rule=config.segmentation_rule, min_chars=config.min_step_chars,
                                               step_tag=scorer.step_tag)
        self.tokenizer = getattr(scorer, "tokenizer", None)
        self.question_of = QuestionExtractor(config.prompt_regex, actor_tokenizer, config.response_marker)
        self.fallback = (config.fallback_reward if config.fallback_reward is not None
                         else floor_reward(config.transform))
        self.unscorable: dict[str, int] = {}
        self._count_lock = threading.Lock()  # counted from the event loop and the model thread
        self.monitor = FallbackMonitor(config.fallback_window, config.fallback_alarm, self.fallback, log)
        self.marker_found = False  # the response marker occurred in one sample at least

    def split_text(self, text: str, field: str, prompt_length: Optional[int] = None) -> tuple[str, str]:
        if prompt_length is not None:
            if not 0 <= prompt_length <= len(text):
                raise RequestError(field, f"prompt length {prompt_length} outside the text ({len(text)} characters)")
            return text[:prompt_length], text[prompt_length:]
        marker = self.config.response_marker
        if not marker:
            raise RequestError(field, "cannot tell prompt from response: send them apart, or start the server "
                                      "with --response-marker")
        at = text.rfind(marker)
        if at < 0:
            raise Unscorable("no_marker", field, f"the response marker {marker!r} does not occur in the text")
        self.marker_found = True
        return text[:at], text[at + len(marker):]

    def split_batch(self, texts: Sequence[Union[str, Unscorable]],
                    field: str) -> list[Union[tuple[str, str], Unscorable]]:
        """Each text (``field[i]``) split at the response marker, or its :class:`Unscorable`.
        Until the marker has been found in one sample, a batch in which it occurs in no text
        is refused (:class:`MarkerNotFound`, logged): a wrong ``--response-marker`` would
        otherwise answer every sample with the fallback reward, and RL train on a constant."""
        out: list[Union[tuple[str, str], Unscorable]] = []
        for i, text in enumerate(texts):
            if isinstance(text, Unscorable):
                out.append(text)
                continue
            try:
                out.append(self.split_text(text, f"{field}[{i}]"))
            except Unscorable as u:
                out.append(u)
        tried = [t for t in texts if not isinstance(t, Unscorable)]
        if tried and not self.marker_found:
            marker = self.config.response_marker
            error = MarkerNotFound(
                field, f"the response marker {marker!r} occurs in none of the {len(tried)} samples of this batch, nor "
                       f"in any sample before: refusing to answer them all with the fallback reward {self.fallback}. "
                       "Check --response-marker against the text the actor sends (backslash escapes such as \\n are "
                       f"understood); the first sample begins {tried[0][:160]!r}")
            log.error("%s", error)
            raise error
        return out

    def split_query(self, query: str, prompt: str, field: str) -> tuple[str, str]:
        """(prompt, response) of a query that should continue ``prompt`` (OpenRLHF): the exact
        prefix, a left-truncated or re-tokenized prompt (:func:`split_at_prompt`), else the
        response marker; the full prompt is kept for the question."""
        marker = self.config.response_marker
        # a prompt that ends with the assistant header (the marker): the question is before it
        # (QuestionExtractor knows the marker: a template's tail cut there still matches)
        question = prompt[: prompt.rfind(marker)] if marker and marker in prompt else prompt
        at = split_at_prompt(query, prompt)
        if at is not None:
            return question, query[at:]
        if marker and marker in query:
            return question, self.split_text(query, field)[1]
        raise Unscorable("prompt_mismatch", field, "the query does not continue its prompt")

    def item_or_unscorable(self, prompt: str, response: Optional[str] = None, steps: Optional[Sequence[str]] = None,
                           field: str = "response") -> Item:
        try:
            return self.to_item(prompt, response, steps, field)
        except Unscorable as u:
            return u

    def to_item(self, prompt: str, response: Optional[str] = None, steps: Optional[Sequence[str]] = None,
                field: str = "response") -> tuple[str, list[str]]:
        """(question, steps) ready for the scorer; raises :class:`Unscorable` naming the reason."""
        ends = self.config.end_strings
        if steps is None:
            try:
                steps = split_steps(strip_end_strings(response or "", ends), self.segmentation)
            except StepTagError as e:
                raise Unscorable("step_tag", field, str(e)) from None
        else:
            steps = [str(s) for s in steps]
            if steps and ends:
                steps[-1] = strip_end_strings(steps[-1], ends)
            if any(self.scorer.step_tag in s for s in steps):
                raise Unscorable("step_tag", field, f"a step contains the step tag {self.scorer.step_tag!r}")
        prompt = self.question_of(prompt)
        prompt_field = field.rsplit(".", 1)[0] + ".prompt" if "." in field else "prompt"
        if self.scorer.step_tag in prompt:
            raise Unscorable("step_tag", prompt_field, f"the prompt contains the step tag {self.scorer.step_tag!r}")
        if not prompt.strip():
            raise Unscorable("empty_prompt", prompt_field, "empty prompt")
        if not steps:
            raise Unscorable("no_steps", field, "no step in the response")
        item = (prompt, list(steps))
        limit = getattr(self.scorer, "max_length", None)
        if limit is not None and self.count_tokens(item) > limit:
            raise Unscorable("too_long", field, f"prompt and response exceed the PRM's {limit} tokens", status=413)
        return item

    def count_tokens(self, item: Item) -> int:
        if isinstance(item, Unscorable):
            return 0
        text = item[0] + "".join(item[1])
        if self.tokenizer is None:
            return len(text) // 3 + 1
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) + len(item[1])

    def reward_of(self, step_scores: Sequence[float]) -> float:
        if not step_scores:
            return floor_reward(self.config.transform)  # an empty response earns the floor
        return transform_reward(aggregate(step_scores, self.config.aggregation), self.config.transform)

    def note_unscorable(self, u: Unscorable) -> Scored:
        """The fallback answer for ``u``, counted and logged with its reason."""
        with self._count_lock:
            self.unscorable[u.reason] = self.unscorable.get(u.reason, 0) + 1
        log.warning("unscorable sample (%s): %s: %s -> fallback reward %s", u.reason, u.field, u.message, self.fallback)
        return Scored([], [], self.fallback, unscorable=u.reason, error=str(u))

    def unscorable_snapshot(self) -> dict[str, Any]:
        with self._count_lock:
            counts = dict(sorted(self.unscorable.items()))
        return {"total": sum(counts.values()), "by_reason": counts, "fallback_reward": self.fallback,
                "recent": self.monitor.snapshot()}

    def _score_isolated(self, items: list[tuple[str, list[str]]]) -> list[Union[list[float], Unscorable]]:
        """Step scores of ``items`` in one batch; if the batch fails, item by item, so that only
        the items the model fails on alone become unscorable (all failing: the model is broken,
        the error is raised)."""
        try:
            return list(self.scorer.score_batch(items))
        except Exception as batch_error:
            if len(items) == 1:
                return [Unscorable("scoring_error", "sample", f"{type(batch_error).__name__}: {batch_error}")]
            out: list[Union[list[float], Unscorable]] = []
            for question, steps in items:
                try:
                    out.append(self.scorer.score_batch([(question, steps)])[0])
                except Exception as e:
                    out.append(Unscorable("scoring_error", "sample", f"{type(e).__name__}: {e}"))
            if all(isinstance(o, Unscorable) for o in out):
                raise batch_error
            return out

    def score_items(self, items: Sequence[Item]) -> list[Scored]:
        """Rewards of ``items``; an :class:`Unscorable` (given, or failing in the model alone)
        gets the fallback reward."""
        out: list[Optional[Scored]] = [self.note_unscorable(it) if isinstance(it, Unscorable) else None for it in items]
        todo = [i for i, o in enumerate(out) if o is None]
        if todo:
            for i, s in zip(todo, self._score_isolated([items[i] for i in todo])):
                out[i] = (self.note_unscorable(s) if isinstance(s, Unscorable)
                          else Scored(list(items[i][1]), list(s), self.reward_of(s)))
        self.monitor.record([o.unscorable for o in out])  # type: ignore[union-attr]
        return out  # type: ignore[return-value]
