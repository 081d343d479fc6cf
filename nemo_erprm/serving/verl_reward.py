"""verl custom reward function backed by the PRM service.

In a verl config::

    custom_reward_function:
      path: /path/to/nemo-erprm/nemo_erprm/serving/verl_reward.py
      name: compute_score

with ``ERPRM_REWARD_URL`` (default ``http://127.0.0.1:8000``) and optional ``ERPRM_REWARD_TOKEN``
in the environment of verl's reward workers. verl passes the decoded response as
``solution_str``; the question comes from ``extra_info["question"]`` (or ``"prompt"``), which
the data preparation step puts there. ``ground_truth`` is unused: the PRM judges the steps.
"""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any, Optional


def compute_score(data_source: str, solution_str: str, ground_truth: Any = None,
                  extra_info: Optional[dict] = None, timeout_s: float = 60.0) -> float:
    info = extra_info or {}
    question = info.get("question") or info.get("prompt")
    if not question:
        raise ValueError("extra_info must carry the question ('question' or 'prompt') for the PRM")
    url = os.environ.get("ERPRM_REWARD_URL", "http://127.0.0.1:8000").rstrip("/") + "/score"
    headers = {"Content-Type": "application/json"}
    if os.environ.get("ERPRM_REWARD_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['ERPRM_REWARD_TOKEN']}"
    body = json.dumps({"prompt": question, "response": solution_str}).encode()
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        return float(json.loads(resp.read())["reward"])
