"""``kvtp annotate``: debiased queries, per-frame relevance labels and the sparsity split (the parser and the run)."""

from __future__ import annotations

import argparse
import os

from ..options import ANNOTATORS, IMAGE_FORMATS, PROMPT_FORMATS
from ._args import HelpFormatter, non_negative_int, positive_float, positive_int, run_options, video_options
from ._checks import PROG, UsageError, check_output_target, read_selected_samples, report_errors, same_file

HELP = "debiased queries, per-frame relevance labels 0..5 and the sparsity split"

DESCRIPTION = """\
Turn (video, question) samples into KVTP's training / evaluation format: a debiased query and one relevance
label 0..5 per sampled frame from an annotator model, then the authors' sparsity split (a sample is kept when
some frame's keep ratio reaches --threshold at temperature --sparsity-temperature). The output is accepted by
kvtp train-predictor and kvtp eval.
"""

EPILOG = """\
Input rows: video, question, optional id, options, answer, subset, captions (one per sampled frame, or
[{"start": s, "end": s, "text": ...}] clip captions; a text-only local model sees only these and the frame
times). Output JSONL rows: id, video, question, query, labels, timestamps, options, answer, subset,
max_keep_ratio, sparse. Samples that are not sparse go to --dense-output. Reruns resume. Exit status: 0 done, 1
done with skipped samples, 2 usage error or annotator unavailable.
"""


# ----------------------------------------------------------------------------------
# Parser
# ----------------------------------------------------------------------------------
def add_parser(sub) -> None:
    p = sub.add_parser("annotate", help=HELP, description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter)
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
    _annotator_options(p)
    run_options(p)
    p.add_argument("--no-debias", action="store_true",
                   help="do not rewrite the question: the query is the 'query' column or the question")
    video_options(p)
    _sparsity_options(p)
    p.add_argument("--limit", type=positive_int, default=None, help="annotate only the first N samples")
    p.add_argument("--strict", action="store_true",
                   help="stop before annotating when the data file has bad rows")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def _annotator_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None,
                   help="openai: base URL (https://api.openai.com/v1, http://localhost:8000/v1) or the full "
                        ".../chat/completions URL")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="openai: environment variable holding the API key (unset: no Authorization header)")
    p.add_argument("--frames-per-request", type=positive_int, default=8, help="openai: frames rated per request")
    p.add_argument("--image-size", type=positive_int, default=384,
                   help="openai: longer side in pixels of the frames sent")
    p.add_argument("--image-format", default="auto", choices=IMAGE_FORMATS,
                   help="openai: frame encoding (auto: JPEG with Pillow, else PNG)")
    p.add_argument("--text-only", action="store_true",
                   help="openai: send captions / frame times instead of images (text-only models)")
    p.add_argument("--timeout", type=positive_float, default=120.0, help="openai: seconds per request")
    p.add_argument("--retries", type=non_negative_int, default=3,
                   help="openai: extra attempts after a bad reply, HTTP 429/5xx or a network error")
    p.add_argument("--retry-delay", type=positive_float, default=1.0,
                   help="openai: first backoff in seconds, doubled at each attempt")
    p.add_argument("--max-tokens", type=positive_int, default=256, help="openai: reply length cap")
    p.add_argument("--batch-size", type=positive_int, default=8, help="local: frames scored per forward pass")
    p.add_argument("--max-new-tokens", type=positive_int, default=64,
                   help="local: length cap of the generated query")
    p.add_argument("--prompt-format", default="auto", choices=PROMPT_FORMATS,
                   help="local: chat template or plain text prompts (auto: chat when the tokenizer has a template)")


def _sparsity_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threshold", type=positive_float, default=0.2,
                   help="sparsity: keep a sample when some frame's keep ratio k_t/N is at least this")
    p.add_argument("--sparsity-temperature", type=positive_float, default=2.0,
                   help="sparsity: tau of softmax(labels / tau)")
    p.add_argument("--sparsity-budget", type=positive_float, default=0.2,
                   help="sparsity: beta of the keep ratios r_t = beta * T * softmax(labels / tau)_t")
    p.add_argument("--tokens-per-frame", type=positive_int, default=169,
                   help="sparsity: N, tokens per frame (the authors' LLaVA-Video evaluation: 13x13 = 169)")
    p.add_argument("--keep-all", action="store_true",
                   help="write every sample to --output ('sparse' is still recorded)")


# ----------------------------------------------------------------------------------
# Run
# ----------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    """Check the options and the output files, read the samples, build the annotator, then annotate."""
    from ..evaluation.annotate import AnnotateSettings, annotate
    from ..evaluation.data import ResultsFile

    dense_path = _check_outputs(args)
    samples, data_errors = read_selected_samples("annotate", args, require_options=False, require_answer=False)
    annotator = _annotator(args)
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
    report_errors("annotate", report.errors)
    return 1 if report.errors else 0


def _check_outputs(args: argparse.Namespace) -> str:
    """--output and --dense-output: .jsonl, distinct from each other and from --data, usable; returns the dense
    output's path."""
    for name in ("output", "dense_output"):
        path = getattr(args, name)
        if path is not None and os.path.splitext(path)[1].lower() not in (".jsonl", ".ndjson"):
            raise UsageError(f"--{name.replace('_', '-')} must end in .jsonl (the label-file format that "
                             f"kvtp train-predictor reads); got {path!r}")
    if not 0 < args.sparsity_budget <= 1:
        raise UsageError(f"--sparsity-budget must be in (0, 1]; got {args.sparsity_budget}")
    dense_path = args.dense_output or os.path.splitext(args.output)[0] + ".dense.jsonl"
    if same_file(args.output, args.data):
        raise UsageError(f"--output {args.output!r} is the data file --data; choose another output file")
    if same_file(dense_path, args.data):
        raise UsageError(f"--dense-output {dense_path!r} is the data file --data; choose another file")
    if same_file(dense_path, args.output):
        raise UsageError(f"--dense-output {dense_path!r} is --output; the sparse and the dense samples need two "
                         "files")
    check_output_target("--output", args.output)
    check_output_target("--dense-output", dense_path)
    return dense_path


def _annotator(args: argparse.Namespace):
    """--annotator openai (an endpoint at --url) or local (a transformers model from --model)."""
    from ..evaluation.annotate import LocalAnnotator, OpenAIAnnotator
    from ..evaluation.evaluate import resolve_device, resolve_dtype

    if args.annotator == "openai":
        if not args.url:
            raise UsageError("--annotator openai needs --url (the server's base URL, e.g. http://localhost:8000/v1)")
        return OpenAIAnnotator(
            args.url, args.model, api_key=os.environ.get(args.api_key_env) or None,
            frames_per_request=args.frames_per_request, image_size=args.image_size, image_format=args.image_format,
            text_only=args.text_only, timeout=args.timeout, retries=args.retries, retry_delay=args.retry_delay,
            max_tokens=args.max_tokens)
    if args.url:
        raise UsageError("--url is for --annotator openai; the local annotator loads --model")
    device = resolve_device(args.device)
    return LocalAnnotator.from_pretrained(
        args.model, device=device, dtype=resolve_dtype(args.dtype, device), batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens, prompt_format=args.prompt_format)
