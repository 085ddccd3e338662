"""The lmms-eval model's arguments and document rules, without lmms-eval (:mod:`.lmms_eval` uses them).

Model-arg checks (each error names the model arg), the ``query_field`` rule, the visual
markers dropped from a context, and the processes of a run. Nothing here imports
lmms-eval, accelerate or loguru at import time.
"""

from __future__ import annotations

import math
import os
from typing import Any

__all__ = ["bad", "check_model_args", "check_settings", "flag", "flatten", "parse_query_field", "pick_query",
           "processes", "read_template", "strip_markers"]

MARKERS = ("<video>", "<image>")


def log():
    from loguru import logger  # lmms-eval's logger (a dependency of lmms-eval)

    return logger


def bad(model_id: str, name: str, expected: str, got: Any):
    raise ValueError(f"{model_id}: model_args `{name}` must be {expected}; got {got!r}")


def flag(model_id: str, name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value in (0, 1) and not isinstance(value, float):
        return bool(value)
    bad(model_id, name, "true or false", value)


def check_model_args(model_id: str, *, pretrained: Any, predictor: Any, kvtp: Any, max_frames_num: Any, fps: Any,
                     max_new_tokens: Any, batch_size: Any) -> tuple[str | None, bool]:
    """Check the model args that are not KVTP settings -> (the predictor or None, kvtp as a bool)."""
    if not isinstance(pretrained, str) or not pretrained:
        bad(model_id, "pretrained", "a checkpoint (hub name or directory)", pretrained)
    predictor = None if predictor in (None, "", "none", "None") else predictor
    if predictor is not None and not isinstance(predictor, str):
        bad(model_id, "predictor", "a saved predictor (directory or hub name)", predictor)
    kvtp = flag(model_id, "kvtp", kvtp)
    if isinstance(max_frames_num, bool) or not isinstance(max_frames_num, int) or max_frames_num < 1:
        bad(model_id, "max_frames_num", "an int >= 1", max_frames_num)
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float))
                            or not math.isfinite(fps) or fps <= 0):
        bad(model_id, "fps", "a number > 0 (or unset: max_frames_num frames uniformly)", fps)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        bad(model_id, "max_new_tokens", "an int >= 1", max_new_tokens)
    if str(batch_size) != "1":
        bad(model_id, "batch_size", "1 (one request at a time; use more processes for throughput)", batch_size)
    return predictor, kvtp


def check_settings(model_id: str, settings: dict, predictor: str | None, kvtp: bool) -> dict:
    """The KVTP settings (``apply_kvtp``'s keywords), checked by :class:`~kvtp_kernels.integrations.KVTPSettings`."""
    from . import KVTPSettings

    try:
        KVTPSettings(**settings)
    except ValueError as exc:  # name the model arg (temperature is score_temperature here)
        raise ValueError(f"{model_id}: model_args: {exc}".replace("`temperature`", "`score_temperature`")) from exc
    if settings["method"] == "prumerge" and predictor is None and kvtp:
        bad(model_id, "predictor", "set with method=prumerge (its token importance gives the merge weights)",
            predictor)
    return settings


def parse_query_field(model_id: str, value: Any) -> dict[str, str] | str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        bad(model_id, "query_field", "a document field name, 'context', or 'TASK:FIELD;TASK:FIELD'", value)
    if ":" not in value:
        return value
    table = {}
    for part in filter(None, (p.strip() for p in value.split(";"))):
        task, sep, field = part.partition(":")
        if not sep or not task.strip() or not field.strip():
            bad(model_id, "query_field", "'TASK:FIELD' pairs separated by ';'", value)
        table[task.strip()] = field.strip()
    return table


def pick_query(model_id: str, spec: dict[str, str] | str | None, warned: set[str], task: str, doc_id: Any,
               doc: Any, context: str) -> str:
    """The predictor's query for one document, by the ``query_field`` rule (``spec``, parsed)."""
    field = None
    if isinstance(spec, str):
        field = spec
    elif isinstance(spec, dict):
        matches = [t for t in spec if task == t or task.startswith(t)]
        field = spec[max(matches, key=len)] if matches else None
    if field == "context":
        return strip_markers(context)
    if field is not None:
        if not hasattr(doc, "keys") or field not in doc.keys():
            fields = sorted(doc.keys()) if hasattr(doc, "keys") else type(doc).__name__
            raise KeyError(f"{model_id}: model_args `query_field` {field!r}: task {task} doc {doc_id} has "
                           f"no such field; its fields: {fields}")
        return str(doc[field])
    if hasattr(doc, "keys") and "question" in doc.keys() and isinstance(doc["question"], str) \
            and doc["question"].strip():
        return doc["question"]
    if task not in warned:
        warned.add(task)
        log().warning(f"{model_id}: task {task} has no 'question' field; the predictor scores frames "
                      "against the context string (set query_field=TASK:FIELD to pick one)")
    return strip_markers(context)


def strip_markers(context: str) -> str:
    for marker in MARKERS:
        context = context.replace(marker, "")
    return context.strip()


def read_template(template: str | None) -> str | None:
    if template is None or not os.path.isfile(template):
        return template
    with open(template, encoding="utf-8") as fh:
        return fh.read()


def processes(accelerator: Any) -> tuple[int, int, int]:
    """(world size, rank, local rank) of this run.

    torch.distributed is the ground truth when it is initialised: under ``torchrun`` on CPUs,
    accelerate 1.15 initialises the gloo group but reports one process (DistributedType.NO).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        local = int(os.environ.get("LOCAL_RANK", accelerator.local_process_index))
        return dist.get_world_size(), dist.get_rank(), local
    return accelerator.num_processes, accelerator.process_index, accelerator.local_process_index


def flatten(items: Any):
    for item in items:
        if isinstance(item, (list, tuple)):
            yield from flatten(item)
        else:
            yield item
