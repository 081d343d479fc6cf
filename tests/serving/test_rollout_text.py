"""Cleaning RL rollouts back into (question, response), without a model.

- the question of a chat-templated prompt is found whether the prompt keeps the template's
  whole tail (the prompt as sent) or was cut at the response marker (a combined text split
  there: /get_reward without prompts, NeMo-Aligner) - was: the cut prompt came back whole,
  template and all, and the PRM scored a question text it never saw in training;
- split_at_prompt's work is bounded whatever the prompt's length: the quadratic difflib
  matcher sees at most what a 2k-character prompt cost before (was: the whole prompt, ~35 s
  near the 32k limit, run on the event loop), and the exact, left-truncated and re-tokenized
  cases still split where they did.
"""

import random

import pytest

from nemo_erprm.serving import rollout_text
from nemo_erprm.serving.rollout_text import QuestionExtractor, split_at_prompt
from tests.tiny_models import CHAT_TEMPLATE, build_tokenizer

QUESTION = "What is 2+3?"
NEMO_TEMPLATE = ("<extra_id_0>System\n{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}{% endif %}"
                 "{% endfor %}\n{% for m in messages %}{% if m['role'] == 'user' %}<extra_id_1>User\n{{ m['content'] }}\n"
                 "{% endif %}{% endfor %}{% if add_generation_prompt %}<extra_id_1>Assistant\n{% endif %}")


@pytest.fixture(scope="module")
def chatml():
    return build_tokenizer(vocab_size=300, n_texts=50)


@pytest.mark.parametrize("template,marker", [(None, "<|im_start|>assistant\n"), (None, "assistant\n"),
                                             (NEMO_TEMPLATE, "<extra_id_1>Assistant\n")])
def test_question_of_a_prompt_cut_at_the_marker(chatml, template, marker):
    if template is not None:
        chatml.chat_template = template
    try:
        prompt = chatml.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False,
                                            add_generation_prompt=True)
        assert prompt.endswith(marker)
        extract = QuestionExtractor(None, chatml, response_marker=marker)
        cut = prompt[: prompt.rfind(marker)]  # what RewardService.split_text hands over
        assert extract(prompt) == extract(cut) == QUESTION
        assert extract(QUESTION) == QUESTION  # a raw question stays as it is
    finally:
        chatml.chat_template = CHAT_TEMPLATE


def _words(n_chars: int, seed: int) -> str:
    rng = random.Random(seed)
    vocab = ["apples", "the", "baker", "sells", "12", "loaves", "how", "many", "left", "after", "days", "+", "=", "."]
    out, size = [], 0
    while size < n_chars:
        w = rng.choice(vocab)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)[:n_chars]


WORK_BOUND = 2048 * 2048  # what the matcher cost on a 2k-character prompt before (0.1 s)


@pytest.fixture
def matcher_work(monkeypatch):
    """Records len(a) * len(b) of every difflib matcher split_at_prompt builds; refuses to run
    one above the bound (the old code would spend ~35 s in it)."""
    work = []
    real = rollout_text.SequenceMatcher

    def counting(isjunk, a, b, autojunk=True):
        work.append(len(a) * len(b))
        assert len(a) * len(b) <= WORK_BOUND, f"matcher over {len(a)} x {len(b)} characters"
        return real(isjunk, a, b, autojunk=autojunk)

    monkeypatch.setattr(rollout_text, "SequenceMatcher", counting)
    return work


@pytest.mark.parametrize("kind", ["unrelated", "shares_the_tail"])
def test_fuzzy_match_work_is_bounded_near_the_length_limit(matcher_work, kind):
    prompt = _words(31_000, seed=1)
    query = _words(31_500, seed=2)
    if kind == "shares_the_tail":  # passes the cheap anchor check: the matcher really runs
        query = query[:30_900] + prompt[-40:] + " the response"
    assert split_at_prompt(query, prompt) is None
    assert all(w <= WORK_BOUND for w in matcher_work)
    if kind == "shares_the_tail":
        assert matcher_work  # the bounded matcher ran


def test_long_prompts_still_split_where_the_response_starts(matcher_work):
    prompt = _words(30_000, seed=3) + "\nAnswer step by step.\n"
    response = "Each day 3 are left.\n#### 15"
    assert split_at_prompt(prompt + response, prompt) == len(prompt)  # exact
    truncated = prompt[12_345:]  # OpenRLHF keeps the last tokens of an over-long prompt
    assert split_at_prompt(truncated + response, prompt) == len(truncated)
    # decode(encode(prompt)) != prompt: doubled spaces near the start and near the end
    retok = prompt[:50].replace(" ", "  ") + prompt[50:-200] + prompt[-200:].replace(" the ", " the  ")
    assert split_at_prompt(retok + response, prompt) == len(retok)
    assert all(w <= WORK_BOUND for w in matcher_work)


def test_left_truncation_with_a_repeated_header():
    """The query's first characters occur several times in the prompt (a multi-turn header):
    the smallest cut whose tail the query starts with wins, as when every cut was tried."""
    turns = "".join(f"<|im_start|>user\nTurn {k}: {_words(300, k)}<|im_end|>\n" for k in range(6))
    prompt = turns + "<|im_start|>assistant\n"
    cut = turns.index("<|im_start|>user\nTurn 4")
    query = prompt[cut:] + "3 + 4 = 7.\n#### 7"
    assert split_at_prompt(query, prompt) == len(prompt) - cut
