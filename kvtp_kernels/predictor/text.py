"""Queries -> token ids -> chunks of the text window -> one text pass (mixed into :class:`FrameRelevancePredictor`).

Query chunks: the tokenizer's ids (end-of-sequence token included) are cut into windows
of ``text_window`` tokens and the last window is padded with the pad id, since SigLIP was
trained on max-length-padded text and pools the last position (the authors feed the
unpadded ids). Chunks of all queries share one text pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .config import _describe, _fail

__all__ = ["QueryEncoding"]


class QueryEncoding:
    """The text side of :class:`~kvtp_kernels.predictor.FrameRelevancePredictor`.

    Uses the host's ``tokenizer``, ``text_window``, ``pad_token_id``, ``siglip`` and ``device``.
    """

    def tokenize(self, queries: str | Sequence[str]) -> list[torch.Tensor]:
        """Token ids (with the tokenizer's special tokens, no padding, no truncation).

        Returns:
            one int64 [L_i] tensor per query.
        """
        if self.tokenizer is None:
            raise ValueError("kvtp_kernels.predictor: string queries need a tokenizer (pass `tokenizer=` or load "
                             "a checkpoint that has one); or give queries as token ids")
        queries = [queries] if isinstance(queries, str) else list(queries)
        ids = []
        for i, q in enumerate(queries):
            if not isinstance(q, str) or not q.strip():
                _fail(f"queries[{i}]", "a non-empty string", repr(q))
            tokens = self.tokenizer(q, add_special_tokens=True, padding=False, truncation=False)["input_ids"]
            if len(tokens) == 0:
                _fail(f"queries[{i}]", "a string with at least one token", repr(q))
            ids.append(torch.tensor(tokens, dtype=torch.long))
        return ids

    def chunk_token_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Split one query's ids [L] into ``ceil(L / window)`` chunks [C, window];
        the last chunk is padded with :attr:`pad_token_id` (max-length padding)."""
        window = self.text_window
        L = ids.shape[0]
        C = -(-L // window)
        out = torch.full((C * window,), self.pad_token_id, dtype=torch.long, device=ids.device)
        out[:L] = ids
        return out.reshape(C, window)

    def _query_ids(self, queries: Any) -> list[torch.Tensor]:
        if isinstance(queries, str) or (isinstance(queries, (list, tuple)) and queries
                                        and all(isinstance(q, str) for q in queries)):
            return self.tokenize(queries)
        if isinstance(queries, torch.Tensor):
            if queries.dim() == 1:
                queries = [queries]
            elif queries.dim() == 2:
                queries = list(queries)
            else:
                _fail("queries", "token ids [L] or [B, L]", _describe(queries))
        if not isinstance(queries, (list, tuple)) or len(queries) == 0:
            _fail("queries", "a string, a list of strings, or token ids ([L], [B, L] or a list of [L])",
                  repr(queries) if not isinstance(queries, (list, tuple)) else "an empty list")
        ids = []
        for i, q in enumerate(queries):
            try:
                t = torch.as_tensor(q)
            except (TypeError, ValueError, RuntimeError):
                _fail(f"queries[{i}]", "a string or a 1-D sequence of integer token ids (all queries of one kind)",
                      repr(q))
            if t.dim() != 1 or (t.numel() and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)):
                _fail(f"queries[{i}]", "a 1-D sequence of integer token ids (or a string)", _describe(t))
            if t.numel() == 0:
                _fail(f"queries[{i}]", "non-empty (at least one token id)", "an empty query")
            ids.append(t.long())
        return ids

    def encode_queries(self, queries: Any) -> torch.Tensor:
        """All chunks of all queries in one text pass.

        Args:
            queries: a string, a list of B strings (needs the tokenizer), token ids
                [L] / [B, L], or a list of B id sequences of any lengths.

        Returns:
            [B, C, E] in the text tower's dtype, C = the most chunks of any query;
            queries with fewer chunks repeat their last chunk (a max is unchanged).
        """
        return self._encode_query_ids(self._query_ids(queries))

    def _encode_query_ids(self, query_ids: list[torch.Tensor]) -> torch.Tensor:
        chunks = [self.chunk_token_ids(ids) for ids in query_ids]
        counts = [c.shape[0] for c in chunks]
        embeds = self.siglip.text_model(input_ids=torch.cat(chunks).to(self.device)).pooler_output
        C = max(counts)
        per_query = embeds.split(counts)
        return torch.stack([torch.cat([e, e[-1:].expand(C - e.shape[0], -1)]) for e in per_query])
