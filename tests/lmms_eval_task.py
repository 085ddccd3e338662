"""A tiny local lmms-eval task for the end-to-end tests (tests/test_lmms_eval.py): no hub, no download.

:func:`build_task` writes, under one directory (lmms-eval's ``--include_path``):

- ``clips/clip{i}.mp4``: synthetic MPEG-4 clips (PyAV), 48x40 px, 3 to 7 frames at 2 fps, a
  different random pattern per frame, so that the frames differ and the predictor's scores too;
- ``docs.json``: one row per document (``id``, ``video`` absolute path or "" for the one
  text-only document, ``question``, ``options``, ``answer`` letter, ``answer_index``), read by
  lmms-eval through ``dataset_path: json``; one document's "clip" is not a video;
- ``utils.py``: ``doc_to_visual`` / ``doc_to_text`` / ``doc_to_choice`` / ``doc_to_target``;
- two tasks: ``kvtp_tiny_gen`` (``generate_until``, exact match of the letter) and
  ``kvtp_tiny_mc`` (``multiple_choice``: one ``loglikelihood`` request per option, accuracy).

The words come from the tiny models' vocabularies (tests/tiny_models.py).
"""

from __future__ import annotations

import json
import os

import numpy as np

GEN_TASK, MC_TASK = "kvtp_tiny_gen", "kvtp_tiny_mc"
TASKS = (GEN_TASK, MC_TASK)

QUESTIONS = [
    ("what is the man doing ?", ["running", "a red car", "a dog", "a phone"], "A"),
    ("where is the dog ?", ["in the car", "in the road", "who", "a bike"], "B"),
    ("what color is the car ?", ["red", "a cat", "the man", "the road"], "A"),
    ("who is running in the video ?", ["a cat", "a dog", "the man", "a bike"], "C"),
    ("what does the cat do ?", ["running", "phone", "a car", "the dog"], "A"),
    ("who is a dog ?", ["a cat", "a dog", "the man", "a bike"], "B"),
    ("where is the bike ?", ["in the road", "in the car", "a dog", "a cat"], "A"),
]
#: Frames per clip (2 fps; max_frames_num=4 gives T = 3 or 4); 0: a text-only document; -1: a file that
#: is not a video (the model answers "" / -inf and logs the error).
FRAMES = [3, 5, 4, 7, 6, 0, -1]

UTILS = '''"""doc_to_* functions of the tiny KVTP test tasks (written by tests/lmms_eval_task.py)."""

LETTERS = "ABCDEFGHIJ"


def doc_to_visual(doc):
    return [doc["video"]] if doc["video"] else []


def _options(doc):
    return "\\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(doc["options"]))


def doc_to_text_gen(doc, lmms_eval_specific_kwargs=None):
    return f"{doc['question']}\\n{_options(doc)}\\nanswer with the option's letter from the given choices directly ."


def doc_to_text_mc(doc, lmms_eval_specific_kwargs=None):
    return f"{doc['question']}\\n{_options(doc)}\\nanswer :"


def doc_to_choice(doc):
    return [LETTERS[i] for i in range(len(doc["options"]))]


def doc_to_target(doc):
    return doc["answer_index"]
'''

GEN_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text_gen
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 3
  temperature: 0
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  - version: 0.0
"""

MC_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text_mc
doc_to_choice: !function utils.doc_to_choice
doc_to_target: !function utils.doc_to_target
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  - version: 0.0
"""


def write_clip(path: str, num_frames: int, seed: int, width: int = 48, height: int = 40, fps: int = 2) -> str:
    """An MPEG-4 clip of ``num_frames`` random RGB frames (blocky, so that compression keeps them distinct)."""
    import av

    rng = np.random.default_rng(seed)
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(num_frames):
            blocks = rng.integers(0, 256, size=(height // 8, width // 8, 3), dtype=np.uint8)
            image = np.repeat(np.repeat(blocks, 8, axis=0), 8, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def build_task(root) -> dict:
    """Write the task directory; -> {"path": root, "docs": [rows], "tasks": TASKS}."""
    root = os.fspath(root)
    os.makedirs(os.path.join(root, "clips"), exist_ok=True)
    docs = []
    for i, ((question, options, answer), frames) in enumerate(zip(QUESTIONS, FRAMES)):
        video = ""
        if frames > 0:
            video = os.path.abspath(write_clip(os.path.join(root, "clips", f"clip{i}.mp4"), frames, seed=i))
        elif frames < 0:
            video = os.path.abspath(os.path.join(root, "clips", f"clip{i}.mp4"))
            with open(video, "wb") as fh:
                fh.write(b"not a video " * 64)
        docs.append({"id": f"doc{i}", "video": video, "question": question, "options": options,
                     "answer": answer, "answer_index": "ABCD".index(answer)})
    data = os.path.join(root, "docs.json")
    with open(data, "w", encoding="utf-8") as fh:
        json.dump(docs, fh)
    with open(os.path.join(root, "utils.py"), "w", encoding="utf-8") as fh:
        fh.write(UTILS)
    for task, template in ((GEN_TASK, GEN_YAML), (MC_TASK, MC_YAML)):
        with open(os.path.join(root, f"{task}.yaml"), "w", encoding="utf-8") as fh:
            fh.write(template.format(task=task, data=json.dumps(os.path.abspath(data))))
    return {"path": root, "docs": docs, "tasks": TASKS}
