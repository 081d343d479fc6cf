"""The policy of the arithmetic experiment: a small Llama trained from scratch on reference solutions.

Why from scratch: SmolLM2-135M-Instruct solves 0 of 40 sampled attempts at these problems as
shipped, and fine-tuning it and then sampling ~20k rollouts on 2 CPU cores does not fit the
experiment's 2 h budget (its generation runs at ~14 tokens/s per stream). A Llama of a few
million parameters with a task tokenizer (digits split one per token, so arithmetic is
learnable) trains in minutes with transformers' ``Trainer`` and samples thousands of
completions per minute; trained briefly, it solves part of the problems, and its mistakes
(a wrong sum, a copied wrong operand, a skipped step) are genuine policy errors at every step.

On a GPU (``--device auto``, the default, picks it when one is visible) the same code trains
a far larger model in bf16 (conf/experiments/arith_gpu.yaml: 8 x 512, ~19M parameters), and
``--eval-every`` keeps the checkpoint with the best validation pass@1 at or below
``--max-pass-at-1`` (the last step's model beside it in ``POLICY/last``).

The training text is exactly what the labeling ``hf`` backend feeds the policy: the prompt of
:func:`nemo_erprm.labeling.backends.base.format_prompt` (default :class:`PromptConfig`, rendered
with the tokenizer's chat template), tokenized as :func:`~nemo_erprm.labeling.backends.plan.encode_prompt`
does, then the reference solution and ``<|im_end|>``; the loss covers the solution and the end
token only.

``python -m nemo_erprm.experiments.arith_policy --train DIR/train.jsonl --val DIR/val.jsonl --out POLICY``
trains, saves an HF folder (model + tokenizer) and measures pass@1 on validation problems
through the labeling backend; ``POLICY/policy_summary.json`` holds the settings and figures.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from nemo_erprm.errors import ConfigError

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "ки"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MAX_THREADS = 2  # the machine is shared: never more torch threads than this
LAST = "last"  # with --eval-every: <out>/last holds the last step's model (and tokenizer)


@dataclass
class ModelShape:
    """Size of the from-scratch Llama (intermediate defaults to 2 x hidden)."""

    layers: int = 4
    hidden: int = 128
    heads: int = 4
    kv_heads: int = 2
    intermediate: int | None = None
    max_positions: int = 512
    vocab_size: int = 512  # BPE target size (special tokens and the 256 byte symbols included)

    def __post_init__(self) -> None:
        for key in ("layers", "hidden", "heads", "kv_heads", "max_positions"):
            if getattr(self, key) < 1:
                raise ConfigError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(self, key)}")
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ConfigError(f"--hidden ({self.hidden}) must be a multiple of --heads ({self.heads}), "
                              f"and --heads of --kv-heads ({self.kv_heads})")
        if self.vocab_size < 300:
            raise ConfigError(f"--vocab-size must be >= 300 (256 byte symbols + specials + merges), got {self.vocab_size}")


@dataclass
class TrainSettings:
    # Measured (seed-0 data, 4000 train problems, 50 val problems x 4 samples, T=0.7): pass@1
    # 0.005 / 0.04 / 0.135 / 0.24 at steps 500 / 1000 / 1500 / 2000 of one 2000-step cosine run
    # (exact chain 0 / 0 / 0.06 / 0.13); the loss drops sharply after ~1000 steps (copying
    # the operands is learned late). lr 6e-3 learned slower than 3e-3.
    steps: int = 2000
    lr: float = 3e-3
    batch_size: int = 32
    warmup_steps: int = 50
    weight_decay: float = 0.01
    seed: int = 0
    threads: int = MAX_THREADS
    # auto: the GPU when one is visible (bf16 mixed precision there), else the CPU (fp32)
    device: str = "auto"
    # Every k steps (and at the last), pass@1 on the validation problems; the checkpoint kept is
    # the one with the best pass@1 at or below max_pass_at_1 (a policy that leaves a verifier
    # something to pick), or, when every one is above, the lowest. 0: the last step's model.
    # Why: seed 2 of the CPU sweep ended at pass@1 0.105 with seed 1's settings (0.72).
    eval_every: int = 0
    max_pass_at_1: float = 1.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.warmup_steps < 0:
            raise ConfigError("--steps and --batch-size must be >= 1 and --warmup-steps >= 0")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if not 1 <= self.threads <= MAX_THREADS:
            raise ConfigError(f"--threads must be in 1..{MAX_THREADS} (shared 2-core machine), got {self.threads}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.eval_every < 0:
            raise ConfigError(f"--eval-every must be >= 0 (0: no checkpoint selection), got {self.eval_every}")
        if not 0 < self.max_pass_at_1 <= 1:
            raise ConfigError(f"--max-pass-at-1 must be in (0, 1], got {self.max_pass_at_1}")

    def resolved_device(self) -> str:
        """``cpu`` or ``cuda`` (``--device cuda`` without a visible GPU is a config error)."""
        import torch

        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA GPU is visible")
        return "cuda" if self.device == "cuda" or (self.device == "auto" and torch.cuda.is_available()) else "cpu"


# ---------------------------------------------------------------------------------------------
# Tokenizer and training examples
# ---------------------------------------------------------------------------------------------

def build_tokenizer(texts: Sequence[str], vocab_size: int = 512):
    """Byte-level BPE trained on ``texts``; every digit its own token; ``ки`` one special token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # digits first: BPE never merges across pre-token boundaries, so "38" stays "3", "8"
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tokenizer_texts(problems: Sequence[dict[str, Any]], prompt_cfg: Any) -> list[str]:
    """What the tokenizer learns from: the user messages and the reference solutions."""
    texts = ["user\n", "assistant\n"]
    for p in problems:
        texts += [prompt_cfg.template.format(question=p["question"]), p["answer"]]
    return texts


