"""What annotators are asked and how their replies are read: the prompts, the score and query parsers,
and a sample's captions per sampled frame."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

from ..options import MAX_LABEL
from .errors import AnnotationError

__all__ = [
    "DEBIAS_PROMPT",
    "FRAME_PROMPT",
    "MAX_LABEL",
    "NO_CAPTION",
    "SCORE_HEADER",
    "SCORE_REPLY",
    "ParsedScores",
    "clean_query",
    "frame_captions",
    "parse_scores",
]

DEBIAS_PROMPT = (
    "Rewrite the question below as one short, neutral query that says what has to be found in a video to answer "
    "it.\n"
    "- Keep what must be seen: people, objects, actions, places, times, on-screen text.\n"
    "- Remove instructions, requests about the answer format, greetings and any other noise.\n"
    "- Do not answer the question, do not favour any choice, do not add facts.\n"
    "- If there are choices, keep all of them, shortened, after 'Choices:'.\n"
    "Reply with the query only, on one line.\n\n"
    "Question: {question}{choices}"
)
SCORE_HEADER = (
    "You rate how relevant frames of a video are to a question, each with an integer from 0 (unrelated) to 5 "
    "(shows what is needed to answer it). Do not answer the question.\n"
    "Question: {query}\n"
    "The video lasts {duration:.1f} s; {count} frames were sampled from it. Frames to rate:"
)
SCORE_REPLY = ("Reply with a JSON list of exactly {n} integers from 0 to 5, one per frame in the order shown, and "
               "nothing else. Example for 3 frames: [0, 4, 1]")
FRAME_PROMPT = (
    "Rate how relevant one frame of a video is to a question, from 0 (unrelated) to 5 (shows what is needed to "
    "answer it). Do not answer the question.\n"
    "Question: {query}\n"
    "The video lasts {duration:.1f} s; {count} frames were sampled from it.\n"
    "Frame {number} of {count}, at {time:.1f} s: {description}\n"
    "Relevance (0-5):"
)
NO_CAPTION = "no description is available; judge only from where the frame lies in the video"


class ParsedScores:
    """Scores parsed from a reply: ``scores`` (ints 0..5) and ``clamped`` (how many were out of range)."""

    __slots__ = ("scores", "clamped")

    def __init__(self, scores: list[int], clamped: int):
        self.scores, self.clamped = scores, clamped

    def __repr__(self) -> str:
        return f"ParsedScores(scores={self.scores}, clamped={self.clamped})"


_NUMBER = r"[-+]?\d+(?:\.\d+)?"
_LIST = re.compile(r"\[([^\[\]]*)\]")
_NUMBERS_ONLY = re.compile(r"[\s,;]*(?:" + _NUMBER + r"[\s,;]*)+")
_PAIR = re.compile(r"(?:frame|#)?\s*(\d+)\s*(?:\)|\]|:|=|-|–|—)\s*(" + _NUMBER + r")(?![\d.])", re.IGNORECASE)


def _to_label(token: str) -> tuple[int, bool]:
    value = float(token)
    label = math.floor(value + 0.5)  # 3.5 -> 4: half up
    clamped = min(max(label, 0), MAX_LABEL)
    return clamped, clamped != label


def parse_scores(text: str, expected: int) -> ParsedScores:
    """Extract ``expected`` relevance scores 0..5 from an annotator's reply.

    Tried in order: a bracketed list of exactly ``expected`` numbers (the last such list),
    ``"Frame k: s"`` / ``"k: s"`` pairs whose k are 1..expected (or 0..expected-1), then every
    number in the text when there are exactly ``expected``. Non-integers are rounded half up;
    values outside 0..5 are clamped (counted in ``clamped``).

    Raises:
        AnnotationError: no reading gives ``expected`` numbers (the message quotes the reply).
    """
    if not isinstance(text, str):
        raise AnnotationError(f"expected a text reply; got {type(text).__name__}")
    body = re.sub(r"```[a-zA-Z]*", "", text)
    candidates: list[list[str]] = []
    lists = [re.findall(_NUMBER, m.group(1)) for m in _LIST.finditer(body) if _NUMBERS_ONLY.fullmatch(m.group(1))]
    exact = [items for items in lists if len(items) == expected]
    if exact:
        candidates.append(exact[-1])
    pairs = _PAIR.findall(body)
    if pairs:
        by_index = {}
        for index, value in pairs:
            by_index.setdefault(int(index), value)
        for first in (1, 0):
            if sorted(by_index) == list(range(first, first + expected)):
                candidates.append([by_index[i] for i in range(first, first + expected)])
                break
    numbers = re.findall(_NUMBER, body)
    if len(numbers) == expected:
        candidates.append(numbers)
    if not candidates:
        found = f"lists of {sorted({len(x) for x in lists})} numbers" if lists else f"{len(numbers)} numbers"
        shown = text if len(text) <= 300 else text[:300] + "..."
        raise AnnotationError(f"expected {expected} scores 0..{MAX_LABEL}, found {found} in the reply {shown!r}")
    labels = [_to_label(token) for token in candidates[0]]
    return ParsedScores([label for label, _ in labels], sum(c for _, c in labels))


def clean_query(text: str) -> str:
    """The first non-empty line of a rewrite, without quotes, code fences or a "Query:" label.

    Raises:
        AnnotationError: nothing is left.
    """
    if not isinstance(text, str):
        raise AnnotationError(f"expected a text reply for the query; got {type(text).__name__}")
    for line in re.sub(r"```[a-zA-Z]*", "", text).splitlines():
        line = re.sub(r"^\s*(?:[-*]\s*)?(?:\*\*)?(?:rewritten query|debiased query|query|output|answer)\s*(?:\*\*)?"
                      r"\s*:\s*(?:\*\*)?\s*", "", line, flags=re.IGNORECASE)
        line = " ".join(line.strip().strip("\"'`“”‘’").split())
        if line:
            return line
    raise AnnotationError(f"the annotator's rewrite of the question is empty: {text[:200]!r}")



def frame_captions(captions: Any, timestamps: Sequence[float]) -> list[str] | None:
    """A sample's ``captions`` column -> one caption per sampled frame (or None).

    Accepted: a list of strings, one per sampled frame; or clip captions, a list of objects
    ``{"start": s, "end": s, "text": ...}`` (seconds; a frame gets the texts of every clip
    whose [start, end] holds its time, "" when none does).

    Raises:
        AnnotationError: a per-frame list of the wrong length or a malformed entry.
    """
    if captions is None or captions == "":
        return None
    if isinstance(captions, str):
        try:
            captions = json.loads(captions)
        except json.JSONDecodeError as exc:
            raise AnnotationError(f"column 'captions' is a string that is not JSON ({exc})") from exc
    if not isinstance(captions, list) or not captions:
        raise AnnotationError("column 'captions' must be a non-empty list (one caption per sampled frame, or clip "
                              "captions {start, end, text})")
    T = len(timestamps)
    if all(isinstance(c, str) for c in captions):
        if len(captions) != T:
            raise AnnotationError(f"column 'captions' has {len(captions)} captions but the video gives {T} sampled "
                                  "frames (give one per frame of the same --fps / --max-frames sampling, or clip "
                                  "captions with start/end times)")
        return [c.strip() for c in captions]
    clips = []
    for i, clip in enumerate(captions):
        if (not isinstance(clip, dict) or not isinstance(clip.get("text"), str)
                or not all(isinstance(clip.get(k), (int, float)) and not isinstance(clip.get(k), bool)
                           for k in ("start", "end"))):
            raise AnnotationError(f"column 'captions': entry {i} must be a string (per-frame captions) or an object "
                                  f"with numbers 'start', 'end' (seconds) and a string 'text'; got {clip!r}")
        clips.append((float(clip["start"]), float(clip["end"]), clip["text"].strip()))
    return [" / ".join(text for start, end, text in clips if start - 1e-6 <= t <= end + 1e-6) for t in timestamps]

