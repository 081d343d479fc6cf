"""`tools/best_of_n.py --generate --prompt-config LABEL_YAML`: candidates are sampled with the
labeling config's prompt (MetaMath-Mistral's Alpaca format, not the default chat/plain prompt),
so Best-of-N candidates come from the same prompt as the PRM's training rollouts."""

import pytest

import nemo_erprm.labeling.backends as backends
from nemo_erprm.errors import ConfigError
from nemo_erprm.eval.cli import build_parser, check_args, generate_candidates
from nemo_erprm.jsonl import read_jsonl


class _Recorder:
    def __init__(self, prompt_cfg):
        self.prompt_cfg, self.prompts = prompt_cfg, []

    def format_prompt(self, question):
        return self.prompt_cfg.plain_format.format(user=self.prompt_cfg.template.format(question=question))

    def generate(self, prompts, n, seed):
        self.prompts += prompts
        return [["1 + 1 = 2\n#### 2"] * n for _ in prompts]

    def close(self):
        pass


@pytest.mark.parametrize("with_config", [True, False])
def test_generate_uses_the_labeling_prompt(tmp_path, monkeypatch, with_config):
    made = []
    monkeypatch.setattr(backends, "build_backend", lambda b, s, p: made.append(_Recorder(p)) or made[-1])
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"question": "What is 1 + 1?", "answer": "1 + 1 = 2\\n#### 2"}\n')
    argv = ["--generate", "2", "--problems", str(problems), "--scorer", "none", "--out", str(tmp_path / "o"),
            "--no-progress"] + (["--prompt-config", "conf/label_gsm8k_mistral.yaml"] if with_config else [])
    args = build_parser().parse_args(argv)
    (tmp_path / "o").mkdir()
    path = generate_candidates(args, tmp_path / "o")
    prompt = made[0].prompts[0]
    if with_config:
        assert prompt.startswith("Below is an instruction") and "### Response: Let's think step by step." in prompt
    else:
        assert "Below is an instruction" not in prompt and "What is 1 + 1?" in prompt
    assert len(read_jsonl(path)[0]["candidates"]) == 2


def test_missing_prompt_config_is_refused(tmp_path):
    args = build_parser().parse_args(["--generate", "2", "--problems", "x", "--scorer", "none", "--out",
                                      str(tmp_path / "o"), "--prompt-config", str(tmp_path / "nope.yaml")])
    with pytest.raises(ConfigError, match="--prompt-config"):
        check_args(args)
