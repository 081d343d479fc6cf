"""NeMo-Aligner's `reward_model` contract at the tensor level, in the training venv (the real
PyTriton transport is tested in the serving venv: tests/serving/test_pytriton_aligner.py), by
calling `infer` with the batched numpy arrays PyTriton passes: input names, dtypes and shapes, `rewards` float32
(B, 1); token input decoded with the actor's tokenizer, the same or a different one.

The service is built as `tools/serve_prm.py` builds it (`cli.build_service` on parsed
arguments: the actor tokenizer, its end strings and chat template, the marker's escapes).
With the actor's chat template and its assistant header as the marker, the reward of a
templated rollout equals `/score` with the raw question (was: the prompt was cut at the
marker before the question was extracted, the question stayed wrapped in the template, and
the aligner and /get_reward paths scored another text than /score)."""

import shlex
from pathlib import Path

import numpy as np
import pytest

from nemo_erprm.serving import aligner, cli
from nemo_erprm.serving.service import MarkerNotFound, RequestError
from tests.tiny_models import build_tokenizer

REPO = Path(__file__).resolve().parents[2]
MARKER = "\nASSISTANT:\n"
TEXTS = ["What is 3 + 4?" + MARKER + "3 + 4 = 7.\n#### 7", "What is 3 + 4?" + MARKER + "3 + 4 = 8 surely.\n#### 8"]
QUESTION = "What is 2+3?"
RESPONSE = "2 + 3 = 5.\nSo the answer is 5.\n#### 5"
NEMO_TEMPLATE = ("<extra_id_0>System\n\n{% for m in messages %}<extra_id_1>User\n{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<extra_id_1>Assistant\n{% endif %}")


def build_model(*argv: str) -> aligner.AlignerRewardModel:
    """The aligner model exactly as `serve_prm.py --protocol aligner <argv>` builds it."""
    service, actor = cli.build_service(cli.build_parser().parse_args(["--protocol", "aligner", *argv]))
    return aligner.AlignerRewardModel(service, actor)


@pytest.fixture(scope="module")
def model(tiny_prm):
    return build_model("--scorer", str(tiny_prm), "--response-marker", MARKER, "--actor-tokenizer", str(tiny_prm),
                       "--max-length", "512")


@pytest.fixture(scope="module")
def other_actor(tmp_path_factory):
    d = tmp_path_factory.mktemp("other_actor")
    build_tokenizer(vocab_size=300).save_pretrained(str(d))
    return d


def token_batch(tok, texts, extra_width=0):
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    tokens = np.full((len(ids), max(map(len, ids)) + extra_width), tok.pad_token_id or 0, dtype=np.int64)
    for i, row in enumerate(ids):  # right-padded, as the actor sends
        tokens[i, : len(row)] = row
    return tokens, np.array([[len(r)] for r in ids], dtype=np.int64)


def sentences(texts):
    return np.array([[t.encode()] for t in texts], dtype=object)


def test_declared_tensors_match_nemo_aligner():
    assert aligner.MODEL_NAME == "reward_model" and aligner.DEFAULT_PORT == 5555
    assert [(n, s, d, o) for n, s, d, o in aligner.INPUTS] == [
        ("sentences", (-1,), bytes, True), ("tokens", (-1,), np.int64, True), ("sequence_lengths", (-1,), np.int64, True)]
    assert aligner.OUTPUTS == (("rewards", (1,), np.float32),)


def test_sentences_input(model):
    out = model.infer(sentences=sentences(TEXTS))
    assert set(out) == {"rewards"} and out["rewards"].dtype == np.float32 and out["rewards"].shape == (2, 1)
    direct = [model.service.score_items([model.service.to_item(*model.service.split_text(t, "t"))])[0].reward
              for t in TEXTS]
    assert out["rewards"][:, 0] == pytest.approx(direct, abs=1e-6)


@pytest.mark.parametrize("actor", ["same", "different"])
def test_token_input_with_the_actors_tokenizer(tiny_prm, other_actor, actor):
    actor_dir = tiny_prm if actor == "same" else other_actor
    m = build_model("--scorer", str(tiny_prm), "--response-marker", MARKER, "--actor-tokenizer", str(actor_dir),
                    "--max-length", "512")
    if actor == "different":
        assert m.actor_tokenizer.get_vocab() != m.service.tokenizer.get_vocab()
    tokens, lengths = token_batch(m.actor_tokenizer, TEXTS, extra_width=3)
    out = m.infer(tokens=tokens, sequence_lengths=lengths)
    want = m.infer(sentences=sentences(TEXTS))
    assert out["rewards"] == pytest.approx(want["rewards"], abs=1e-6)


