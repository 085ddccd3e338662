"""The prompt of a multiple-choice question around one video, and the token ids that score its answer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..options import PROMPT_FORMATS
from .data import option_letter
from .errors import EvalError

__all__ = [
    "DEFAULT_INSTRUCTION",
    "VIDEO_MARKER",
    "PromptBuilder",
    "left_padded",
    "multiple_choice_text",
    "option_token_ids",
    "symbol_token_ids",
]

#: The instruction LLaVA-style models are tuned on for multiple choice.
DEFAULT_INSTRUCTION = "Answer with the option's letter from the given choices directly."
#: Stands for the video in rendered prompts; replaced by T*N + 1 video token ids.
VIDEO_MARKER = "<video>"


def multiple_choice_text(question: str, options: Sequence[str], instruction: str = DEFAULT_INSTRUCTION) -> str:
    """``question`` / ``A. option`` lines / ``instruction``."""
    lines = [question.strip(), *(f"{option_letter(i)}. {o}" for i, o in enumerate(options))]
    if instruction:
        lines.append(instruction)
    return "\n".join(lines)


class PromptBuilder:
    """Renders a user turn that holds one video and tokenizes it around the video placeholder.

    Formats:
        ``chat``: the tokenizer's chat template (or ``chat_template``), user turn +
        generation prompt. The video goes first in the turn; templates that take string
        content get ``"<video>\\n" + text``, processor-style templates that take a list of
        parts get ``[{"type": "video"}, {"type": "text", ...}]`` (whichever renders the
        placeholder exactly once).
        ``plain``: ``[BOS] <video>\\n{text}\\n{answer_cue}``.
        ``auto``: chat when a template exists, else plain.

    Args:
        tokenizer: the model's tokenizer.
        prompt_format: "auto", "chat" or "plain".
        chat_template: a Jinja template overriding the tokenizer's.
        answer_cue: text after the user turn in plain format (default ``"Answer:"``).
    """

    def __init__(self, tokenizer: Any, prompt_format: str = "auto", chat_template: str | None = None,
                 answer_cue: str = "Answer:"):
        if prompt_format not in PROMPT_FORMATS:
            raise EvalError(f"--prompt-format must be one of {PROMPT_FORMATS}; got {prompt_format!r}")
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        has_template = bool(chat_template or getattr(tokenizer, "chat_template", None))
        if prompt_format == "chat" and not has_template:
            raise EvalError("--prompt-format chat: the tokenizer has no chat template (use --prompt-format plain)")
        self.format = ("chat" if has_template else "plain") if prompt_format == "auto" else prompt_format
        self.answer_cue = answer_cue

    def render(self, text: str) -> str:
        """The full prompt as text, holding :data:`VIDEO_MARKER` exactly once."""
        if self.format == "plain":
            return f"{VIDEO_MARKER}\n{text}" + (f"\n{self.answer_cue}" if self.answer_cue else "")
        problems = []
        for content in (f"{VIDEO_MARKER}\n{text}", [{"type": "video"}, {"type": "text", "text": text}]):
            try:
                rendered = self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": content}], chat_template=self.chat_template, tokenize=False,
                    add_generation_prompt=True)
            except Exception as exc:  # noqa: BLE001 - a template that rejects this content form; try the other
                problems.append(f"{type(exc).__name__}: {exc}")
                continue
            if isinstance(rendered, str) and rendered.count(VIDEO_MARKER) == 1:
                return rendered
            problems.append(f"rendered {VIDEO_MARKER!r} {rendered.count(VIDEO_MARKER)} times")
        raise EvalError("the chat template does not place one video placeholder in a user turn ("
                        + "; ".join(problems) + "); pass --prompt-format plain or --chat-template FILE")

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def _prefix(self) -> list[int]:
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return [bos] if self.format == "plain" and bos is not None else []

    def encode(self, text: str) -> tuple[list[int], list[int]]:
        """Token ids before and after the video placeholder."""
        before, after = self.render(text).split(VIDEO_MARKER)
        return self._prefix() + self._ids(before), self._ids(after)

    def encode_text(self, text: str) -> list[int]:
        """Token ids of a user turn without video (chat: template + generation prompt; plain: text + cue)."""
        if self.format == "plain":
            return self._prefix() + self._ids(f"{text}\n{self.answer_cue}" if self.answer_cue else text)
        rendered = self.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                      chat_template=self.chat_template, tokenize=False,
                                                      add_generation_prompt=True)
        return self._ids(rendered)


def symbol_token_ids(tokenizer: Any, symbols: Sequence[str], what: str = "symbol") -> list[list[int]]:
    """For each symbol (an option letter, a digit), the single-token ids that spell it: ``s`` and
    ``" " + s`` when each is one token (the logit of either counts).

    Raises:
        EvalError: a symbol with no single-token spelling, or two symbols sharing a token.
    """
    table: list[list[int]] = []
    owner: dict[int, str] = {}
    unknown = getattr(tokenizer, "unk_token_id", None)
    for symbol in symbols:
        ids: list[int] = []
        for text in (symbol, " " + symbol):
            encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(encoded) == 1 and encoded[0] != unknown and encoded[0] not in ids:
                ids.append(int(encoded[0]))
        if not ids:
            raise EvalError(f"the tokenizer has no single token for the {what} {symbol!r}; scoring by the next "
                            "token's logits needs one")
        for token in ids:
            if owner.setdefault(token, symbol) != symbol:
                raise EvalError(f"the {what}s {owner[token]!r} and {symbol!r} map to the same token {token}")
        table.append(ids)
    return table


def option_token_ids(tokenizer: Any, num_options: int) -> list[list[int]]:
    """The single-token spellings of the option letters A, B, ... (see :func:`symbol_token_ids`)."""
    return symbol_token_ids(tokenizer, [option_letter(i) for i in range(num_options)], "option letter")


def left_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> (input_ids, attention_mask) [B, L_max], padded on the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[b, width - len(row):] = 1
    return ids, mask
