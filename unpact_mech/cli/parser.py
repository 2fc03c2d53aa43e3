"""The ``unpact`` argument parser: one sub-parser per command, option groups declared once."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from unpact_mech.core.options import (
    MAX_RELEARN_STEPS,
    MAX_STEPS,
    choice_list,
    device,
    device_map,
    executor,
    factor_list,
    int_list,
    max_memory,
    nonneg_int,
    per_split,
    positive_float,
    positive_int,
    route,
    shard,
    unit_float,
)
from unpact_mech.probes import FORMATS, SPLITS
from unpact_mech.probes.keytokens import ALPHA, BETA

POS = positive_int()


def _keytoken_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alpha", type=unit_float(hi_open=True), default=ALPHA,
                   help=f"eq.4 threshold on normalised contribution, in [0, 1) ({ALPHA})")
    p.add_argument("--beta", type=POS, default=BETA, help=f"eq.3: keep all positives if fewer than beta ({BETA})")
    p.add_argument("--max-keytokens", type=POS, default=None, help="cap N on KeyTokens per probe (none)")
    p.add_argument("--format", default="auto", choices=list(FORMATS), help="prompt format")


def _uses_route(name: str) -> Callable[[argparse.Namespace], bool]:
    return lambda a: name in a.routes


def _prompt_args(p: argparse.ArgumentParser, cmd: str) -> None:
    """One probe from the command line, or a probe file: never both."""
    p.add_argument("--prompt", help="the question")
    p.add_argument("--answer", help="the answer whose log-prob is attributed")
    p.add_argument("--probes", help="JSON-lines probe file or benchmark name (instead of --prompt/--answer)")
    for flag in ("--prompt", "--answer"):
        route(p, cmd, flag, lambda a: a.probes is None, "runs without --probes (give --probes or --prompt/--answer)")


def _model_args(p: argparse.ArgumentParser) -> None:
    """How every command that loads a model loads it (declared once)."""
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="weight dtype (bfloat16/float16 halve memory; scores are float64 either way)")
    p.add_argument("--device", default=None, type=device(), help="e.g. cuda:0 (default: the CPU)")
    p.add_argument("--device-map", default=None, type=device_map(),
                   help="accelerate placement for a model larger than one device: auto, balanced, sequential, a "
                   "device, or a JSON object of module -> device (instead of --device)")
    p.add_argument("--max-memory", default=None, type=max_memory(),
                   help="with --device-map: the most each device may hold, e.g. 0=20GiB,1=20GiB,cpu=60GiB")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run Python code shipped with the model (RISK: it runs with your permissions)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept pickled .bin weights (RISK: unpickling can run code); safetensors needs no flag")
    p.add_argument("--system-prompt", metavar="TEXT", help="a system turn before every chat prompt, as the model's "
                   "config gives it (open-unlearning's Llama-3.2/3.1-Instruct: 'You are a helpful assistant.')")
    p.add_argument("--date-string", metavar="TEXT", help="the chat template's date_string (open-unlearning's "
                   "Llama-3 configs: '10 Apr 2025')")
    p.add_argument("--plan", action="store_true", help="print what the run will cost (passes, FLOPs, peak memory, "
                   "disk, time on this CPU) from config.json and the inputs, load nothing, and stop")
    p.add_argument("--skip-memory-check", action="store_true", help="run even where the plan's peak memory exceeds "
                   "what the run may use (--max-memory, the GPU's free memory, or this machine's available memory)")


def _pair_args(p: argparse.ArgumentParser, probes_help: str = "JSON-lines probe file or benchmark name, e.g. "
               "facts:forget") -> None:
    """The two models of a comparison command and the probes they are compared on (declared once)."""
    p.add_argument("--base", required=True, help="the model before unlearning: built-in name, local HF dir or hub id")
    p.add_argument("--unlearned", required=True, help="the unlearned model (same tokenizer)")
    p.add_argument("--probes", required=True, help=probes_help)


def name_spec(text: str) -> tuple[str, str]:
    """``NAME=SPEC``: a checkpoint's name in the study and its model spec."""
    name, eq, spec = text.partition("=")
    if not eq or not name or not spec:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR_OR_HUB_ID, got {text!r}")
    return name, spec