def build_examples(tokenizer: Any, problems: Sequence[dict[str, Any]], prompt_cfg: Any = None) -> list[dict[str, list[int]]]:
    """``input_ids`` = prompt + solution + eos as the labeling backend encodes them; ``labels``
    the same with every prompt token set to -100 (loss on the solution and eos only)."""
    from nemo_erprm.labeling.backends.base import PromptConfig, format_prompt, uses_chat_template
    from nemo_erprm.labeling.backends.plan import encode_prompt

    prompt_cfg = prompt_cfg or PromptConfig()
    chat = uses_chat_template(tokenizer, prompt_cfg)
    examples = []
    for p in problems:
        prompt = format_prompt(tokenizer, p["question"], prompt_cfg)
        prompt_ids = list(encode_prompt(tokenizer, prompt, chat))
        ids = list(encode_prompt(tokenizer, prompt + p["answer"], chat)) + [tokenizer.eos_token_id]
        if ids[: len(prompt_ids)] != prompt_ids:  # the solution must not change the prompt's tokens
            raise ValueError(f"problem {p.get('id')}: the prompt's tokens change when the solution follows")
        examples.append({"input_ids": ids, "labels": [-100] * len(prompt_ids) + ids[len(prompt_ids):]})
    return examples


class _Collator:
    """Right-pads a batch to its longest row: pad id for inputs, -100 for labels."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        ids = [r["input_ids"] + [self.pad_id] * (width - len(r["input_ids"])) for r in rows]
        labels = [r["labels"] + [-100] * (width - len(r["labels"])) for r in rows]
        mask = [[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows]
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------

def build_model(tokenizer: Any, shape: ModelShape, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=shape.hidden, intermediate_size=shape.intermediate or 2 * shape.hidden,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        max_position_embeddings=shape.max_positions, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg)


def choose_checkpoint(measured: Sequence[dict[str, Any]], max_pass_at_1: float) -> dict[str, Any]:
    """The checkpoint with the best pass@1 at or below ``max_pass_at_1`` (the later one on a
    tie); when every one is above, the lowest."""
    within = [m for m in measured if m["pass@1"] <= max_pass_at_1]
    if within:
        return max(within, key=lambda m: (m["pass@1"], m["step"]))
    return min(measured, key=lambda m: (m["pass@1"], -m["step"]))


class _KeepBestPassAt1:
    """Every ``every`` optimizer steps (and after the last), save the model and tokenizer,
    measure pass@1 on validation problems, and keep only the chosen checkpoint's folder."""

    def __init__(self, root: Path, tokenizer: Any, every: int, measure: Callable[[Path], dict[str, Any]],
                 max_pass_at_1: float):
        self.root, self.tokenizer, self.every, self.measure = root, tokenizer, every, measure
        self.max_pass_at_1 = max_pass_at_1
        self.measured: list[dict[str, Any]] = []

    def evaluate(self, step: int, model: Any) -> None:
        import shutil

        if any(m["step"] == step for m in self.measured):
            return
        folder = self.root / f"step-{step}"
        was_training = model.training
        model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        self.measured.append({"step": step, "dir": folder, **self.measure(folder)})
        model.train(was_training)
        keep = choose_checkpoint(self.measured, self.max_pass_at_1)["dir"]
        for m in self.measured:
            if m["dir"] != keep and m["dir"].exists():
                shutil.rmtree(m["dir"])
        print(f"arith_policy: step {step}: pass@1 {self.measured[-1]['pass@1']:.3f} on validation; keeping "
              f"{keep.name}", flush=True)

    def callback(self) -> Any:
        from transformers import TrainerCallback

        keeper = self

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kwargs):
                if state.global_step % keeper.every == 0:
                    keeper.evaluate(state.global_step, model)

        return Callback()


