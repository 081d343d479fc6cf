"""From a policy response to a reward: segmentation into steps (the training segmentation),
step scores from the PRM (all steps in one forward), aggregation and an optional transform.

Prompt/response boundary: requests give them apart (``prompt`` + ``response`` or ``steps``),
or as one text split at the last ``response_marker`` (e.g. the chat template's assistant
header ``<|im_start|>assistant\\n``), or after ``prompt_length`` characters (OpenRLHF sends the
prompt next to the full query: the query's prefix is the prompt). Token ids from an actor are
decoded with the actor's tokenizer first; the PRM re-tokenizes with its own (it inserts the
step tags anyway), so actor and PRM tokenizers may differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from nemo_erprm.errors import ERPRMError
from nemo_erprm.eval.aggregate import AGGREGATIONS, aggregate
from nemo_erprm.labeling.segmentation import SegmentationConfig, StepTagError, split_steps

TRANSFORMS = ("none", "minus_half", "logit")


class RequestError(ERPRMError, ValueError):
    """A bad request: the HTTP layer answers 4xx naming ``field``."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status = field, message, status


@dataclass
class RewardConfig:
    aggregation: str = "min"
    transform: str = "none"  # none | minus_half (score - 0.5) | logit
    segmentation_rule: str = "newline"
    min_step_chars: int = 8
    response_marker: Optional[str] = None  # split a combined text at its last occurrence

    def validate(self) -> "RewardConfig":
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {sorted(AGGREGATIONS)}")
        if self.transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}")
        return self


@dataclass
class Scored:
    steps: list[str]
    step_scores: list[float]
    reward: float


def transform_reward(score: float, how: str) -> float:
    if how == "minus_half":
        return score - 0.5
    if how == "logit":
        p = min(max(score, 1e-6), 1 - 1e-6)
        return math.log(p / (1 - p))
    return score


class RewardService:
    """Turns (prompt, response) into steps and a reward with a step scorer (synchronous; the
    HTTP layer batches many requests into one ``score_items`` call)."""

    def __init__(self, scorer: Any, config: RewardConfig):
        self.scorer, self.config = scorer, config.validate()
        self.segmentation = SegmentationConfig(rule=config.segmentation_rule, min_chars=config.min_step_chars,
                                               step_tag=scorer.step_tag)
        self.tokenizer = getattr(scorer, "tokenizer", None)

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
            raise RequestError(field, f"the response marker {marker!r} does not occur in the text")
        return text[:at], text[at + len(marker):]

    def to_item(self, prompt: str, response: Optional[str] = None, steps: Optional[Sequence[str]] = None,
                field: str = "response") -> tuple[str, list[str]]:
        if steps is None:
            try:
                steps = split_steps(response or "", self.segmentation)
            except StepTagError as e:
                raise RequestError(field, str(e)) from None
        else:
            steps = [str(s) for s in steps]
            if any(self.scorer.step_tag in s for s in steps):
                raise RequestError("steps", f"a step contains the step tag {self.scorer.step_tag!r}")
        if self.scorer.step_tag in prompt:
            raise RequestError("prompt", f"the prompt contains the step tag {self.scorer.step_tag!r}")
        if not prompt.strip():
            raise RequestError("prompt", "empty prompt")
        item = (prompt, list(steps))
        limit = getattr(self.scorer, "max_length", None)
        if limit is not None and self.count_tokens(item) > limit:
            raise RequestError(field, f"prompt and response exceed the PRM's {limit} tokens", status=413)
        return item

    def count_tokens(self, item: tuple[str, list[str]]) -> int:
        text = item[0] + "".join(item[1])
        if self.tokenizer is None:
            return len(text) // 3 + 1
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) + len(item[1])

    def reward_of(self, step_scores: Sequence[float]) -> float:
        if not step_scores:
            return transform_reward(0.0, self.config.transform)  # an empty response earns the floor
        return transform_reward(aggregate(step_scores, self.config.aggregation), self.config.transform)

    def score_items(self, items: Sequence[tuple[str, list[str]]]) -> list[Scored]:
        nonempty = [i for i, (_, s) in enumerate(items) if s]
        scores: list[list[float]] = [[] for _ in items]
        if nonempty:
            for i, s in zip(nonempty, self.scorer.score_batch([items[i] for i in nonempty])):
                scores[i] = s
        return [Scored(list(items[i][1]), scores[i], self.reward_of(scores[i])) for i in range(len(items))]
