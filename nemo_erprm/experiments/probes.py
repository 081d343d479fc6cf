"""Step-checking probes of the η-sweep: where the PRM's missing skill is, and whether it is
in the backbone at all. They reproduce the diagnostics of
``docs/experiments/arith_cpu/FINDINGS.md``; run them on **validation** candidates only, so
that no design choice reads the test split::

    python -m nemo_erprm.experiments.probes corruption --scorer CKPT --candidates VAL.jsonl
    python -m nemo_erprm.experiments.probes likelihood --policy HF_DIR --candidates VAL.jsonl

- ``corruption`` (of a PRM, or of a policy's own likelihood with ``--policy``): for one
  answer-correct candidate per problem, the result of one equation
  step (``a op b = c``) is moved by a small offset (±1, ±2, ±10). The probe is P(the PRM's
  score of the step as written > its score of the corrupted step, after the same prefix),
  ties ½. A PRM that checks the arithmetic is near 1; one that reads only the question and
  the step position is at 0.5.
- ``likelihood``: the policy's own least likely token of each step (log-probability, in the
  policy's exact prompt layout) used as the step score, and the divergence-step AUC of those
  scores (:func:`nemo_erprm.experiments.sweep_report.divergence_auc`). Above 0.5, the
  information a PRM needs is in the backbone's next-token predictions.

Each prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from nemo_erprm.errors import ConfigError
from nemo_erprm.experiments.arith_task import EQUATION

OFFSETS = (-10, -2, -1, 1, 2, 10)

Item = tuple[str, list[str]]


def corrupt_result(step: str, rng: random.Random) -> Optional[str]:
    """``step`` with the result of its equation moved by a nonzero offset from
    :data:`OFFSETS` (kept non-negative), or None when the step is not one equation line
    (the task's own grammar, :data:`~nemo_erprm.experiments.arith_task.EQUATION`)."""
    match = EQUATION.match(step)
    if not match:
        return None
    value = int(match.group(4))
    offset = rng.choice(OFFSETS)
    if value + offset < 0:
        offset = -offset
    return f"{step[:match.start(4)]}{value + offset}{step[match.end(4):]}"


def corruption_pairs(candidates: Path, seed: int = 0) -> list[tuple[Item, Item]]:
    """One (as written, corrupted) pair per problem: the first answer-correct candidate with an
    equation step; one of its equation steps chosen at random is corrupted. Both items end
    at that step, so the PRM's last step score is the one compared."""
    from nemo_erprm.eval.candidates import load_candidates

    rng = random.Random(seed)
    problems, _ = load_candidates(candidates)
    pairs = []
    for problem in problems:
        for cand in problem.candidates:
            steps = [s.strip() for s in cand.steps]
            equations = [k for k, s in enumerate(steps) if EQUATION.match(s)]
            if not cand.correct or not equations:
                continue
            k = rng.choice(equations)
            bad = corrupt_result(steps[k], rng)
            pairs.append(((problem.question, steps[: k + 1]), (problem.question, steps[:k] + [bad])))
            break
    return pairs


def corruption_probe(score_batch: Callable[[Sequence[Item]], list[list[float]]],
                     pairs: Sequence[tuple[Item, Item]]) -> dict[str, Any]:
    """P(score of the written step > score of the corrupted one), ties ½, and the mean scores."""
    if not pairs:
        raise ConfigError("no answer-correct candidate with an equation step: nothing to corrupt")
    right = [s[-1] for s in score_batch([p[0] for p in pairs])]
    wrong = [s[-1] for s in score_batch([p[1] for p in pairs])]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(right, wrong))
    return {"probe": "corruption", "pairs": len(pairs), "p_right_above_corrupted": wins / len(pairs),
            "mean_score_right": sum(right) / len(right), "mean_score_corrupted": sum(wrong) / len(wrong)}