def test_contract_errors_name_the_input(tiny_prm, other_actor):
    no_actor = build_model("--scorer", str(tiny_prm), "--response-marker", MARKER, "--max-length", "512")
    with pytest.raises(RequestError, match="tokens"):
        no_actor.infer()
    with pytest.raises(RequestError, match="actor-tokenizer"):
        no_actor.infer(tokens=np.zeros((1, 4), dtype=np.int64), sequence_lengths=np.array([[4]], dtype=np.int64))
    m = build_model("--scorer", str(tiny_prm), "--response-marker", MARKER, "--actor-tokenizer", str(other_actor),
                    "--max-length", "512")
    with pytest.raises(RequestError, match="sequence_lengths"):  # not one length per row: the contract is broken
        m.infer(tokens=np.zeros((2, 4), dtype=np.int64), sequence_lengths=np.array([[1]], dtype=np.int64))


def test_one_bad_row_gets_the_fallback_and_the_others_their_reward(model):
    """A row without the marker, a length outside its row, the step tag in the response: each
    gets the fallback reward, counted by reason; the good rows score as alone (was: the whole
    call raised, and NeMo-Aligner's future.result() with it)."""
    texts = [TEXTS[0], "no marker in this text", TEXTS[1], "What?" + MARKER + "a step ки with the tag\n#### 1"]
    tokens, lengths = token_batch(model.actor_tokenizer, texts)
    tokens = np.vstack([tokens, tokens[:1]])
    lengths = np.vstack([lengths, [[tokens.shape[1] + 5]]])
    before = dict(model.service.unscorable)
    out = model.infer(tokens=tokens, sequence_lengths=lengths)["rewards"][:, 0]
    want = model.infer(sentences=sentences(TEXTS))["rewards"][:, 0]
    assert out[0] == pytest.approx(want[0], abs=1e-6) and out[2] == pytest.approx(want[1], abs=1e-6)
    assert out[1] == out[3] == out[4] == model.service.fallback == 0.0
    grew = {k: v - before.get(k, 0) for k, v in model.service.unscorable.items() if v != before.get(k, 0)}
    assert grew == {"no_marker": 1, "step_tag": 1, "bad_length": 1}


@pytest.fixture(scope="module")
def nemo_actor(tiny_prm, tmp_path_factory):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_prm))
    tok.chat_template = NEMO_TEMPLATE
    d = tmp_path_factory.mktemp("nemo_actor")
    tok.save_pretrained(str(d))
    return d


# the marker as README.md / conf/aligner/README.md write it, inside bash double quotes
@pytest.mark.parametrize("actor_kind,readme_marker", [("chatml", r"<|im_start|>assistant\n"),
                                                      ("nemo", r"<extra_id_1>Assistant\n")])
def test_templated_rollouts_score_as_score_with_the_raw_question(tiny_prm, nemo_actor, actor_kind, readme_marker):
    """A chat actor's rollout (its template around the question + response + eos): the aligner
    (tokens and sentences), OpenRLHF's /get_reward (with and without prompts) and /score given
    the templated prompt all score the raw question, and equal /score within 1e-6."""
    actor_dir = tiny_prm if actor_kind == "chatml" else nemo_actor
    (marker_arg,) = shlex.split(f'"{readme_marker}"')  # what bash passes: a backslash and an n
    m = build_model("--scorer", str(tiny_prm), "--actor-tokenizer", str(actor_dir), "--response-marker", marker_arg,
                    "--max-length", "512")
    service, tok = m.service, m.actor_tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith(service.config.response_marker)
    text = prompt + RESPONSE + tok.eos_token
    want = service.score_items([service.to_item(QUESTION, RESPONSE)])[0]  # POST /score {"prompt": q, "response": r}
    questions = {"marker": service.to_item(*service.split_text(text, "t"))[0],
                 "openrlhf": service.to_item(*service.split_query(text, prompt, "q"))[0],
                 "templated_prompt": service.to_item(prompt, RESPONSE + tok.eos_token)[0]}
    assert questions == dict.fromkeys(questions, QUESTION)
    tokens, lengths = token_batch(tok, [text] * 3, extra_width=2)
    for out in (m.infer(tokens=tokens, sequence_lengths=lengths), m.infer(sentences=sentences([text] * 3))):
        assert out["rewards"][:, 0] == pytest.approx([want.reward] * 3, abs=1e-6)
    assert want.unscorable is None and want.reward != service.fallback