def train_policy(train_problems: Sequence[dict[str, Any]], out_dir: Path, shape: ModelShape,
                 settings: TrainSettings, measure: Optional[Callable[[Path], dict[str, Any]]] = None) -> dict[str, Any]:
    """Train on the reference solutions and save model + tokenizer to ``out_dir``: the last
    step's model, or with ``settings.eval_every`` (and ``measure``: a folder -> its pass@1
    figures) the checkpoint :func:`choose_checkpoint` picks, with its figures in the summary."""
    import shutil

    import torch
    from transformers import Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    from nemo_erprm.labeling.backends.base import PromptConfig

    torch.set_num_threads(settings.threads)
    prompt_cfg = PromptConfig()
    tokenizer = build_tokenizer(tokenizer_texts(train_problems, prompt_cfg), shape.vocab_size)
    examples = build_examples(tokenizer, train_problems, prompt_cfg)
    longest = max(len(e["input_ids"]) for e in examples)
    if longest > shape.max_positions:
        raise ConfigError(f"--max-positions {shape.max_positions} is below the longest training text ({longest} tokens)")
    model = build_model(tokenizer, shape, settings.seed)
    device = settings.resolved_device()
    hf_logging.set_verbosity_error()
    keeper = None
    with tempfile.TemporaryDirectory(prefix="arith-policy-trainer-") as trainer_dir:
        if settings.eval_every and measure is not None:
            keeper = _KeepBestPassAt1(Path(trainer_dir) / "kept", tokenizer, settings.eval_every, measure,
                                      settings.max_pass_at_1)
        args = TrainingArguments(
            output_dir=trainer_dir, use_cpu=device == "cpu", bf16=device == "cuda", report_to=[], seed=settings.seed,
            data_seed=settings.seed,
            learning_rate=settings.lr, max_steps=settings.steps, per_device_train_batch_size=settings.batch_size,
            warmup_steps=settings.warmup_steps, lr_scheduler_type="cosine", weight_decay=settings.weight_decay,
            save_strategy="no", logging_steps=max(settings.steps // 10, 1), disable_tqdm=True,
            dataloader_num_workers=0, remove_unused_columns=False,
        )
        trainer = Trainer(model=model, args=args, train_dataset=examples,
                          data_collator=_Collator(tokenizer.pad_token_id),
                          callbacks=[keeper.callback()] if keeper else None)
        start = time.time()
        result = trainer.train()
        train_time = time.time() - start
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        chosen: dict[str, Any] = {}
        if keeper is None:
            model.save_pretrained(out_dir)
            tokenizer.save_pretrained(out_dir)
        else:
            keeper.evaluate(trainer.state.global_step, model)  # the last step is always a candidate
            chosen = choose_checkpoint(keeper.measured, settings.max_pass_at_1)
            for f in chosen["dir"].iterdir():
                shutil.move(str(f), out_dir / f.name)
            # the last step's model too: the longest-trained one, a PRM backbone that knows the
            # arithmetic better than the kept policy (the η-sweep's grid init `policy_last`)
            model.save_pretrained(out_dir / LAST)
            tokenizer.save_pretrained(out_dir / LAST)
    tokens = sum(len(e["input_ids"]) for e in examples)
    selection = {}
    if keeper is not None:
        selection = {
            "checkpoints": [{k: v for k, v in m.items() if k in ("step", "pass@1", "pass@1_exact")}
                            for m in keeper.measured],
            "chosen_step": chosen["step"], "last_step": keeper.measured[-1]["step"],
            "last_pass@1": keeper.measured[-1]["pass@1"],
            "selection_rule": f"best validation pass@1 <= {settings.max_pass_at_1:g} (the lowest if every one is above)",
            **{k: v for k, v in chosen.items() if k not in ("step", "dir")},
        }
    return {
        "device": device, "precision": "bf16-mixed" if device == "cuda" else "fp32",
        **selection,
        "train_time_s": round(train_time, 1),
        "train_loss": round(result.training_loss, 4),
        "final_logged_loss": losses[-1] if losses else None,
        "params": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "train_problems": len(examples),
        "epochs": round(settings.steps * settings.batch_size / len(examples), 2),
        "mean_tokens_per_example": round(tokens / len(examples), 1),
        "max_tokens_per_example": longest,
    }


# ---------------------------------------------------------------------------------------------
# Measurement through the labeling backend
# ---------------------------------------------------------------------------------------------

def measure_pass_at_1(policy_dir: Path, problems: Sequence[dict[str, Any]], samples: int, temperature: float,
                      seed: int, max_new_tokens: int = 128, batch_size: int = 64, device: str = "cpu") -> dict[str, Any]:
    """Sample ``samples`` solutions per problem with the labeling ``hf`` backend and grade them.

    pass@1 = mean over problems of the fraction of samples whose final answer the project's
    grader accepts; ``exact`` counts only samples whose every step is right. The first-error
    histogram (exact checker) is over the samples with a wrong step.
    """
    from nemo_erprm.experiments.arith_task import answer_correct, first_wrong_step, segment
    from nemo_erprm.labeling.backends import BackendConfig, PromptConfig, SamplingConfig, build_backend

    backend = build_backend(
        BackendConfig(name="hf", model=str(policy_dir), device=device, dtype="float32" if device == "cpu" else "auto",
                      batch_size=batch_size),
        SamplingConfig(n=samples, temperature=temperature, max_new_tokens=max_new_tokens), PromptConfig())
    prompts = [backend.format_prompt(p["question"]) for p in problems]
    start = time.time()
    outputs = backend.generate(prompts, samples, seed)
    gen_time = time.time() - start
    answer_rates, exact_rates, first_errors = [], [], Counter()
    lucky = 0
    for problem, texts in zip(problems, outputs):
        answers = [answer_correct(problem, t) for t in texts]
        firsts = [first_wrong_step(problem, segment(t)) for t in texts]
        answer_rates.append(sum(answers) / len(texts))
        exact_rates.append(sum(f == -1 for f in firsts) / len(texts))
        first_errors.update(f for f in firsts if f != -1)
        lucky += sum(a and f != -1 for a, f in zip(answers, firsts))
    n = len(problems) * samples
    return {
        "eval_problems": len(problems),
        "samples_per_problem": samples,
        "temperature": temperature,
        "pass@1": round(sum(answer_rates) / len(problems), 4),
        "pass@1_exact": round(sum(exact_rates) / len(problems), 4),
        "right_answer_wrong_step": lucky,
        "problems_never_solved": sum(r == 0 for r in answer_rates),
        "first_error_histogram": {str(k): first_errors[k] for k in sorted(first_errors)},
        "generation_time_s": round(gen_time, 1),
        "completions_per_s": round(n / max(gen_time, 1e-9), 1),
    }


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def _read_problems(path: str, flag: str) -> list[dict[str, Any]]:
    from nemo_erprm.jsonl import read_jsonl

    problems = read_jsonl(path)
    if not problems:
        raise ConfigError(f"{flag} {path}: no problems")
    missing = [k for k in ("question", "answer", "ops", "values") if k not in problems[0]]
    if missing:
        raise ConfigError(f"{flag} {path}: not an arith_task file (missing {missing})")
    return problems


def run(args: Any) -> dict[str, Any]:
    from nemo_erprm.runtime.outdir import atomic_output_dir, check_output_dir

    shape = ModelShape(args.layers, args.hidden, args.heads, args.kv_heads, args.intermediate, args.max_positions,
                       args.vocab_size)
    settings = TrainSettings(args.steps, args.lr, args.batch_size, args.warmup_steps, args.weight_decay, args.seed,
                             args.threads, args.device, args.eval_every, args.max_pass_at_1)
    if args.eval_problems < 0 or args.eval_samples < 1 or args.temperature < 0:
        raise ConfigError("--eval-problems must be >= 0, --eval-samples >= 1 and --temperature >= 0")
    if args.eval_every and not args.eval_problems:
        raise ConfigError("--eval-every needs validation problems (--eval-problems > 0)")
    if Path(args.out).exists():  # fail before training, not after; a policy is never replaced
        raise ConfigError(f"--out {args.out}: already exists; choose a new folder")
    check_output_dir(args.out, "--out", None)  # parent writable
    train = _read_problems(args.train, "--train")
    val = _read_problems(args.val, "--val")[: args.eval_problems] if args.eval_problems else []
    summary: dict[str, Any] = {"train_file": str(args.train), "val_file": str(args.val), **asdict(settings),
                               "model": asdict(shape), "temperature": args.temperature,
                               "eval_problems": len(val), "samples_per_problem": args.eval_samples}
    device = settings.resolved_device()

    def measure(folder: Path) -> dict[str, Any]:
        import torch

        torch.set_num_threads(settings.threads)
        return measure_pass_at_1(folder, val, args.eval_samples, args.temperature, args.seed, args.max_new_tokens,
                                 args.gen_batch_size, device)

    with atomic_output_dir(args.out) as tmp:  # a killed run leaves no half policy at --out
        summary.update(train_policy(train, tmp, shape, settings, measure if val else None))
        if val and not settings.eval_every:
            summary.update(measure(tmp))
        (tmp / "policy_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    from nemo_erprm.errors import ArgumentParser, run_reporting_errors

    shape, settings = ModelShape(), TrainSettings()
    parser = ArgumentParser(prog="arith_policy", description=__doc__.split("\n")[0])
    parser.add_argument("--train", required=True, help="arith_task train.jsonl")
    parser.add_argument("--val", required=True, help="arith_task val.jsonl (pass@1 is measured on it)")
    parser.add_argument("--out", required=True, help="new folder for the HF policy (refused if it exists)")
    parser.add_argument("--steps", type=int, default=settings.steps)
    parser.add_argument("--lr", type=float, default=settings.lr)
    parser.add_argument("--batch-size", type=int, default=settings.batch_size)
    parser.add_argument("--warmup-steps", type=int, default=settings.warmup_steps)
    parser.add_argument("--weight-decay", type=float, default=settings.weight_decay)
    parser.add_argument("--seed", type=int, default=settings.seed)
    parser.add_argument("--threads", type=int, default=settings.threads)
    parser.add_argument("--device", default=settings.device, choices=["auto", "cpu", "cuda"],
                        help="auto: the GPU when visible (bf16 mixed precision), else the CPU")
    parser.add_argument("--eval-every", type=int, default=settings.eval_every,
                        help="measure validation pass@1 every k steps and keep the best checkpoint (0: the last)")
    parser.add_argument("--max-pass-at-1", type=float, default=settings.max_pass_at_1,
                        help="with --eval-every: keep the best checkpoint at or below this pass@1")
    parser.add_argument("--layers", type=int, default=shape.layers)
    parser.add_argument("--hidden", type=int, default=shape.hidden)
    parser.add_argument("--heads", type=int, default=shape.heads)
    parser.add_argument("--kv-heads", type=int, default=shape.kv_heads)
    parser.add_argument("--intermediate", type=int, default=None, help="default: 2 x --hidden")
    parser.add_argument("--max-positions", type=int, default=shape.max_positions)
    parser.add_argument("--vocab-size", type=int, default=shape.vocab_size)
    parser.add_argument("--eval-problems", type=int, default=100, help="validation problems for pass@1 (0: skip)")
    parser.add_argument("--eval-samples", type=int, default=4, help="samples per validation problem")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--gen-batch-size", type=int, default=64)
    args = parser.parse_args(argv)

    def body() -> int:
        summary = run(args)
        keys = ("train_time_s", "params", "device", "chosen_step", "pass@1", "pass@1_exact", "first_error_histogram",
                "completions_per_s")
        print(json.dumps({"out": str(args.out), **{k: summary[k] for k in keys if k in summary}}))
        return 0

    return run_reporting_errors(body)


if __name__ == "__main__":
    sys.exit(main())