class PolicyLikelihood:
    """Step scores from a causal LM's own predictions: for each step, the smallest
    log-probability of its tokens (the trailing newline included) after the policy's prompt."""

    def __init__(self, policy_dir: str | Path, threads: int = 2):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from nemo_erprm.labeling.backends.base import PromptConfig, uses_chat_template

        torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(str(policy_dir))
        self.model = AutoModelForCausalLM.from_pretrained(str(policy_dir)).eval()
        self.prompt_cfg = PromptConfig()
        self.chat = uses_chat_template(self.tokenizer, self.prompt_cfg)

    def step_tokens(self, question: str, steps: Sequence[str]) -> list[list[tuple[str, float]]]:
        """Each step's tokens (text, log-probability given everything before), the newline
        that ends a step included; steps are joined by newlines as the policy writes them."""
        import torch

        from nemo_erprm.labeling.backends.base import format_prompt
        from nemo_erprm.labeling.backends.plan import encode_prompt

        prompt = format_prompt(self.tokenizer, question, self.prompt_cfg)
        ids = list(encode_prompt(self.tokenizer, prompt + "\n".join(steps), self.chat))
        bounds = []
        for k in range(len(steps) + 1):  # each prefix must encode as a prefix of the whole
            prefix = prompt + "\n".join(steps[:k]) + ("\n" if 0 < k < len(steps) else "")
            prefix_ids = list(encode_prompt(self.tokenizer, prefix, self.chat))
            if ids[: len(prefix_ids)] != prefix_ids:
                raise ValueError(f"step {k} of {question[:40]!r}... does not end on a token boundary")
            bounds.append(len(prefix_ids))
        if bounds[-1] != len(ids):
            raise ValueError(f"the steps of {question[:40]!r}... do not cover the solution's tokens")
        with torch.no_grad():
            logp = torch.log_softmax(self.model(torch.tensor([ids])).logits[0].float(), dim=-1)
        return [[(self.tokenizer.decode([ids[j]]), logp[j - 1, ids[j]].item()) for j in range(a, b)]
                for a, b in zip(bounds, bounds[1:])]

    def step_scores(self, question: str, steps: Sequence[str]) -> list[float]:
        """The least likely token of each step (0.0 for a step with no tokens)."""
        return [min((lp for _, lp in tokens), default=0.0) for tokens in self.step_tokens(question, steps)]


def likelihood_probe(policy_dir: Path, candidates: Path, threads: int = 2) -> dict[str, Any]:
    """Divergence-step AUC of the policy's own step likelihood on a candidates file."""
    from nemo_erprm.eval.candidates import load_candidates
    from nemo_erprm.experiments.sweep_report import candidate_steps, divergence_auc_records

    lik = PolicyLikelihood(policy_dir, threads)
    problems, _ = load_candidates(candidates)
    steps = candidate_steps(candidates)
    records = []
    for problem in problems:
        cache: dict[tuple[str, ...], list[float]] = {}
        rows = []
        for cand in problem.candidates:  # ``source``: the candidate's index in the file
            key = tuple(steps[problem.id][int(cand.source)])
            if key not in cache:
                cache[key] = lik.step_scores(problem.question, list(key))
            rows.append({"source": cand.source, "correct": bool(cand.correct), "step_scores": cache[key]})
        records.append({"id": problem.id, "candidates": rows})
    return {"probe": "likelihood", "policy": str(policy_dir), "problems": len(records),
            "divergence_auc": divergence_auc_records(steps, records)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nemo_erprm.experiments.probes", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="probe", required=True)
    c = sub.add_parser("corruption", help="does the PRM's step score react to a wrong result?")
    who = c.add_mutually_exclusive_group(required=True)
    who.add_argument("--scorer", help="PRM checkpoint (weights/ + context/) or HF export")
    who.add_argument("--policy", type=Path, help="HF policy directory: its own step likelihood as the score")
    c.add_argument("--candidates", required=True, type=Path, help="candidates file (use the validation split)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", type=Path, help="also write the JSON object to this file (written whole or not at all)")
    lk = sub.add_parser("likelihood", help="does the policy's own likelihood check steps?")
    lk.add_argument("--policy", required=True, type=Path, help="HF policy directory")
    lk.add_argument("--candidates", required=True, type=Path, help="candidates file (use the validation split)")
    lk.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        if args.probe == "corruption":
            pairs = corruption_pairs(args.candidates, args.seed)  # a bad file fails before a model loads
            if args.scorer:
                from nemo_erprm.eval.scorers import load_scorer

                score_batch = load_scorer(args.scorer).score_batch
            else:
                lik = PolicyLikelihood(args.policy)
                score_batch = lambda items: [lik.step_scores(q, steps) for q, steps in items]  # noqa: E731
            result = corruption_probe(score_batch, pairs)
            result["scorer"] = args.scorer or f"likelihood:{args.policy}"
        else:
            result = likelihood_probe(args.policy, args.candidates, args.threads)
    except (FileNotFoundError, ValueError) as err:  # ConfigError and the loaders' input errors
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    if getattr(args, "out", None):
        from nemo_erprm.jsonl import write_jsonl_atomic

        write_jsonl_atomic(args.out, [result])  # one JSON line: json.loads reads the file
    return 0


if __name__ == "__main__":
    sys.exit(main())
