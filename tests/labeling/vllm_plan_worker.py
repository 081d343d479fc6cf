"""Runs in .venv-vllm (tests/labeling/test_vllm_real.py): one problem labeled through the real
`VLLMBackend` on vLLM's CPU build, recording what the engine received and returned.

    python vllm_plan_worker.py --problem P.json --out OUT.json key=value ...

OUT.json: the records and stats; per request of the plan, the prompt ids sent, the prompt ids
vLLM reports it ran (``RequestOutput.prompt_token_ids``), the `SamplingParams` fields and every
completion (index, text, finish_reason, stop_reason, token count); per request with n > 1,
whether vLLM's completion j equals a request of n=1 with seed s + j; and for bad and boundary
sampling settings, whether vLLM's own `SamplingParams` refuses them.
"""

from __future__ import annotations

import argparse
import json


def sampling_limits() -> list[dict]:
    """vLLM's own verdict on the settings our SamplingConfig refuses or accepts."""
    from vllm import SamplingParams

    cases = [
        {"temperature": 2.5}, {"temperature": 2.0}, {"temperature": 0.01}, {"temperature": -1.0},
        {"temperature": float("nan")}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_p": 1.0}, {"top_p": float("nan")},
        {"top_p": 1e-6},
        {"temperature": 0.0, "n": 2}, {"temperature": 0.0, "n": 1}, {"n": 0}, {"max_tokens": 0},
    ]
    out = []
    for kw in cases:
        try:
            SamplingParams(**kw)
            out.append({"kwargs": kw, "refused": None})
        except Exception as e:  # vLLM raises ValueError (VLLMValidationError)
            out.append({"kwargs": kw, "refused": f"{type(e).__name__}: {e}"})
    return out


def main() -> None:
    from nemo_erprm.labeling.backends import build_backend
    from nemo_erprm.labeling.config import load_label_config
    from nemo_erprm.labeling.problems import Problem
    from nemo_erprm.labeling.rollouts import label_problem

    p = argparse.ArgumentParser()
    p.add_argument("--problem", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    problem = Problem(**json.loads(open(args.problem).read()))
    cfg = load_label_config(None, args.overrides)
    backend = build_backend(cfg.backend, cfg.sampling, cfg.prompt)
    llm, seen = backend.llm, []
    generate = llm.generate

    def recording_generate(prompts, params, use_tqdm=False):
        results = generate(prompts, params, use_tqdm=use_tqdm)
        for prompt, sp, r in zip(prompts, params, results):
            seen.append({
                "sent": list(prompt["prompt_token_ids"]), "ran": list(r.prompt_token_ids),
                "n": sp.n, "seed": sp.seed, "max_tokens": sp.max_tokens, "stop": sp.stop,
                "stop_token_ids": sorted(sp.stop_token_ids or []), "temperature": sp.temperature, "top_p": sp.top_p,
                "outputs": [{"index": c.index, "text": c.text, "finish_reason": c.finish_reason,
                             "stop_reason": c.stop_reason, "tokens": len(c.token_ids)} for c in r.outputs],
            })
        return results

    llm.generate = recording_generate
    records, stats = label_problem(problem, 0, cfg, backend)
    llm.generate = generate

    # vLLM's parallel-sampling rule, run for real: completion j of (seed s, n) == (seed s + j, n = 1)
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    singles = [(req, j) for req in seen for j in range(req["n"])]
    alone = generate([TokensPrompt(prompt_token_ids=req["sent"]) for req, _ in singles],
                     [SamplingParams(n=1, seed=req["seed"] + j, temperature=req["temperature"], top_p=req["top_p"],
                                     max_tokens=req["max_tokens"], stop=req["stop"],
                                     stop_token_ids=req["stop_token_ids"] or None) for req, j in singles],
                     use_tqdm=False)
    seed_rule = [sorted(req["outputs"], key=lambda c: c["index"])[j]["text"] == r.outputs[0].text
                 for (req, j), r in zip(singles, alone)]
    json.dump({"records": records, "completions": stats.completions, "truncated": stats.truncated,
               "requests": seen, "seed_rule": seed_rule, "stop_token_ids": backend.stop_token_ids,
               "describe": backend.describe(), "sampling_limits": sampling_limits()},
              open(args.out, "w"))


if __name__ == "__main__":
    main()
