"""``kvtp eval``: multiple-choice video QA with and without KVTP (the parser and the run)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..options import ALLOCATIONS, LAYOUTS, MERGES, METHODS, MODES, PROMPT_FORMATS
from ._args import (
    HelpFormatter,
    budget,
    modes,
    non_negative_int,
    positive_float,
    positive_int,
    run_options,
    video_options,
)
from ._checks import (
    PROG,
    UsageError,
    check_output_target,
    check_writable_file,
    read_selected_samples,
    report_errors,
    same_file,
)

HELP = "multiple-choice video QA accuracy, tokens, FLOPs and latency with and without KVTP"

DESCRIPTION = """\
Run a video VLM (LLaVA-Video / LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA-NeXT-Video; the class
chosen by the checkpoint's config) on multiple-choice video questions with and without KVTP, write one JSONL
record per sample (a rerun resumes), and print accuracy, vision tokens, LLM prefill FLOPs and latency per
subset, side by side.
"""

EPILOG = """\
Data file (.jsonl, .json list or .csv), one sample per row: video (path, relative to the data file), question,
options (JSON list; CSV: JSON list, 'a|b|c' or columns A, B, C, ...), answer (letter, option text, or 0-based
index), optional id, subset, query (the predictor's query). Example: {"id": "q1", "video": "v/a.mp4",
"question": "What does the man hold?", "options": ["a cup", "a phone"], "answer": "B", "subset": "videomme"}.
Scoring: the option whose letter token has the highest logit at the answer position (one forward pass; no text
to parse). Exit status: 0 done, 1 done with skipped samples (listed at the end), 2 usage error.
"""


# ----------------------------------------------------------------------------------
# Parser
# ----------------------------------------------------------------------------------
def add_parser(sub) -> None:
    p = sub.add_parser("eval", help=HELP, description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--data", required=True, help="the samples: .jsonl, .json (a list of objects) or .csv")
    p.add_argument("--model", required=True,
                   help="checkpoint of a supported family, chosen by its config's model_type: hub name (e.g. "
                        "llava-hf/LLaVA-Video-7B-Qwen2-hf, Qwen/Qwen2.5-VL-7B-Instruct) or directory (with its "
                        "tokenizer)")
    p.add_argument("--predictor", default=None,
                   help="FrameRelevancePredictor checkpoint (directory or hub name, e.g. from kvtp train-predictor); "
                        "default: none, every frame gets the same score (plain per-frame top-k)")
    p.add_argument("--output", default=None,
                   help="predictions JSONL, one record per sample; an existing file with the same settings is "
                        "resumed (default: kvtp-eval-<data file name>.jsonl in the current folder)")
    p.add_argument("--overwrite", action="store_true", help="start --output afresh instead of resuming it")
    _pruning_options(p)
    video_options(p)
    p.add_argument("--batch-size", type=positive_int, default=1,
                   help="samples per forward pass (left padded; a batch is split by frame count)")
    run_options(p)
    _prompt_and_run_options(p)
    p.set_defaults(handler=run)


def _pruning_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget", type=budget, default=0.2,
                   help="tokens kept per video: a ratio in (0, 1] (K = floor(ratio*T*N + 1/2)) or a token count")
    p.add_argument("--method", default="topk", choices=METHODS,
                   help="within-frame rule once KVTP has fixed each frame's count: topk keeps the best tokens by the "
                        "predictor's attention importance (distinctiveness without a predictor); prumerge (the "
                        "paper's best, needs --predictor) keeps them and folds their most similar tokens in; tome "
                        "merges tokens down to the count; random keeps a random subset")
    p.add_argument("--merge", default="paper", choices=MERGES,
                   help="--method prumerge: paper = x_i + sum_j a_j x_j (the authors' code), mean = a weighted mean")
    p.add_argument("--num-neighbors", type=non_negative_int, default=None,
                   help="--method prumerge: neighbours folded into each kept token (default: min(32, N-1))")
    p.add_argument("--temperature", type=positive_float, default=2.0,
                   help="tau of softmax(frame scores / tau) that shares the budget among frames")
    p.add_argument("--allocation", default="exact", choices=ALLOCATIONS,
                   help="exact: counts sum to K exactly; paper: the authors' floor(N*min(beta*T*p, 1))")
    p.add_argument("--min-tokens-per-frame", type=non_negative_int, default=0,
                   help="every frame keeps at least this many tokens")
    p.add_argument("--layout", default="video", choices=LAYOUTS,
                   help="newlines in the pruned video block (LLaVA-OneVision; the other families have none): video = "
                        "one per video (HF LlavaOnevision), grid = after each kept grid row (original LLaVA-Video)")
    p.add_argument("--modes", type=modes, default=MODES, metavar="{both,full,kvtp}",
                   help="run the unpruned model, KVTP, or both (default: both)")


def _prompt_and_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--attn-implementation", default=None,
                   help="transformers attention implementation (sdpa, eager, flash_attention_2; default: "
                        "transformers' choice)")
    p.add_argument("--prompt-format", default="auto", choices=PROMPT_FORMATS,
                   help="chat: the tokenizer's chat template; plain: '<video>\\n{question and options}\\nAnswer:'; "
                        "auto: chat when a template exists")
    p.add_argument("--chat-template", default=None, metavar="FILE",
                   help="a Jinja chat template file replacing the tokenizer's")
    p.add_argument("--instruction", default=None,
                   help="the line after the options (default: \"Answer with the option's letter from the given "
                        "choices directly.\"; '' for none)")
    p.add_argument("--subset", action="append", default=None,
                   help="evaluate only this subset (repeat for several)")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N samples")
    p.add_argument("--warmup", type=non_negative_int, default=1,
                   help="untimed runs of each mode on the first batch before timing")
    p.add_argument("--strict", action="store_true",
                   help="stop before running anything when the data file has bad rows (default: skip them and "
                        "report them at the end)")
    p.add_argument("--summary-json", default=None, metavar="FILE",
                   help="also write the per-subset summary as JSON to FILE")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


# ----------------------------------------------------------------------------------
# Run
# ----------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    """Check the paths, read the samples, then evaluate and print the per-subset summary."""
    from ..evaluation.evaluate import Evaluator, format_summary, resolve_device, resolve_dtype, summarize

    output = _check_paths(args)
    samples, data_errors = read_selected_samples("eval", args, args.subset)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    chat_template = _read_chat_template(args.chat_template)
    settings = _settings(args, dtype)
    results = _open_results(output, settings, args.overwrite)
    video_model, predictor = _load_models(args, settings, device, dtype)
    evaluator = Evaluator(video_model, settings, predictor=predictor, chat_template=chat_template,
                          warmup=args.warmup)
    report = evaluator.run(samples, results, batch_size=args.batch_size, data_errors=data_errors,
                           progress=not args.no_progress)
    rows = summarize(report.records, settings.modes)
    print(format_summary(rows, settings))
    print(f"{len(report.records)} of {len(samples)} samples in {output} ({report.evaluated} evaluated now, "
          f"{report.resumed} resumed)")
    if args.summary_json:
        with open(args.summary_json, "w", encoding="utf-8") as fh:
            json.dump({"settings": settings.to_dict(), "rows": rows, "skipped": [str(e) for e in report.errors]},
                      fh, indent=2)
    report_errors("eval", report.errors)
    return 1 if report.errors else 0


def _check_paths(args: argparse.Namespace) -> str:
    """The results file (--output or its default), checked with --summary-json before any work."""
    output = args.output or f"kvtp-eval-{os.path.splitext(os.path.basename(args.data))[0]}.jsonl"
    if same_file(output, args.data):
        raise UsageError(f"--output {output!r} is the data file --data; choose another results file")
    check_output_target("--output", output)
    if args.summary_json:
        check_writable_file("--summary-json", args.summary_json)
        if same_file(args.summary_json, output) or same_file(args.summary_json, args.data):
            raise UsageError(f"--summary-json {args.summary_json!r} must differ from --data and --output")
    return output


def _read_chat_template(path: str | None) -> str | None:
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as exc:
        raise UsageError(f"--chat-template: cannot read {path!r} ({exc})") from exc


def _settings(args: argparse.Namespace, dtype):
    from ..evaluation.evaluate import DEFAULT_INSTRUCTION, EvalSettings

    return EvalSettings(
        model=args.model, predictor=args.predictor, budget=args.budget, method=args.method, merge=args.merge,
        num_neighbors=args.num_neighbors, temperature=args.temperature, allocation=args.allocation,
        min_tokens_per_frame=args.min_tokens_per_frame, layout=args.layout, modes=args.modes, fps=args.fps,
        max_frames=args.max_frames,
        dtype=str(dtype).removeprefix("torch."), prompt_format=args.prompt_format,
        instruction=DEFAULT_INSTRUCTION if args.instruction is None else args.instruction)


def _open_results(output: str, settings, overwrite: bool):
    """The results file, resumed or started afresh; says what it repaired in a file left by an interrupted run."""
    from ..evaluation.data import ResultsFile

    results = ResultsFile(output, settings.to_dict(), overwrite=overwrite)
    if results.dropped_partial_line:
        print(f"{PROG} eval: dropped a truncated last line of {output} (an interrupted write)", file=sys.stderr)
    if results.repaired_newline:
        print(f"{PROG} eval: added the missing newline after the last record of {output}", file=sys.stderr)
    return results


def _load_models(args: argparse.Namespace, settings, device, dtype):
    """The video model and, when a KVTP mode runs with --predictor, the relevance predictor."""
    import torch

    from ..evaluation.evaluate import load_predictor, load_video_model

    torch.manual_seed(0)
    video_model = load_video_model(args.model, device=device, dtype=dtype,
                                   attn_implementation=args.attn_implementation)
    predictor = None
    if args.predictor and "kvtp" in settings.modes:
        predictor = load_predictor(args.predictor, device=device, dtype=dtype)
    return video_model, predictor
