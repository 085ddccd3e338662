"""Reference of :func:`kvtp_kernels.pack.pack_multimodal` (METHOD.md section 4).

The LLM input: text with each sample's pruned video spliced in. The kernels map every
output row back to its source; this reference goes the other way, placing every source
at its output row with one scatter, so the two share no index math.
"""

from __future__ import annotations

import torch


def pack_multimodal_ref(
    text_embeds: torch.Tensor,
    text_mask: torch.Tensor | None,
    video_mask: torch.Tensor,
    sample_video: torch.Tensor,
    video_tokens: torch.Tensor,
    video_indices: torch.Tensor,
    video_cu_seqlens: torch.Tensor,
    video_frame_cu_seqlens: torch.Tensor,
    newline: torch.Tensor | None,
    layout: str,
    grid_width: int | None,
    tokens_per_frame: int | None,
    padded: bool,
    left_padding: bool,
    length: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference of :func:`kvtp_kernels.pack.pack_multimodal` on validated inputs.

    Sample b's sequence: kept text (``text_mask & ~video_mask``) before its
    placeholder span, the rows of video ``sample_video[b]`` (none for -1) with
    newlines per ``layout`` ("grid": after each (frame, n // grid_width) group of
    rows, "frame": after each frame, "video": after the video, "none"), then the
    kept text after the span.

    Args:
        text_embeds: [B, L, D]; text_mask: [B, L] or ``None`` (all text);
        video_mask: [B, L], one contiguous run per sample with a video, none otherwise.
        sample_video: int64 [B], the video of each sample or -1 (each video once).
        video_tokens, video_indices, video_cu_seqlens, video_frame_cu_seqlens: the
            fields of a PrunedTokens of V videos of T frames of N = tokens_per_frame.
        newline: [D] (unused by layout "none").
        padded, left_padding: [B, L_out, D] output padded on the left or right,
            instead of [total, D] rows.
        length: rows (varlen) or L_out (padded); ``None``: just enough.

    Returns:
        ``(embeds, cu_seqlens int32 [B + 1], position_ids int64, source_index int64)``
        as documented by :class:`kvtp_kernels.pack.PackedInputs`.
    """
    B, L, D = text_embeds.shape
    dev = text_embeds.device
    Kt, V = video_tokens.shape[0], video_cu_seqlens.numel() - 1
    T = (video_frame_cu_seqlens.numel() - 1) // V if V > 0 else 0
    vmask = video_mask.bool()
    kept = ~vmask if text_mask is None else text_mask.bool() & ~vmask
    video = sample_video.to(device=dev, dtype=torch.int64)
    has_video = video >= 0
    cu = video_cu_seqlens.long()
    fcu = video_frame_cu_seqlens.long()
    sample_of_video = torch.full((V,), -1, dtype=torch.int64, device=dev)
    sample_of_video[video[has_video]] = torch.arange(B, device=dev)[has_video]
    video_of_row, row_offset, newline_video, newline_offset = _block_offsets(
        layout, video_indices, cu, fcu, T, grid_width, tokens_per_frame)
    video_len = cu.diff() + torch.bincount(newline_video, minlength=V)

    sample_video_len = torch.where(has_video, video_len[video.clamp(0, max(V - 1, 0))] if V else 0, 0)
    seq_len = kept.sum(1) + sample_video_len
    cu_seqlens = torch.cat([seq_len.new_zeros(1), seq_len.cumsum(0)])
    positions = torch.arange(L, device=dev)
    span_first = vmask.long().argmax(1)
    after_span = has_video[:, None] & (positions[None, :] > span_first[:, None])
    text_before = (kept & ~after_span).sum(1)

    # Every source as (sample, offset in the sample's sequence, source code).
    text_sample, text_pos = kept.nonzero(as_tuple=True)
    rank = kept.long().cumsum(1) - 1
    text_local = rank[text_sample, text_pos] + torch.where(after_span, sample_video_len[:, None], 0)[
        text_sample, text_pos]
    row_sample = sample_of_video[video_of_row]
    newline_sample = sample_of_video[newline_video]
    sample = torch.cat([text_sample, row_sample, newline_sample])
    local = torch.cat([text_local, text_before[row_sample] + row_offset,
                       text_before[newline_sample] + newline_offset])
    code = torch.cat([text_sample * L + text_pos, B * L + torch.arange(Kt, device=dev),
                      torch.full_like(newline_sample, B * L + Kt)])

    embeds, source_index, position_ids = _place(sample, local, code, seq_len, cu_seqlens, text_embeds, video_tokens,
                                                newline, padded, left_padding, length)
    return embeds, cu_seqlens.to(torch.int32), position_ids, source_index


def _block_offsets(layout, video_indices, cu, fcu, T, grid_width, tokens_per_frame):
    """-> (video of every row, its offset inside its video's block, video and offset of every newline)."""
    dev, Kt, V = cu.device, video_indices.shape[0], cu.numel() - 1
    video_of_row = torch.repeat_interleave(torch.arange(V, device=dev), cu.diff(), output_size=Kt)
    row_in_video = torch.arange(Kt, device=dev) - cu[video_of_row]
    empty = torch.zeros(0, dtype=torch.int64, device=dev)
    if layout == "none":
        row_offset, newline_video, newline_offset = row_in_video, empty, empty
    elif layout == "video":
        row_offset, newline_video, newline_offset = row_in_video, torch.arange(V, device=dev), cu.diff()
    elif layout == "frame":
        frame_of_row = torch.repeat_interleave(torch.arange(V * T, device=dev), fcu.diff(), output_size=Kt)
        row_offset = row_in_video + frame_of_row % T  # one newline per earlier frame of the video
        frames = torch.arange(V * T, device=dev)
        newline_video = frames // T
        newline_offset = fcu[frames + 1] - cu[newline_video] + frames % T
    else:  # grid
        N, W = tokens_per_frame, grid_width
        key = video_indices // N * -(-N // W) + video_indices % N // W  # (frame, grid row), ordered
        ends = torch.ones(Kt, dtype=torch.bool, device=dev)
        ends[:-1] = key[:-1] != key[1:]
        newlines_before = ends.long().cumsum(0) - ends.long()
        row_offset = row_in_video + newlines_before - newlines_before[cu[video_of_row]]
        newline_video, newline_offset = video_of_row[ends], row_offset[ends] + 1
    return video_of_row, row_offset, newline_video, newline_offset


def _place(sample, local, code, seq_len, cu_seqlens, text_embeds, video_tokens, newline, padded, left_padding, length):
    """Scatter every source (sample, offset in its sequence, source code) to its output row."""
    B, L, D = text_embeds.shape
    dev = text_embeds.device
    if padded:
        L_out = int(seq_len.max()) if length is None else length
        shift = L_out - seq_len if left_padding else torch.zeros_like(seq_len)
        dest = sample * L_out + shift[sample] + local
        rows = B * L_out
    else:
        rows = int(cu_seqlens[-1]) if length is None else length
        dest = cu_seqlens[sample] + local
    source_index = torch.full((rows,), -1, dtype=torch.int64, device=dev).index_put_((dest,), code)
    position_ids = torch.zeros(rows, dtype=torch.int64, device=dev).index_put_((dest,), local)
    table = torch.cat([
        text_embeds.reshape(B * L, D),
        video_tokens,
        (newline if newline is not None else text_embeds.new_zeros(D)).reshape(1, D),
        text_embeds.new_zeros(1, D),  # padding
    ])
    embeds = table[torch.where(source_index < 0, table.shape[0] - 1, source_index)]
    if padded:
        embeds, source_index, position_ids = (
            embeds.view(B, L_out, D), source_index.view(B, L_out), position_ids.view(B, L_out))
    return embeds, source_index, position_ids
