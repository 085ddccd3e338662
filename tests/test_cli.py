"""The kvtp command line: subcommands, --help for every option, delegation, the demo, usage errors.

kvtp eval and kvtp annotate end to end are in test_evaluation.py and test_annotate.py.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys

import pytest
from tiny_models import CHAT_TEMPLATE, sample_video, save_tiny_model, save_tiny_predictor, write_jsonl

from kvtp_kernels.cli import build_parser, demo_cmd, main

pytestmark = pytest.mark.usefixtures("one_thread")
SUBCOMMANDS = ["bench", "eval", "annotate", "train-predictor", "demo"]


def subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_top_level_help_lists_the_subcommands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    listed = re.findall(r"^    (\S+)", out, flags=re.MULTILINE)
    assert listed == SUBCOMMANDS
    assert list(subparsers()) == SUBCOMMANDS
    assert main(["--version"]) == 0 and capsys.readouterr().out.startswith("kvtp_kernels ")


@pytest.mark.parametrize("command", ["eval", "annotate", "demo"])
def test_help_documents_every_option(command, capsys):
    parser = subparsers()[command]
    options = [a for a in parser._actions if a.option_strings]
    assert len(options) > 8
    for action in options:
        assert action.help and action.help != argparse.SUPPRESS, action.option_strings
    assert main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for action in options:
        for option in action.option_strings:
            assert option in text, option
    if command == "eval":
        assert "(default: 0.2)" in text and "(default: None)" not in text  # defaults shown where they exist


@pytest.mark.parametrize("command, expected", [("bench", ["usage: kvtp bench", "--full", "--device"]),
                                               ("train-predictor", ["--output-dir", "--train", "--epochs"])])
def test_delegated_subcommands_show_their_own_help(command, expected, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    for word in expected:
        assert word in out


def test_bench_outside_a_source_checkout(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "bench", None)  # not importable
    monkeypatch.setitem(sys.modules, "bench.harness", None)
    monkeypatch.setattr(os.path, "isfile", lambda path: False)  # and no bench/ next to the package or here
    assert main(["bench"]) == 2
    err = capsys.readouterr().err
    assert "kvtp bench: error: the benchmarks live in bench/ of the kvtp_kernels source checkout" in err


def test_train_predictor_usage_error_is_exit_2(tmp_path, capsys):
    assert main(["train-predictor", str(tmp_path / "labels.txt"), "--model", "m", "--output-dir", "o"]) == 2
    assert "must end in .csv, .json, .jsonl or .ndjson" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: SUBCOMMAND"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["demo", "--budget", "x"], "--budget: must be a ratio"),
    (["demo", "--max-frames", "0"], "--max-frames: must be an integer >= 1"),
    (["demo", "--fps", "nan"], "--fps: must be a finite number > 0"),
    (["demo", "--method", "prumerge"], "--method prumerge needs --predictor"),
])
def test_usage_errors_exit_2(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def parse_demo(out: str) -> dict[str, str]:
    return {line.split(":", 1)[0]: line for line in out.splitlines()}


def test_demo_prunes_a_real_video(capsys):
    assert main(["demo", "--max-frames", "4", "--video", sample_video("carphone_pristine.mp4"), "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    lines = parse_demo(out)
    T, N = 4, 16
    K = math.floor(0.2 * T * N + 0.5)
    assert "4 frames of 176x144" in lines["video"]
    assert f"video tokens {T * N + 1} -> {K + 1} (K = {K} kept + 1 newline)" in lines["KVTP budget 0.2, method topk"]
    text_tokens = 7  # the tiny model's prompt: BOS, 3 words, video, 3 words
    assert f"LLM tokens {text_tokens + T * N + 1} -> {text_tokens + K + 1}" in lines["KVTP budget 0.2, method topk"]
    assert lines["kept per frame"] == "kept per frame: [4, 3, 3, 3]"  # uniform scores: K/T, remainder first
    before, after = (int(x.replace(",", "")) for x in re.findall(r"([\d,]+) ->\s*([\d,]+)",
                                                                 lines["LLM prefill FLOPs"])[0])
    assert 0 < after < before
    seven_b = next(line for line in out.splitlines() if line.startswith("LLaVA-Video-7B"))
    K7 = math.floor(0.2 * T * 196 + 0.5)
    assert f"LLM tokens {64 + T * 196 + 1} -> {64 + K7 + 1}" in seven_b


def test_demo_with_a_saved_model_and_predictor(tmp_path, capsys):
    model = save_tiny_model(tmp_path / "llava", chat_template=CHAT_TEMPLATE)
    predictor = save_tiny_predictor(tmp_path / "predictor")
    argv = ["demo", "--model", model, "--predictor", predictor, "--video", sample_video("bikes.mp4"),
            "--max-frames", "6", "--budget", "30", "--question", "where is the bike ?", "--method", "prumerge",
            "--repeats", "1"]
    assert main(argv) == 0
    lines = parse_demo(capsys.readouterr().out)
    assert "predictor: " + predictor in lines["model"]
    kept = [int(x) for x in re.findall(r"\d+", lines["kept per frame"])]
    assert len(kept) == 6 and sum(kept) == 30  # an int budget is K itself
    assert "video tokens 97 -> 31" in lines["KVTP budget 30, method prumerge"]


def test_demo_errors(tmp_path, capsys):
    assert main(["demo", "--video", str(tmp_path / "none.mp4")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "fake.mp4").write_bytes(b"not a video")
    assert main(["demo", "--video", str(tmp_path / "fake.mp4")]) == 2
    assert "cannot decode" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    """``python -m kvtp_kernels.cli`` runs main and exits with its status (2: a usage error, argparse style)."""
    result = subprocess.run([sys.executable, "-m", "kvtp_kernels.cli", "eval"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert "usage: kvtp eval" in result.stderr and "required: --data, --model" in result.stderr


# ----------------------------------------------------------------------------------
# User errors: one line, exit 2, before any work (issue 14, item 9)
# ----------------------------------------------------------------------------------
def _one_line_error(capsys, prefix):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith(prefix), err
    return lines[-1]


def _data_file(tmp_path):
    row = {"id": "a", "video": sample_video("carphone_pristine.mp4"), "question": "what ?", "options": ["x", "y"],
           "answer": "A"}
    return write_jsonl(tmp_path / "d.jsonl", [row])


def test_eval_data_file_with_invalid_utf8(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"id": "a", "video": "v.mp4", "question": "caf\xe9"}\n')
    assert main(["eval", "--data", str(path), "--model", "m", "--output", str(tmp_path / "o.jsonl")]) == 2
    line = _one_line_error(capsys, "kvtp eval: error: ")
    assert "bad.jsonl: line 1: not valid UTF-8" in line


@pytest.mark.parametrize("case", ["under a file", "a directory", "a directory with --overwrite", "the data file"])
def test_eval_unusable_output(tmp_path, capsys, case):
    data = _data_file(tmp_path)
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    output, extra = {"under a file": (tmp_path / "file" / "o.jsonl", []),
                     "a directory": (tmp_path / "folder", []),
                     "a directory with --overwrite": (tmp_path / "folder", ["--overwrite"]),
                     "the data file": (data, [])}[case]
    assert main(["eval", "--data", data, "--model", str(tmp_path / "no-model"), "--output", str(output), *extra]) == 2
    line = _one_line_error(capsys, "kvtp eval: error: --output")
    assert {"under a file": "is a file, not a folder", "a directory": "is a directory",
            "a directory with --overwrite": "is a directory", "the data file": "is the data file"}[case] in line


@pytest.mark.parametrize("where", ["missing folder", "a directory"])
def test_eval_unwritable_summary_json_before_any_work(tmp_path, capsys, where):
    data = _data_file(tmp_path)
    (tmp_path / "folder").mkdir()
    summary = tmp_path / "nope" / "s.json" if where == "missing folder" else tmp_path / "folder"
    output = tmp_path / "o.jsonl"
    argv = ["eval", "--data", data, "--model", str(tmp_path / "no-model"), "--output", str(output),
            "--summary-json", str(summary)]
    assert main(argv) == 2
    _one_line_error(capsys, "kvtp eval: error: --summary-json")
    assert not output.exists()  # refused before the results file (and the model) were touched


def test_annotate_refuses_overlapping_files(tmp_path, capsys):
    data = _data_file(tmp_path)
    out = str(tmp_path / "o.jsonl")
    base = ["annotate", "--data", data, "--model", "m", "--annotator", "openai", "--url", "http://127.0.0.1:9"]
    assert main([*base, "--output", out, "--dense-output", out]) == 2
    assert "--dense-output" in _one_line_error(capsys, "kvtp annotate: error: ")
    data_jsonl = str(tmp_path / "d.jsonl")
    assert main([*base, "--output", data_jsonl]) == 2
    assert "is the data file" in _one_line_error(capsys, "kvtp annotate: error: --output")


def test_train_predictor_usage_names_itself(capsys):
    assert main(["train-predictor"]) == 2
    assert "usage: kvtp train-predictor" in capsys.readouterr().err


def _labels(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text(f"video,query,labels\n{sample_video('carphone_pristine.mp4')},what,0 3 5 1\n")
    return str(path)


@pytest.mark.parametrize("case", ["missing model", "cuda without CUDA", "output-dir under a file"])
def test_train_predictor_user_errors(tmp_path, capsys, monkeypatch, case):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "file").write_text("x")
    model = save_tiny_predictor(tmp_path / "predictor") if case != "missing model" else str(tmp_path / "no-model")
    out = str(tmp_path / ("file/run" if case == "output-dir under a file" else "run"))
    argv = ["train-predictor", _labels(tmp_path), "--model", model, "--output-dir", out]
    if case == "cuda without CUDA":
        argv += ["--device", "cuda"]
    assert main(argv) == 2
    line = _one_line_error(capsys, "kvtp train-predictor: error: ")
    assert {"missing model": "--model", "cuda without CUDA": "--device cuda: torch sees no CUDA device",
            "output-dir under a file": "--output-dir"}[case] in line


@pytest.mark.parametrize("argv, message", [
    (["demo", "--budget", "100000", "--max-frames", "2"], "--budget as a token count must lie in [1, T*N]"),
    (["demo", "--budget", "2.5"], "--budget must be a ratio in (0, 1]"),
    (["demo", "--question", ""], "--question: must not be empty"),
    (["demo", "--question", "   "], "--question: must not be empty"),
])
def test_demo_user_errors(argv, message, capsys):
    assert main([*argv, "--video", sample_video("carphone_pristine.mp4"), "--repeats", "1"]) == 2
    assert message in _one_line_error(capsys, "kvtp demo: error: ")


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_cmd, "run", interrupted)
    assert main(["demo"]) == 130
    assert _one_line_error(capsys, "kvtp demo: interrupted") == "kvtp demo: interrupted"