def test_a_first_batch_without_the_marker_is_refused(tiny_prm):
    """A marker that occurs in no sample (here the README's marker with its backslash-n not
    understood) would answer every sample with the fallback: until the marker was found once,
    such a batch fails with an error naming the marker; afterwards one row without it is only
    that row's fallback."""
    m = build_model("--scorer", str(tiny_prm), "--response-marker", r"\\n<extra_id_1>Assistant\\n",
                    "--max-length", "512")
    assert m.service.config.response_marker == "\\n<extra_id_1>Assistant\\n"  # \\ is a literal backslash
    texts = ["Q?\n<extra_id_1>Assistant\n" + RESPONSE] * 2
    with pytest.raises(MarkerNotFound, match=r"the response marker '\\\\n<extra_id_1>Assistant\\\\n' occurs in none "
                                             r"of the 2 samples") as refused:
        m.infer(sentences=sentences(texts))
    assert refused.value.field == "sentences"
    assert m.service.monitor.snapshot()["samples"] == 0  # refused: nothing answered
    ok = build_model("--scorer", str(tiny_prm), "--response-marker", r"\n<extra_id_1>Assistant\n",
                     "--max-length", "512")
    assert ok.infer(sentences=sentences(texts))["rewards"][0, 0] != ok.service.fallback
    out = ok.infer(sentences=sentences(["no marker here"]))["rewards"][:, 0]
    assert out.tolist() == [ok.service.fallback]


@pytest.mark.parametrize("given,want", [(r"<|im_start|>assistant\n", "<|im_start|>assistant\n"),
                                        ("<|im_start|>assistant\n", "<|im_start|>assistant\n"),
                                        (r"a\tb\\n", "a\tb\\n"), (r"\r\n", "\r\n")])
def test_marker_escapes(given, want):
    assert cli.build_parser().parse_args(["--scorer", "x", "--response-marker", given]).response_marker == want


def test_unknown_marker_escape_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(["--scorer", "x", "--response-marker", r"<s>\x"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--response-marker" in err and "unknown escape '\\\\x'" in err, err


def _readme_commands():
    for doc in (REPO / "README.md", REPO / "conf" / "aligner" / "README.md"):
        text = doc.read_text().replace("\\\n", " ")  # join continued lines
        for line in text.splitlines():
            if "serve_prm.py" in line and "--response-marker" in line:
                yield doc.name, line.strip()


def test_readme_serve_commands_give_a_marker_the_actor_sends():
    """Every documented serve_prm.py command, split as bash splits it and parsed by the CLI:
    the marker ends with a real newline, as the chat template's assistant header does (was:
    a backslash and an n, which no rollout contains)."""
    commands = list(_readme_commands())
    assert len(commands) >= 2
    for doc, line in commands:
        argv = shlex.split(line[line.index("serve_prm.py") + len("serve_prm.py"):])
        marker = cli.build_parser().parse_args(argv).response_marker
        assert marker.endswith("\n") and "\\" not in marker, (doc, line, marker)


def test_startup_warns_when_the_actor_template_lacks_the_marker(tiny_prm, capsys):
    build_model("--scorer", str(tiny_prm), "--actor-tokenizer", str(tiny_prm), "--response-marker",
                r"<extra_id_1>Assistant\n", "--max-length", "512")
    err = capsys.readouterr().err
    assert "WARNING: the response marker '<extra_id_1>Assistant\\n' does not occur in the actor tokenizer's chat " \
           "template" in err, err
    build_model("--scorer", str(tiny_prm), "--actor-tokenizer", str(tiny_prm), "--response-marker",
                r"<|im_start|>assistant\n", "--max-length", "512")
    assert "WARNING" not in capsys.readouterr().err
