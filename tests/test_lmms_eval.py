"""KVTP as an lmms-eval model (kvtp_kernels/integrations/lmms_eval.py).

Registration through the entry point, model-arg errors, and lmms-eval 0.7.3 end to end on a
tiny local task (tests/lmms_eval_task.py: synthetic clips, a JSON file, two YAML tasks via
``--include_path``) with the tiny random LLaVA-Video and predictor of tests/tiny_models.py:

- KVTP (prumerge with the predictor) in one process and as two processes with torchrun:
  every document answered once, the logged ``kvtp_stats`` hold the budget, the per-frame
  counts (and the answers) of the two runs are identical;
- ``kvtp=false`` in one process: every answer equals the plain HF model's on the same
  prompt and frames (generate for ``generate_until``, the summed log-probability of the
  continuation for ``multiple_choice``).

lmms-eval lives in its own folder (``tools/install_lmms_eval.sh``; its pins clash with this
project's); the tests find it through ``KVTP_LMMS_EVAL`` (the folder, default
``.lmms-eval/`` of the checkout) and are skipped, with that reason, where it is missing.
Every lmms-eval run is a subprocess with ``OMP_NUM_THREADS=1`` (the same arithmetic in
every process), the hub switched off and ``HF_HOME`` in a temporary directory.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import subprocess
import sys
import time

import pytest
import torch

from tests.lmms_eval_task import GEN_TASK, MC_TASK, TASKS, build_task
from tests.tiny_models import CHAT_TEMPLATE, N, save_tiny_model, save_tiny_predictor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LMMS_DIR = os.environ.get("KVTP_LMMS_EVAL", os.path.join(ROOT, ".lmms-eval"))
MODEL = "kvtp_llava_onevision"
MAX_FRAMES = 4
BUDGET = 0.3
BASELINE_FPS = 1  # the kvtp=false run samples 1 frame per second of the 2 fps clips (at most MAX_FRAMES)

MISSING = None if os.path.isdir(os.path.join(LMMS_DIR, "lmms_eval")) else (
    f"lmms-eval is not installed in {LMMS_DIR} (bash tools/install_lmms_eval.sh)")
REQUIRED = os.environ.get("KVTP_REQUIRE_LMMS_EVAL") == "1"  # CI: the tests must run
pytestmark = pytest.mark.skipif(MISSING is not None and not REQUIRED, reason=str(MISSING))


@pytest.fixture(scope="module", autouse=True)
def _lmms_eval_installed():
    """With KVTP_REQUIRE_LMMS_EVAL=1 a missing lmms-eval fails every test here (the rest of the suite runs)."""
    if MISSING is not None:
        pytest.fail(f"KVTP_REQUIRE_LMMS_EVAL=1 but {MISSING}")


def lmms_env(tmp) -> dict:
    """The environment of an lmms-eval subprocess: lmms-eval's folder first on the path, no hub."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (LMMS_DIR, ROOT, env.get("PYTHONPATH")) if p)
    env.update(HF_HOME=os.path.join(tmp, "hf"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", WANDB_MODE="disabled", PYTHONWARNINGS="ignore")
    return env


def python(code: str, tmp) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=lmms_env(tmp), capture_output=True, text=True,
                          timeout=300)


# ----------------------------------------------------------------------------------
# Registration, optional dependency, model args (subprocesses: lmms-eval is not on this process's path)
# ----------------------------------------------------------------------------------
def test_entry_point_registers_the_model(tmp_path):
    code = f"""
from lmms_eval.models import get_model, list_available_models
from kvtp_kernels.integrations.lmms_eval import KVTPLlavaOnevision
assert "{MODEL}" in list_available_models(), list_available_models()
assert get_model("{MODEL}") is KVTPLlavaOnevision
print("ok")
"""
    out = python(code, tmp_path)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout[-3000:] + out.stderr[-3000:]


def test_importing_kvtp_kernels_does_not_import_lmms_eval(tmp_path):
    code = """
import sys
import kvtp_kernels, kvtp_kernels.integrations, kvtp_kernels.evaluation, kvtp_kernels.predictor, kvtp_kernels.cli
import importlib.util; assert importlib.util.find_spec('lmms_eval')  # importable here: the check below is meaningful
assert not [m for m in sys.modules if m.startswith("lmms_eval.") or m == "kvtp_kernels.integrations.lmms_eval"]
print("ok")
"""
    out = python(code, tmp_path)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout[-3000:] + out.stderr[-3000:]


ARG_ERRORS = [
    ("budget=1.5", "`budget` must be in (0, 1]"),
    ("budget=0", "`budget` must be >= 1"),
    ("method=prumerge", "`predictor` must be set with method=prumerge"),
    ("method=median", "`method` must be one of"),
    ("score_temperature=0", "`score_temperature` must be a finite number > 0"),
    ("max_frames_num=0", "`max_frames_num` must be an int >= 1; got 0"),
    ("fps=-1", "`fps` must be a number > 0"),
    ("kvtp=maybe", "`kvtp` must be true or false; got 'maybe'"),
    ("batch_size=4", "`batch_size` must be 1"),
    ("query_field=videomme:", "`query_field` must be 'TASK:FIELD' pairs"),
    ("frames=8", "unknown model_args ['frames']"),
]


def test_model_arg_errors_name_the_argument(tmp_path):
    """Checked before anything is loaded (one subprocess for all cases: lmms-eval takes seconds to import)."""
    code = f"""
import json
from kvtp_kernels.integrations.lmms_eval import KVTPLlavaOnevision
messages = []
for args in {[a for a, _ in ARG_ERRORS]!r}:
    try:
        KVTPLlavaOnevision.create_from_arg_string("pretrained=unused," + args)
        messages.append("no error")
    except (ValueError, TypeError) as exc:
        messages.append(str(exc))
print(json.dumps(messages))
"""
    out = python(code, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    messages = json.loads(out.stdout.strip().splitlines()[-1])
    for (args, expected), message in zip(ARG_ERRORS, messages):
        assert message.startswith("kvtp_llava_onevision: ") and expected in message, (args, message)


def test_query_field_and_visuals(tmp_path):
    """The predictor's query per ``query_field``, and the documents the model refuses (no model loaded)."""
    code = r"""
import json
import PIL.Image
from kvtp_kernels.integrations.lmms_eval import KVTPLlavaOnevision as M

def bare(query_field):
    m = M.__new__(M)  # the query and visual rules only; nothing loaded
    m._warned, m._query_fields = set(), m._parse_query_field(query_field)
    return m

doc = {"question": "what is the man doing ?", "q2": "where is the dog ?"}
ctx = "<video>\nwhat is the man doing ?\nA. running\nanswer :"
out = {"default": bare(None)._query("videomme", 0, doc, ctx),
       "field": bare("q2")._query("videomme", 0, doc, ctx),
       "context": bare("context")._query("videomme", 0, doc, ctx),
       "per_task": [bare("videomme:q2;nextqa:question")._query(t, 0, doc, ctx)
                    for t in ("videomme_long", "nextqa_mc_test", "egoschema")],
       "no_question": bare(None)._query("mytask", 0, {"prompt": "x"}, ctx),
       "no_visuals": list(bare(None)._document("mytask", 0, doc, lambda d: [], ctx))}
for name, field, visual in [("missing", "nope", None), ("image", None, lambda d: [PIL.Image.new("RGB", (4, 4))]),
                            ("two_videos", None, lambda d: [["a.mp4"], ["b.mp4"]])]:
    try:
        if visual is None:
            bare(field)._query("videomme", 7, doc, ctx)
        else:
            bare(field)._document("vqa", 7, doc, visual, ctx)
        out[name] = "no error"
    except (KeyError, ValueError) as exc:
        out[name] = str(exc)
print(json.dumps(out))
"""
    proc = python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    question, other = "what is the man doing ?", "where is the dog ?"
    assert out["default"] == question and out["field"] == other
    assert out["context"] == "what is the man doing ?\nA. running\nanswer :"  # markers dropped
    assert out["per_task"] == [other, question, question]  # by task prefix; unlisted tasks: the default
    assert out["no_question"] == out["context"]
    assert out["no_visuals"] == [None, None]  # text-only document
    assert "`query_field` 'nope': task videomme doc 7 has no such field" in out["missing"], out["missing"]
    assert "task vqa doc 7: doc_to_visual must give video file paths" in out["image"], out["image"]
    assert "one video per document" in out["two_videos"], out["two_videos"]


# ----------------------------------------------------------------------------------
# lmms-eval end to end
# ----------------------------------------------------------------------------------
class Run:
    """One lmms-eval run: its logged samples per task, results and wall time."""

    def __init__(self, out_dir: str, wall: float, log: str):
        self.wall, self.log = wall, log
        self.samples = {}
        for task in TASKS:
            files = glob.glob(os.path.join(out_dir, "**", f"*_samples_{task}.jsonl"), recursive=True)
            assert len(files) == 1, f"samples of {task}: {files}\n{log[-6000:]}"
            with open(files[0], encoding="utf-8") as fh:
                self.samples[task] = [json.loads(line) for line in fh if line.strip()]
        files = glob.glob(os.path.join(out_dir, "**", "*_results.json"), recursive=True)
        assert len(files) == 1, f"results: {files}\n{log[-6000:]}"
        with open(files[0], encoding="utf-8") as fh:
            self.results = json.load(fh)

    def requests(self, task: str) -> dict[tuple[int, int], tuple[str, dict, object]]:
        """(doc_id, request index) -> (the context, the request's kvtp_stats, its filtered response).

        lmms-eval writes a sample's context as ``input`` and each request's ``token_counts``
        (where the model puts ``kvtp_stats``); a multiple-choice sample has one request per option.
        """
        table = {}
        for sample in self.samples[task]:
            counts, responses = sample["token_counts"], sample["filtered_resps"]
            if task == GEN_TASK:
                responses = [responses]
            assert len(counts) == len(responses), sample
            for index, (count, response) in enumerate(zip(counts, responses)):
                table[sample["doc_id"], index] = (sample["input"], count["kvtp_stats"], response)
        return table


def run_lmms_eval(tmp, name: str, setup: dict, model_args: str, nproc: int = 1, summary=None) -> Run:
    out_dir = os.path.join(tmp, name)
    launcher = [sys.executable, "-m", "lmms_eval"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), "-m",
        "lmms_eval"]
    command = [*launcher, "eval", "--model", MODEL, "--model_args", model_args, "--tasks", ",".join(TASKS),
               "--include_path", setup["task"]["path"], "--batch_size", "1", "--output_path", out_dir,
               "--log_samples"]
    start = time.perf_counter()
    proc = subprocess.run(command, env=lmms_env(tmp), capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - start
    log = f"$ {' '.join(command)}\n{proc.stdout}\n{proc.stderr}"
    with open(os.path.join(tmp, f"{name}.log"), "w", encoding="utf-8") as fh:
        fh.write(log)
    assert proc.returncode == 0, log[-8000:]
    assert "Error during evaluation" not in log, log[-8000:]
    run = Run(out_dir, wall, log)
    if summary is not None:
        summary.append(f"lmms-eval {name}: {nproc} process(es), {wall:.1f} s wall "
                                     f"(start to exit: imports, model load, 7 docs x 2 tasks, scoring)")
    return run


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("lmms_eval"))
    return {"tmp": tmp, "model": save_tiny_model(os.path.join(tmp, "model"), chat_template=CHAT_TEMPLATE),
            "predictor": save_tiny_predictor(os.path.join(tmp, "predictor")),
            "task": build_task(os.path.join(tmp, "task"))}


def kvtp_args(setup) -> str:
    return (f"pretrained={setup['model']},predictor={setup['predictor']},budget={BUDGET},method=prumerge,"
            f"max_frames_num={MAX_FRAMES}")


@pytest.fixture(scope="module")
def one_process(setup, summary_lines):
    return run_lmms_eval(setup["tmp"], "kvtp_1proc", setup, kvtp_args(setup), summary=summary_lines)


@pytest.fixture(scope="module")
def two_processes(setup, summary_lines):
    return run_lmms_eval(setup["tmp"], "kvtp_2proc", setup, kvtp_args(setup), nproc=2, summary=summary_lines)


@pytest.fixture(scope="module")
def baseline(setup, summary_lines):
    return run_lmms_eval(setup["tmp"], "baseline_1proc", setup,
                         f"pretrained={setup['model']},kvtp=false,max_frames_num={MAX_FRAMES},fps={BASELINE_FPS}",
                         summary=summary_lines)


def frame_counts(docs, fps=None) -> list[int]:
    """Frames the model sees per document: T, 0 for the text-only one, -1 for the one that is not a video."""
    from kvtp_kernels import load_video
    from kvtp_kernels.video import VideoDecodeError

    counts = []
    for doc in docs:
        try:
            counts.append(load_video(doc["video"], fps=fps, max_frames=MAX_FRAMES)[0].shape[0] if doc["video"] else 0)
        except VideoDecodeError:
            counts.append(-1)
    return counts


def check_broken_video(task: str, stats: dict, response) -> None:
    """The document whose file is not a video: answered ("" / -inf), the error in its kvtp_stats."""
    assert set(stats) == {"error"} and stats["error"].startswith("VideoDecodeError: "), stats
    assert response == ("" if task == GEN_TASK else ["-inf", "False"]), response


@pytest.mark.parametrize("which", ["one_process", "two_processes"])
def test_every_document_answered_once_with_its_kvtp_stats(setup, which, request):
    run = request.getfixturevalue(which)
    docs = setup["task"]["docs"]
    frames = frame_counts(docs)
    assert set(frames) == {-1, 0, 3, 4}  # mixed frame counts, a text-only document, a broken video
    for task in TASKS:
        ids = [s["doc_id"] for s in run.samples[task]]
        assert sorted(ids) == list(range(len(docs))), (task, ids)
        table = run.requests(task)
        per_doc = 1 if task == GEN_TASK else 4  # one loglikelihood request per option
        assert len(table) == len(docs) * per_doc
        for (doc_id, _), (_, stats, response) in table.items():
            T = frames[doc_id]
            if T < 0:
                check_broken_video(task, stats, response)
                continue
            K = math.floor(BUDGET * T * N + 0.5)
            assert stats["kvtp"] is True and stats["method"] == "prumerge"
            if T == 0:  # text-only: nothing to prune, no query
                assert stats["num_frames"] == 0 and stats["kept_per_frame"] == [] and stats["query"] is None
                assert stats["llm_tokens_after"] == stats["llm_tokens_before"] and stats["flops_ratio"] == 1.0
                continue
            assert stats["query"] == docs[doc_id]["question"]  # the task's question, not the context
            assert stats["num_frames"] == T and len(stats["kept_per_frame"]) == T
            assert sum(stats["kept_per_frame"]) == K
            assert stats["video_tokens_before"] == T * N + 1 and stats["video_tokens_after"] == K + 1
            assert stats["llm_tokens_before"] - stats["llm_tokens_after"] == T * N - K
            assert stats["prefill_flops_after"] < stats["prefill_flops_before"]
            assert stats["flops_ratio"] == pytest.approx(stats["prefill_flops_after"] / stats["prefill_flops_before"])
    assert "exact_match,none" in run.results["results"][GEN_TASK]
    assert "acc,none" in run.results["results"][MC_TASK]


def test_two_processes_match_one(one_process, two_processes):
    # the two runs really split the work: rank 0's progress bar counts its share of the 28 option requests
    # (docs 0, 2, 4, 6 -> 16), the single process all 28
    assert re.search(r"loglikelihood: 100%\|[^|]*\| 28/28", one_process.log), one_process.log[-4000:]
    assert re.search(r"loglikelihood: 100%\|[^|]*\| 16/16", two_processes.log), two_processes.log[-4000:]
    assert "2 process(es)" in two_processes.log and "on rank 1" in two_processes.log
    for task in TASKS:
        one, two = one_process.requests(task), two_processes.requests(task)
        assert one.keys() == two.keys()
        for key in one:
            assert one[key][1] == two[key][1], (task, key)  # kept_per_frame and the rest of kvtp_stats
            assert one[key][2] == two[key][2], (task, key)  # same answers (same arithmetic per process)


def test_kvtp_false_equals_the_plain_model(setup, baseline, one_thread):
    """Each answer of ``kvtp=false`` equals the unpatched HF model's on the same prompt and frames."""
    import transformers

    from kvtp_kernels import load_video
    from kvtp_kernels.evaluation import PromptBuilder, VideoModel

    model = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(setup["model"]).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(setup["model"])
    vm = VideoModel.from_model(model, tokenizer)
    prompts = PromptBuilder(tokenizer)
    docs = setup["task"]["docs"]

    def inputs(context: str, doc_id: int, continuation: str = ""):
        """-> (input_ids [1, L], the video inputs, continuation tokens)."""
        cont = tokenizer(continuation, add_special_tokens=False)["input_ids"] if continuation else []
        if not docs[doc_id]["video"]:  # the text-only document
            return torch.tensor([prompts.encode_text(context) + cont]), {}, len(cont)
        frames, _ = load_video(docs[doc_id]["video"], fps=BASELINE_FPS, max_frames=MAX_FRAMES)
        before, after = prompts.encode(context)
        ids = torch.tensor([before + [vm.video_token_id] * vm.placeholders(frames.shape[0]) + after + cont])
        return ids, {"pixel_values_videos": vm.pixel_values([frames])}, len(cont)

    frames_at_fps = frame_counts(docs, BASELINE_FPS)
    assert frames_at_fps != frame_counts(docs)  # fps= changes the sampling of these clips
    checked = 0
    for (doc_id, _), (context, stats, response) in baseline.requests(GEN_TASK).items():
        checked += 1
        if frames_at_fps[doc_id] < 0:
            check_broken_video(GEN_TASK, stats, response)
            continue
        assert stats["kvtp"] is False and stats["llm_tokens_after"] == stats["llm_tokens_before"]
        assert stats["num_frames"] == frames_at_fps[doc_id]
        assert stats["kept_per_frame"] == [N] * stats["num_frames"]
        ids, pixels, _ = inputs(context, doc_id)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **pixels,
                                 max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
        expected = tokenizer.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True)
        assert response == expected, (doc_id, response, expected)
    for (doc_id, option), (context, stats, response) in baseline.requests(MC_TASK).items():
        checked += 1
        if frames_at_fps[doc_id] < 0:
            check_broken_video(MC_TASK, stats, response)
            continue
        assert stats["kvtp"] is False and stats["kept_per_frame"] == [N] * stats["num_frames"]
        continuation = " " + "ABCD"[option]  # lmms-eval's target_delimiter + the choice
        ids, pixels, n = inputs(context, doc_id, continuation)
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **pixels).logits
        logprobs = torch.log_softmax(logits[0, -n - 1:-1].float(), -1)
        target = ids[0, -n:]
        ll = float(logprobs.gather(1, target[:, None]).sum())
        greedy = bool((logprobs.argmax(-1) == target).all())
        got_ll, got_greedy = response  # lmms-eval writes the pair as strings
        assert float(got_ll) == pytest.approx(ll, rel=1e-5, abs=1e-5), (doc_id, option, response, ll)
        assert got_greedy == str(greedy), (doc_id, option, response, greedy)
    assert checked == len(docs) * 5