def _executor_args(p: argparse.ArgumentParser, cmd: str) -> None:
    """Where the probes run: this process, or a Ray actor pool (``unpact_mech.runtime.executors``)."""
    p.add_argument("--executor", type=executor(), default="local",
                   help="local (this process), ray (a local Ray cluster) or ray=ADDRESS (join one): the probes run "
                   "over a pool of actors, one loaded model each; parts stream into OUT.ray/, and rerunning the same "
                   "command resumes")
    p.add_argument("--actors", type=POS, default=None, help="Ray actors (default: the cluster's GPUs, else its CPUs "
                   "divided by --threads-per-actor)")
    p.add_argument("--threads-per-actor", type=POS, default="1", help="torch threads per CPU actor (1)")
    for flag in ("--actors", "--threads-per-actor"):
        route(p, cmd, flag, lambda a: a.executor[0] == "ray", "--executor ray")


def _output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (refused otherwise)")


def build_parser() -> argparse.ArgumentParser:
    from unpact_mech.attribution import ATTRIBUTION_METHODS, method_info
    from unpact_mech.evals.multiple_choice import FORMULATIONS
    from unpact_mech.evals.muse import CONVENTIONS as MUSE_CONVENTIONS
    from unpact_mech.evals.tasks import TASKS

    p = argparse.ArgumentParser(prog="unpact", description="Look inside unlearned language models: KeyTokens, direct "
                                "logit attribution, attention paths, emphasis, patching and the unlearning dilemma.")
    p.add_argument("--debug", action="store_true", help="show the traceback of user errors too")
    p.add_argument("--quiet", action="store_true", help="no progress lines (the unpact_mech logger at WARNING); "
                   "results, warnings and errors still print")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("attribute", help="contribution of each prompt token to the answer; KeyTokens marked")
    s.add_argument("--model", default="smollm2-135m", help="built-in name, local HF dir or hub id")
    _prompt_args(s, "attribute")
    s.add_argument("--method", default="loo", choices=sorted(ATTRIBUTION_METHODS))
    s.add_argument("--out", help="write the table (.csv or .parquet)")
    _output_args(s)
    s.add_argument("--shard", type=shard(), help="i/n: only every n-th probe from the i-th (merge parts with "
                   "`unpact merge`)")
    _executor_args(s, "attribute")
    _keytoken_args(s)
    for flag in ("--alpha", "--beta", "--max-keytokens"):
        route(s, "attribute", flag, lambda a: method_info(a.method).level == "token",
              "token-level methods (KeyTokens are prompt tokens): " + ", ".join(
                  sorted(m for m in ATTRIBUTION_METHODS if method_info(m).level == "token")))
    _model_args(s)

    s = sub.add_parser("compare", help="base vs unlearned: KeyTokens, focus, contribution change per probe")
    _pair_args(s)
    s.add_argument("--out", default="compare.csv", help="per-probe table (.csv or .parquet)")
    _output_args(s)
    _executor_args(s, "compare")
    _keytoken_args(s)
    _model_args(s)

    from unpact_mech.study.settings import add_run_arguments

    s = sub.add_parser("demo", help="the main job on the embedded default model")
    add_run_arguments(s, "unpact_out/demo")
    s.add_argument("--split", default=None, choices=SPLITS, help="built-in facts of one split in the KeyToken table")
    s.add_argument("--n", type=POS, default=12, help="number of built-in probes in the KeyToken table")
    s.add_argument("--keytokens-only", action="store_true", help="only print the KeyToken table")
    for flag in ("--methods", "--steps", "--target", "--on-change"):
        route(s, "demo", flag, lambda a: not a.keytokens_only, "the full demo (without --keytokens-only)")
    _keytoken_args(s)
    _model_args(s)
    route(s, "demo", "--plan", lambda a: not a.keytokens_only, "the full demo (without --keytokens-only)")

    s = sub.add_parser("study", help="the dilemma study on any probes and model, training --methods or analysing "
                       "given (e.g. released) checkpoints with --unlearned NAME=DIR_OR_HUB_ID")
    add_run_arguments(s, "unpact_out/study")
    s.add_argument("--config", default=None, metavar="FILE",
                   help="run the study this config states (JSON, or YAML by suffix; every study writes OUT/study.json, "
                   "so --config OUT/study.json reruns it); not with the other study options")
    s.add_argument("--probes", action="append", default=None,
                   help="probe file or benchmark: facts[:SPLIT], fictitious:N[:SEED[:F]], NAME[:SUBSET[:SPLIT]] (tofu:"
                   "retain_perturbed, wmdp:wmdp-bio); repeat to combine (default: facts)")
    s.add_argument("--unlearned", action="append", type=name_spec, default=None, metavar="NAME=SPEC",
                   help="analyse this checkpoint as it is instead of training --methods; repeat for several")
    s.add_argument("--per-split", type=per_split, default=12, help="known probes per split (12), or 'all'")
    s.add_argument("--no-patch", action="store_true", help="skip activation patching")
    s.add_argument("--include-unknown", action="store_true",
                   help="keep probes the base model does not answer (default: only those it knows, as the demo)")
    s.add_argument("--task", choices=sorted(TASKS), default=None,
                   help="also score base and unlearned models by this task's metrics (OUT/task_metrics.csv)")
    s.add_argument("--finetune", action="store_true", help="TOFU's finetune-then-forget: first teach the probes' "
                   "forget + retain people to --model (OUT/finetuned/full, the studied model) and the retain people "
                   "alone (OUT/finetuned/retain, forget quality's reference), e.g. --probes fictitious:40:0:5")
    s.add_argument("--finetune-steps", type=positive_int(MAX_STEPS), default=None,
                   help="teaching steps for both models (default: FINETUNE in unpact_mech.study.settings)")
    s.add_argument("--retain-model", default=None, metavar="SPEC",
                   help="--task tofu: the model never taught the forget set (e.g. open-unlearning's retain90 model), "
                   "the reference of forget quality; --finetune makes its own")
    _keytoken_args(s)
    _model_args(s)

    for name, help_ in (("dla", "direct logit attribution per head, MLP and embedding"),
                        ("paths", "attention paths: each head's contribution split by source token")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--model", default="smollm2-135m")
        _prompt_args(s, name)
        s.add_argument("--target", default="logit", choices=["logit", "logit_diff"])
        s.add_argument("--out", default=f"{name}.csv", help="table (.csv or .parquet)")
        _output_args(s)
        if name == "dla":
            s.add_argument("--top", type=POS, default=20, help="rows to print")
        s.add_argument("--shard", type=shard(), help="i/n: only every n-th probe from the i-th (merge parts with "
                       "`unpact merge`)")
        _executor_args(s, name)
        s.add_argument("--format", default="auto", choices=list(FORMATS), help="prompt format")
        _model_args(s)

    s = sub.add_parser("localise", help="where base -> unlearned changed: heads, layers x source tokens")
    _pair_args(s)
    s.add_argument("--out", default="localise", help="output directory for tables and figures")
    _output_args(s)
    s.add_argument("--top", type=POS, default=5, help="rows per split to print")
    _keytoken_args(s)
    _model_args(s)

    from unpact_mech.unlearning import METHODS

    s = sub.add_parser("unlearn", help="unlearn a forget set from a model; methods: " + ", ".join(sorted(METHODS)))
    s.add_argument("--model", default="smollm2-135m")
    s.add_argument("--method", required=True, choices=sorted(METHODS))
    s.add_argument("--forget", required=True, help="JSON-lines probes or benchmark name, e.g. facts:forget")
    s.add_argument("--retain", help="JSON-lines probes or benchmark name, e.g. facts:retain")
    s.add_argument("--out", required=True, help="checkpoint directory")
    _output_args(s)
    s.add_argument("--steps", type=positive_int(MAX_STEPS), help=f"training steps, 1..{MAX_STEPS} (progress shown)")
    s.add_argument("--lr", type=positive_float(), help="learning rate (finite, > 0)")
    s.add_argument("--seed", type=nonneg_int())
    s.add_argument("--batch-size", type=POS)
    s.add_argument("--target-forget-acc", type=unit_float(), help="stop once forget fact top-1 accuracy <= this")
    s.add_argument("--loss-convention", choices=["open_unlearning", "unpact_v1"],
                   help="GA/GD/KL reductions: open-unlearning's (default) or this toolkit's first forms")
    s.add_argument("--master-weights", action="store_true", default=None,
                   help="with --dtype bfloat16/float16: AdamW on float32 copies of the weights, rounded into the "
                   "model after each step (updates below bfloat16's resolution accumulate instead of vanishing)")
    s.add_argument("--format", default="auto", choices=list(FORMATS))
    _model_args(s)

    from unpact_mech.evals.criteria import CRITERIA
    from unpact_mech.hooks import EMPHASIS_MODES

    s = sub.add_parser("emphasize", help="finding 2: recovery by emphasising KeyTokens (" + ", ".join(EMPHASIS_MODES)
                       + ")")
    _pair_args(s)
    s.add_argument("--factors", default="1,2,4,8", type=factor_list(),
                   help="emphasis factors in (0, 1000]; without --sweep only the largest is scored, and factor 1 (no "
                   "emphasis) is always scored as the baseline")
    s.add_argument("--sweep", action="store_true", help="score every factor of --factors")
    route(s, "emphasize", "--factors", lambda a: a.sweep or len([f for f in a.factors if f != 1.0]) == 1,
          "--sweep when it lists several factors (without --sweep give one)")
    s.add_argument("--modes", "--routes", dest="modes", default="embed,attention", type=choice_list(EMPHASIS_MODES),
                   help="emphasis modes (--routes: the old name): " + ", ".join(EMPHASIS_MODES))
    s.add_argument("--criteria", default="teacher_forced,generation", type=choice_list(list(CRITERIA)),
                   help="correctness criteria: teacher_forced (fact span top-1), generation (greedy answer, ROUGE-L), "
                   "multiple_choice (probes with choices, e.g. --probes wmdp: the gold choice has the largest LL)")
    s.add_argument("--draws", type=POS, default=3, help="seeded random-token control draws per probe")
    s.add_argument("--out", default="emphasis")
    _output_args(s)
    _keytoken_args(s)
    _model_args(s)

    s = sub.add_parser("recover", help="recovery routes: emphasis, quantisation, relearning, in-context, with controls")
    _pair_args(s, "probes with splits: forget (tested), retain (relearning data), general (few-shot examples, then "
               "control facts)")
    from unpact_mech.routes import (
        QUANTIZERS,
        RECOVERY_ROUTES,
        EmphasisOptions,
        InContextOptions,
        QuantizeOptions,
        RelearnOptions,
    )

    def joined(xs: tuple) -> str:  # a default of the routes' options dataclasses, as the flag spells it
        return ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in xs)

    s.add_argument("--routes", default=",".join(RECOVERY_ROUTES), type=choice_list(list(RECOVERY_ROUTES)),
                   help="recovery routes: " + ", ".join(RECOVERY_ROUTES))
    s.add_argument("--criteria", default="teacher_forced,generation", type=choice_list(list(CRITERIA)))
    s.add_argument("--n", type=POS, default=12, help="forget probes (and retain probes for relearning)")
    s.add_argument("--n-control", type=POS, default=24, help="general probes offered as control facts")
    s.add_argument("--factors", default=joined(EmphasisOptions.factors), type=factor_list(),
                   help="emphasis factors in (0, 1000] (the best per mode is reported)")
    s.add_argument("--draws", type=POS, default=EmphasisOptions.n_draws, help="random-token control draws for emphasis")
    s.add_argument("--bits", default=joined(QuantizeOptions.bits), type=int_list(2, 16),
                   help="quantisation bit widths in 2..16 (RTN, group 64)")
    s.add_argument("--quantizers", default=joined(QuantizeOptions.quantizers), type=choice_list(list(QUANTIZERS)),
                   help="quantisers of the quantize route: " + "; ".join(f"{k}: {v}" for k, v in QUANTIZERS.items()))
    s.add_argument("--relearn-steps", default=joined(RelearnOptions.steps), type=int_list(1, MAX_RELEARN_STEPS),
                   help=f"relearning steps k at which to evaluate, in 1..{MAX_RELEARN_STEPS}")
    s.add_argument("--relearn-lr", type=positive_float(), default=f"{RelearnOptions.lr:g}",
                   help="relearning learning rate (> 0)")
    s.add_argument("--shots", type=POS, default=InContextOptions.shots, help="few-shot examples for the in-context route")
    for flag, r in (("--bits", "quantize"), ("--quantizers", "quantize"), ("--relearn-steps", "relearn"),
                    ("--relearn-lr", "relearn"), ("--shots", "in_context"), ("--draws", "emphasis"),
                    ("--factors", "emphasis")):
        route(s, "recover", flag, _uses_route(r), f"the {r} route (add it to --routes)")
    s.add_argument("--out", default="recovery")
    _output_args(s)
    _keytoken_args(s)
    _model_args(s)

    s = sub.add_parser("patch", help="activation patching base <-> unlearned per layer/position and per head")
    _pair_args(s)
    from unpact_mech.patching import DIRECTIONS, KINDS, PATCH_METHODS

    s.add_argument("--n", type=POS, default=1, help="number of probes")
    s.add_argument("--kinds", default="resid_pre,attn_out,mlp_out", type=choice_list(KINDS),
                   help="sites per (layer, position): " + ", ".join(KINDS))
    s.add_argument("--layer-step", type=POS, default=1, help="patch every k-th layer")
    s.add_argument("--direction", default="base->unlearned", type=choice_list(DIRECTIONS),
                   help="one or more of " + ", ".join(DIRECTIONS) + " (comma-separated)")
    s.add_argument("--method", default="exact", choices=PATCH_METHODS, help="exact (from the target's clean run: "
                   "only the layers and positions a patch changes are recomputed), exact_full (every patched "
                   "sequence in full; the reference) or atp (attribution patching: first-order estimate from one "
                   "forward of each model and one backward)")
    s.add_argument("--verify", type=nonneg_int(), default=0, metavar="K",
                   help="with --method atp: patch the estimate's top-K position cells and top-K heads exactly and "
                   "report both (columns exact_restoration, verified)")
    s.add_argument("--out", default="patching")
    _output_args(s)
    _executor_args(s, "patch")
    s.add_argument("--format", default="auto", choices=list(FORMATS))
    _model_args(s)

    s = sub.add_parser("merge", help="merge the partial tables of a sharded run (order-independent)")
    s.add_argument("out", help="merged table (.csv or .parquet)")
    _output_args(s)
    s.add_argument("parts", nargs="+", help="partial tables written with --shard i/n")

    s = sub.add_parser("evaluate", help="a benchmark's own metrics (WMDP multiple choice, TOFU, MUSE; open-unlearning's "
                       "definitions) for one or more models")
    s.add_argument("--task", required=True, choices=sorted(TASKS))
    s.add_argument("--model", required=True, action="append", help="model spec; repeat for several (base, unlearned...)")
    s.add_argument("--probes", required=True, help="benchmark name (wmdp, tofu, muse-news, ...) or a probe file")
    s.add_argument("--subset", help="the benchmark's subset, e.g. wmdp-bio, forget10_perturbed, knowmem")
    s.add_argument("--split", help="the benchmark's split")
    s.add_argument("--source", help="local json/jsonl/parquet file in the benchmark's schema (offline)")
    s.add_argument("--formulations", type=choice_list(FORMULATIONS), default=",".join(FORMULATIONS),
                   help="multiple-choice formulations to score")
    s.add_argument("--description", default=None, metavar="TEXT",
                   help="the line that opens every lettered WMDP prompt (default: lm-eval's line of the probe's subset, "
                   "e.g. 'The following are multiple choice questions (with answers) about biology.' and a blank line; "
                   "'' for none)")
    s.add_argument("--retain-model", help="the retain-only model: TOFU's forget quality (KS test), MUSE's privleak")
    s.add_argument("--max-new-tokens", type=POS, help="generation budget (TOFU 200, MUSE KnowMem 32, VerbMem 128)")
    s.add_argument("--convention", choices=list(MUSE_CONVENTIONS), default="open-unlearning",
                   help="MUSE: score as open-unlearning runs it, as MUSE's own repository does (muse), or the "
                   "toolkit's earlier zero-shot protocol (unpact_v1, not for privleak)")
    s.add_argument("--shots", help="MUSE KnowMem's in-context examples: a split of the benchmark (forget_qa_icl, "
                   "retain_qa_icl) or a local file in its schema; default with a hub benchmark: the split's _icl")
    s.add_argument("--ref-auc", type=unit_float(), help="MUSE privleak: the retain model's AUC, in the convention's "
                   "orientation, when it is not given as --retain-model (default 0.5; MUSE's eval.py uses its "
                   "retrained Llama-2's: News 0.4772, Books 0.5393)")
    s.add_argument("--out", help="write the metrics table (.csv or .parquet)")
    _output_args(s)
    _model_args(s)
    route(s, "evaluate", "--formulations", lambda a: TASKS[a.task].takes("formulations"), "--task wmdp")
    route(s, "evaluate", "--description", lambda a: TASKS[a.task].takes("description"), "--task wmdp")
    route(s, "evaluate", "--retain-model", lambda a: TASKS[a.task].takes("retain_model"),
          "a task scored against a retain model (--task tofu)")
    route(s, "evaluate", "--max-new-tokens", lambda a: TASKS[a.task].takes("max_new_tokens"),
          "--task tofu / muse-knowmem / muse-verbmem")
    route(s, "evaluate", "--convention", lambda a: TASKS[a.task].takes("convention"), "a MUSE task (--task muse-*)")
    route(s, "evaluate", "--shots", lambda a: TASKS[a.task].takes("shots"), "--task muse-knowmem")
    route(s, "evaluate", "--ref-auc", lambda a: TASKS[a.task].takes("ref_auc"), "--task muse-privleak")

    s = sub.add_parser("data", help="list benchmarks or show a few rows of one")
    s.add_argument("action", choices=["list", "show"])
    s.add_argument("name", nargs="?")
    s.add_argument("--subset")
    s.add_argument("--split")
    s.add_argument("--source", help="local json/jsonl/parquet file in the dataset's schema (offline)")
    s.add_argument("--n", type=POS, default=3, help="rows to print")
    for flag in ("--subset", "--split", "--source", "--n"):
        route(s, "data", flag, lambda a: a.action == "show", "`unpact data show NAME`")
    return p


