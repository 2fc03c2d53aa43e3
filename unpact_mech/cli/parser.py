"""The ``unpact`` argument parser: one sub-parser per command, option groups declared once."""

from __future__ import annotations

import argparse

from unpact_mech.keytokens import ALPHA, BETA


def _keytoken_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alpha", type=float, default=ALPHA, help=f"eq.4 threshold on normalised contribution ({ALPHA})")
    p.add_argument("--beta", type=int, default=BETA, help=f"eq.3: keep all positives if fewer than beta ({BETA})")
    p.add_argument("--max-keytokens", type=int, default=None, help="cap N on KeyTokens per probe (none)")
    p.add_argument("--format", default="auto", choices=["auto", "chat", "plain"], help="prompt format")


def _model_args(p: argparse.ArgumentParser) -> None:
    """How every command that loads a model loads it (declared once)."""
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="weight dtype (bfloat16/float16 halve memory; scores are float64 either way)")
    p.add_argument("--device", default=None, help="e.g. cuda:0 (default: the CPU)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run Python code shipped with the model (RISK: it runs with your permissions)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept pickled .bin weights (RISK: unpickling can run code); safetensors needs no flag")


def _output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (refused otherwise)")


def build_parser() -> argparse.ArgumentParser:
    from unpact_mech.attribution import ATTRIBUTION_METHODS

    p = argparse.ArgumentParser(prog="unpact", description="Look inside unlearned language models: KeyTokens, direct "
                                "logit attribution, attention paths, emphasis, patching and the unlearning dilemma.")
    p.add_argument("--debug", action="store_true", help="show the traceback of user errors too")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("attribute", help="contribution of each prompt token to the answer; KeyTokens marked")
    s.add_argument("--model", default="smollm2-135m", help="built-in name, local HF dir or hub id")
    s.add_argument("--prompt", help="the question")
    s.add_argument("--answer", help="the answer whose log-prob is attributed")
    s.add_argument("--probes", help="JSON-lines probe file or benchmark name (instead of --prompt/--answer)")
    s.add_argument("--method", default="loo", choices=sorted(ATTRIBUTION_METHODS))
    s.add_argument("--out", help="write the table (.csv or .parquet)")
    _output_args(s)
    s.add_argument("--shard", help="i/n: only every n-th probe from the i-th (merge parts with `unpact merge`)")
    _keytoken_args(s)
    _model_args(s)

    s = sub.add_parser("compare", help="base vs unlearned: KeyTokens, focus, contribution change per probe")
    s.add_argument("--base", required=True)
    s.add_argument("--unlearned", required=True)
    s.add_argument("--probes", required=True, help="JSON-lines probe file or benchmark name, e.g. facts:forget")
    s.add_argument("--out", default="compare.csv", help="per-probe table (.csv or .parquet)")
    _output_args(s)
    _keytoken_args(s)
    _model_args(s)

    from unpact_mech.experiments.settings import add_run_arguments

    s = sub.add_parser("demo", help="the main job on the embedded default model")
    add_run_arguments(s, "unpact_out/demo")
    s.add_argument("--split", default=None)
    s.add_argument("--n", type=int, default=12, help="number of built-in probes in the KeyToken table")
    s.add_argument("--keytokens-only", action="store_true", help="only print the KeyToken table")
    _keytoken_args(s)
    _model_args(s)

    for name, help_ in (("dla", "direct logit attribution per head, MLP and embedding"),
                        ("paths", "attention paths: each head's contribution split by source token")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--model", default="smollm2-135m")
        s.add_argument("--prompt")
        s.add_argument("--answer")
        s.add_argument("--probes", help="JSON-lines probe file or benchmark name")
        s.add_argument("--target", default="logit", choices=["logit", "logit_diff"])
        s.add_argument("--out", default=f"{name}.csv", help="table (.csv or .parquet)")
        _output_args(s)
        s.add_argument("--top", type=int, default=20, help="rows to print")
        s.add_argument("--shard", help="i/n: only every n-th probe from the i-th (merge parts with `unpact merge`)")
        _keytoken_args(s)
        _model_args(s)

    s = sub.add_parser("localise", help="where base -> unlearned changed: heads, layers x source tokens")
    s.add_argument("--base", required=True)
    s.add_argument("--unlearned", required=True)
    s.add_argument("--probes", required=True)
    s.add_argument("--out", default="localise", help="output directory for tables and figures")
    _output_args(s)
    s.add_argument("--top", type=int, default=5)
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
    s.add_argument("--steps", type=int)
    s.add_argument("--lr", type=float)
    s.add_argument("--seed", type=int)
    s.add_argument("--batch-size", type=int)
    s.add_argument("--target-forget-acc", type=float, help="stop once forget fact top-1 accuracy <= this")
    s.add_argument("--loss-convention", choices=["open_unlearning", "unpact_v1"],
                   help="GA/GD/KL reductions: open-unlearning's (default) or this toolkit's first forms")
    s.add_argument("--format", default="auto", choices=["auto", "chat", "plain"])
    _model_args(s)

    s = sub.add_parser("emphasize", help="finding 2: recovery by emphasising KeyTokens (embed, attention, prompt)")
    s.add_argument("--base", required=True)
    s.add_argument("--unlearned", required=True)
    s.add_argument("--probes", required=True)
    s.add_argument("--factors", default="1,2,4,8", help="emphasis factors (with --sweep; else the last only)")
    s.add_argument("--sweep", action="store_true", help="score every factor, not only the largest")
    s.add_argument("--routes", default="embed,attention")
    s.add_argument("--criteria", default="teacher_forced,generation",
                   help="correctness criteria: teacher_forced (fact span top-1), generation (greedy answer, ROUGE-L)")
    s.add_argument("--draws", type=int, default=3, help="seeded random-token control draws per probe")
    s.add_argument("--out", default="emphasis")
    _output_args(s)
    _keytoken_args(s)
    _model_args(s)

    s = sub.add_parser("recover", help="recovery routes: emphasis, quantisation, relearning, in-context, with controls")
    s.add_argument("--base", required=True)
    s.add_argument("--unlearned", required=True)
    s.add_argument("--probes", required=True, help="probes with splits: forget (tested), retain (relearning data), "
                   "general (few-shot examples, then control facts)")
    s.add_argument("--routes", default="emphasis,quantize,relearn,in_context")
    s.add_argument("--criteria", default="teacher_forced,generation")
    s.add_argument("--n", type=int, default=12, help="forget probes (and retain probes for relearning)")
    s.add_argument("--n-control", type=int, default=24, help="general probes offered as control facts")
    s.add_argument("--bits", default="8,4", help="quantisation bit widths (RTN, group 64)")
    s.add_argument("--relearn-steps", default="1,2,4", help="relearning steps k at which to evaluate")
    s.add_argument("--relearn-lr", type=float, default=1e-5)
    s.add_argument("--shots", type=int, default=3, help="few-shot examples for the in-context route")
    s.add_argument("--draws", type=int, default=3, help="random-token control draws for emphasis")
    s.add_argument("--out", default="recovery")
    _output_args(s)
    _keytoken_args(s)
    _model_args(s)

    s = sub.add_parser("patch", help="activation patching base <-> unlearned per layer/position and per head")
    s.add_argument("--base", required=True)
    s.add_argument("--unlearned", required=True)
    s.add_argument("--probes", required=True)
    s.add_argument("--n", type=int, default=1, help="number of probes")
    s.add_argument("--kinds", default="resid_pre,attn_out,mlp_out")
    s.add_argument("--layer-step", type=int, default=1, help="patch every k-th layer")
    s.add_argument("--direction", default="base->unlearned", help="base->unlearned, unlearned->base or both (comma)")
    s.add_argument("--method", default="exact", help="exact (one forward per site) or atp (attribution patching: "
                   "first-order estimate from one forward of each model and one backward)")
    s.add_argument("--out", default="patching")
    _output_args(s)
    s.add_argument("--format", default="auto", choices=["auto", "chat", "plain"])
    _model_args(s)

    s = sub.add_parser("merge", help="merge the partial tables of a sharded run (order-independent)")
    s.add_argument("out", help="merged table (.csv or .parquet)")
    _output_args(s)
    s.add_argument("parts", nargs="+", help="partial tables written with --shard i/n")

    s = sub.add_parser("data", help="list benchmarks or show a few rows of one")
    s.add_argument("action", choices=["list", "show"])
    s.add_argument("name", nargs="?")
    s.add_argument("--subset")
    s.add_argument("--split")
    s.add_argument("--source", help="local json/jsonl/parquet file in the dataset's schema (offline)")
    s.add_argument("--n", type=int, default=3, help="rows to print")
    return p


