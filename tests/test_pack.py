"""pack_multimodal / unpack: the op equals a per-sample Python reference, bit for bit."""

from __future__ import annotations

import pytest
import torch
from helpers import DTYPES

try:  # only test_random_batches needs it; the lent GPU machines may not have it
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:
    given = settings = st = None

from kvtp_kernels import ops
from kvtp_kernels import reference as ref
from kvtp_kernels.api import PrunedTokens
from kvtp_kernels.pack import LAYOUTS, pack_multimodal, unpack

pytestmark = pytest.mark.skipif(not ops.HAS_CPP, reason=f"C++ extension missing: {ops.CPP_IMPORT_ERROR}")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and ops._C.WITH_CUDA else [])
OUTPUT_FORMS = [("varlen", "right"), ("padded", "right"), ("padded", "left")]
GRID_WIDTH = 3


# ----------------------------------------------------------------------------------
# The oracle: one sample at a time, Python lists, slices and torch.cat
# ----------------------------------------------------------------------------------
def loop_reference(text_embeds, text_mask, video_mask, video, newline, layout, grid_width, tokens_per_frame,
                   sample_to_video, output, padding_side):
    """-> (embeds, cu_seqlens, attention_mask or None, position_ids, source_index)."""
    B, L, D = text_embeds.shape
    text_ok = [[bool(x) for x in row] for row in (text_mask.tolist() if text_mask is not None else [[1] * L] * B)]
    span_ok = [[bool(x) for x in row] for row in video_mask.tolist()]
    if video is not None:
        tokens, indices, fcu = video.tokens, video.indices.tolist(), video.frame_cu_seqlens.tolist()
        T, Kt = video.frame_counts.shape[-1], video.tokens.shape[0]
    else:
        Kt = 0
    newline_code = B * L + Kt
    seqs, codes = [], []
    for b in range(B):
        v = (b if sample_to_video is None else sample_to_video[b]) if video is not None else -1
        text = [pos for pos in range(L) if text_ok[b][pos] and not span_ok[b][pos]]
        span = [pos for pos in range(L) if span_ok[b][pos]]
        before = [pos for pos in text if v < 0 or pos < span[0]]
        after = [pos for pos in text if v >= 0 and pos > span[-1]]
        pieces, code = [text_embeds[b, before]], [b * L + pos for pos in before]
        if v >= 0:
            for t in range(T):
                lo, hi = fcu[v * T + t], fcu[v * T + t + 1]
                if layout == "grid":
                    grid_rows = {}  # grid row -> its video rows (dicts keep insertion order)
                    for k in range(lo, hi):
                        grid_rows.setdefault(indices[k] % tokens_per_frame // grid_width, []).append(k)
                    for group in grid_rows.values():
                        pieces += [tokens[group[0]:group[-1] + 1], newline[None]]
                        code += [B * L + k for k in group] + [newline_code]
                    continue
                pieces.append(tokens[lo:hi])
                code += [B * L + k for k in range(lo, hi)]
                if layout == "frame":
                    pieces.append(newline[None])
                    code.append(newline_code)
            if layout == "video":
                pieces.append(newline[None])
                code.append(newline_code)
        pieces.append(text_embeds[b, after])
        code.extend(b * L + pos for pos in after)
        seqs.append(torch.cat(pieces))
        codes.append(code)

    lens = [len(c) for c in codes]
    cu_seqlens = torch.tensor([0] + lens, dtype=torch.int64).cumsum(0).to(torch.int32)
    if output == "varlen":
        return (torch.cat(seqs), cu_seqlens, None, torch.cat([torch.arange(n) for n in lens]),
                torch.tensor(sum(codes, []), dtype=torch.int64))
    L_out = max(lens)
    rows, masks, positions, sources = [], [], [], []
    for seq, code, n in zip(seqs, codes, lens):
        pad = L_out - n
        parts = [seq, seq.new_zeros(pad, D)]
        mask, pos, src = [1] * n + [0] * pad, list(range(n)) + [0] * pad, code + [-1] * pad
        if padding_side == "left":
            parts = parts[::-1]
            mask, pos, src = mask[n:] + mask[:n], pos[n:] + pos[:n], src[n:] + src[:n]
        rows.append(torch.cat(parts))
        masks.append(mask)
        positions.append(pos)
        sources.append(src)
    return (torch.stack(rows), cu_seqlens, torch.tensor(masks), torch.tensor(positions), torch.tensor(sources))


# ----------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------
def make_video(counts: torch.Tensor, N: int, D: int, dtype, device) -> PrunedTokens:
    """PrunedTokens of V videos with the given per-frame keep counts [V, T] (random tokens kept)."""
    V, T = counts.shape
    tokens = torch.randn(V, T, N, D).to(dtype)
    packed, indices, frame_counts, cu, fcu = ref.prune_tokens_ref(tokens, counts, torch.rand(V, T, N))
    fields = (packed, indices, frame_counts, cu, fcu)
    return PrunedTokens(*(x.to(device) for x in fields), int(counts.sum(1).max()))


def make_case(name: str, dtype, device):
    """A batch: dict of pack_multimodal's arguments (grid layout's N included).

    B1: one sample, D=64 (16-byte rows for every dtype), span in the middle.
    B5: D=19 (odd rows), different text lengths (left and right padding, a hole in
    the text mask), a text-only sample, a video that kept no token, a frame that kept
    no token, spans at the start and at the end of a sample's text, N=7 not a multiple
    of the grid width, videos mapped to samples out of order.
    """
    T, N = 3, 7
    if name == "B1":
        B, L, D = 1, 10, 64
        text_mask = torch.ones(B, L, dtype=torch.int64)
        video_mask = torch.zeros(B, L, dtype=torch.bool)
        video_mask[0, 2:6] = True
        counts = torch.tensor([[4, 0, 7]], dtype=torch.int32)
        sample_to_video = None
    else:
        B, L, D = 5, 16, 19
        text_mask = torch.zeros(B, L, dtype=torch.bool)
        video_mask = torch.zeros(B, L, dtype=torch.bool)
        text_mask[0, :12], video_mask[0, 3:7] = True, True  # right padded
        text_mask[1, 5:] = True  # left padded, no video
        text_mask[2, 2:], video_mask[2, 2:5] = True, True  # span starts the text
        text_mask[3, :], video_mask[3, 13:] = True, True  # span ends the text; its video keeps nothing
        text_mask[4, :], video_mask[4, 4:7] = True, True
        text_mask[4, 8:10] = False  # a hole in the text
        counts = torch.randint(0, N + 1, (4, T), dtype=torch.int32)
        counts[0, 1] = 0
        counts[0, 2] = N
        counts[3] = 0
        sample_to_video = [2, -1, 0, 3, 1]
    video = make_video(counts, N, D, dtype, device)
    return dict(
        text_embeds=torch.randn(B, L, D).to(dtype).to(device),
        text_mask=text_mask.to(device),
        video_mask=video_mask.to(device),
        video=video,
        newline=torch.randn(D).to(dtype).to(device),
        grid_width=GRID_WIDTH,
        tokens_per_frame=N,
        sample_to_video=sample_to_video,
    )


def run(case, layout, output="varlen", padding_side="right", **kw):
    return pack_multimodal(case["text_embeds"], case["text_mask"], case["video_mask"], case["video"],
                           newline=case["newline"], layout=layout, grid_width=case["grid_width"],
                           tokens_per_frame=case["tokens_per_frame"], sample_to_video=case["sample_to_video"],
                           output=output, padding_side=padding_side, **kw)


def run_loop_reference(case, layout, output="varlen", padding_side="right"):
    cpu = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in case.items()}
    video = case["video"]
    if video is not None:
        video = PrunedTokens(*(x.cpu() if isinstance(x, torch.Tensor) else x for x in video))
    return loop_reference(cpu["text_embeds"], cpu["text_mask"], cpu["video_mask"], video, cpu["newline"], layout,
                          cpu["grid_width"], cpu["tokens_per_frame"], cpu["sample_to_video"], output, padding_side)


def run_vectorised_reference(case, layout, output="varlen", padding_side="right", length=None):
    video, B = case["video"], case["text_embeds"].shape[0]
    mapping = case["sample_to_video"] if case["sample_to_video"] is not None else list(range(B))
    return ref.pack_multimodal_ref(
        case["text_embeds"], case["text_mask"], case["video_mask"], torch.tensor(mapping), video.tokens,
        video.indices, video.cu_seqlens, video.frame_cu_seqlens, case["newline"] if layout != "none" else None,
        layout, case["grid_width"], case["tokens_per_frame"], output == "padded", padding_side == "left", length)


def bits(t: torch.Tensor) -> torch.Tensor:
    """The bit pattern, so that equality is exact (NaN payloads, signed zeros)."""
    return t.view({8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}[t.element_size()])


def assert_same_bits(out, expected):
    assert out.dtype == expected.dtype and out.shape == expected.shape, (out.shape, expected.shape)
    assert torch.equal(bits(out.cpu()), bits(expected.cpu())), "rows are not bit-identical"


def assert_matches(out, expected):
    embeds, cu_seqlens, attention_mask, position_ids, source_index = expected
    assert_same_bits(out.embeds, embeds)
    assert out.cu_seqlens.dtype == torch.int32 and torch.equal(out.cu_seqlens.cpu(), cu_seqlens)
    assert out.position_ids.dtype == torch.int64 and torch.equal(out.position_ids.cpu(), position_ids)
    assert out.source_index.dtype == torch.int64 and torch.equal(out.source_index.cpu(), source_index)
    if attention_mask is None:
        assert out.attention_mask is None
        assert out.max_seqlen == int(cu_seqlens.diff().max())
    else:
        assert torch.equal(out.attention_mask.cpu().long(), attention_mask)
        assert out.max_seqlen == out.embeds.shape[1]


# ----------------------------------------------------------------------------------
# Equality with the references
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("output,padding_side", OUTPUT_FORMS, ids=lambda x: x)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", ["B1", "B5"])
def test_matches_references(case, layout, output, padding_side, dtype, device):
    inputs = make_case(case, dtype, device)
    out = run(inputs, layout, output, padding_side)
    assert_matches(out, run_loop_reference(inputs, layout, output, padding_side))
    embeds, cu_seqlens, position_ids, source_index = run_vectorised_reference(inputs, layout, output, padding_side)
    assert_same_bits(out.embeds, embeds)
    assert torch.equal(out.cu_seqlens, cu_seqlens)
    assert torch.equal(out.position_ids, position_ids)
    assert torch.equal(out.source_index, source_index)


def test_case_covers_what_it_claims():
    """The B5 batch really has the edge cases the equality tests rely on."""
    out = run(make_case("B5", torch.float32, "cpu"), "grid")
    video = make_case("B5", torch.float32, "cpu")["video"]
    assert video.frame_counts[3].sum() == 0 and video.frame_counts[0, 1] == 0
    lens = out.cu_seqlens.diff().tolist()
    assert len(set(lens)) == len(lens), f"sample lengths should all differ: {lens}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_text_only_batch(layout, device):
    case = make_case("B5", torch.float16, device)
    case["video"], case["video_mask"], case["sample_to_video"] = None, torch.zeros_like(case["video_mask"]), None
    out = run(case, layout)
    assert_matches(out, run_loop_reference(case, layout))
    assert (out.source_index < 5 * 16).all()


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    case = make_case("B5", torch.bfloat16, device)
    B, L, D = case["text_embeds"].shape
    base = torch.randn(B, 2 * L, D + 5).to(torch.bfloat16).to(device)
    case["text_embeds"] = base[:, ::2, 3:3 + D]  # strided along L, offset rows (unaligned)
    v = case["video"]
    wide = torch.randn(v.tokens.shape[0], 2 * D).to(torch.bfloat16).to(device)
    case["video"] = v._replace(tokens=wide[:, ::2])  # D not unit-stride: copied to be contiguous
    case["newline"] = torch.randn(2 * D).to(torch.bfloat16).to(device)[::2]
    for layout in LAYOUTS:
        for output, side in OUTPUT_FORMS:
            assert_matches(run(case, layout, output, side), run_loop_reference(case, layout, output, side))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("output,padding_side", OUTPUT_FORMS, ids=lambda x: x)
def test_given_length(output, padding_side, device):
    """A caller-given length (the no-sync path) gives the same rows, extra rows are zero padding."""
    case = make_case("B5", torch.float32, device)
    full = run(case, "grid", output, padding_side)
    size = full.embeds.shape[0] if output == "varlen" else full.embeds.shape[1]
    same = run(case, "grid", output, padding_side, length=size)
    for got, want in zip(same[:5], full[:5]):
        assert (got is None and want is None) or torch.equal(got, want)
    longer = run(case, "grid", output, padding_side, length=size + 3)
    embeds, _, position_ids, source_index = run_vectorised_reference(case, "grid", output, padding_side, size + 3)
    assert_same_bits(longer.embeds, embeds)
    assert torch.equal(longer.position_ids, position_ids) and torch.equal(longer.source_index, source_index)
    assert longer.max_seqlen == size + 3
    if device == "cpu":  # the check needs the summary, read for free on CPU only
        with pytest.raises(ValueError, match="`length` must be >= "):
            run(case, "grid", output, padding_side, length=size - 1)


# ----------------------------------------------------------------------------------
# unpack, nested tensors
# ----------------------------------------------------------------------------------
def kept_text(case):
    keep = case["text_mask"].bool() & ~case["video_mask"].bool()
    return torch.where(keep[..., None], case["text_embeds"], 0)  # +0.0 where dropped, like unpack


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_nested_tensor_round_trip(layout, device):
    case = make_case("B5", torch.bfloat16, device)
    out = run(case, layout)
    nested = torch.nested.nested_tensor_from_jagged(out.embeds, out.cu_seqlens.long())
    expected = run_loop_reference(case, layout)
    for b, sample in enumerate(nested.unbind()):
        cu = expected[1]
        assert_same_bits(sample, expected[0][cu[b]:cu[b + 1]])
    back = unpack(nested, out)
    assert_same_bits(back.text, kept_text(case))
    assert_same_bits(back.video, case["video"].tokens)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_unpack_padded_and_hidden_states(padding_side, device):
    case = make_case("B5", torch.float32, device)
    out = run(case, "frame", "padded", padding_side)
    back = unpack(out.embeds, out)
    assert_same_bits(back.text, kept_text(case))
    assert_same_bits(back.video, case["video"].tokens)
    # Other row features (e.g. an LLM's hidden states, any width) come back by the same map.
    hidden = torch.randn(*out.embeds.shape[:-1], 5, device=device)
    rows = unpack(hidden, out)
    text_pos = out.source_index.clamp_min(0)
    is_text = (out.source_index >= 0) & (out.source_index < 5 * 16)
    assert torch.equal(rows.text.reshape(-1, 5)[text_pos[is_text]], hidden[is_text])
    with pytest.raises(ValueError, match="`values` must be"):
        unpack(hidden[:, :-1], out)


# ----------------------------------------------------------------------------------
# Autograd, opcheck, compile
# ----------------------------------------------------------------------------------
def small_case(device):
    """B5 in float64 with D=2, so that gradcheck's numeric Jacobian stays small."""
    case = make_case("B5", torch.float64, device)
    case["text_embeds"] = case["text_embeds"][..., :2].contiguous()
    case["newline"] = case["newline"][:2].contiguous()
    case["video"] = case["video"]._replace(tokens=case["video"].tokens[:, :2].contiguous())
    return case


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("output,padding_side", [("varlen", "right"), ("padded", "left")], ids=lambda x: x)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradcheck(layout, output, padding_side, device):
    case = small_case(device)

    def fn(text_embeds, video_tokens, newline):
        inputs = dict(case, text_embeds=text_embeds, newline=newline, video=case["video"]._replace(tokens=video_tokens))
        return run(inputs, layout, output, padding_side).embeds

    args = [case["text_embeds"], case["video"].tokens, case["newline"]]
    assert torch.autograd.gradcheck(fn, [a.clone().requires_grad_() for a in args])


@pytest.mark.parametrize("device", DEVICES)
def test_gradients_match_loop_reference(device):
    case = make_case("B5", torch.float32, device)
    leaves = [case["text_embeds"].clone().requires_grad_(), case["video"].tokens.clone().requires_grad_(),
              case["newline"].clone().requires_grad_()]
    ref_leaves = [x.detach().cpu().requires_grad_() for x in leaves]
    out = run(dict(case, text_embeds=leaves[0], video=case["video"]._replace(tokens=leaves[1]), newline=leaves[2]),
              "grid")
    grad = torch.randn(out.embeds.shape, device=device)
    out.embeds.backward(grad)
    cpu_case = dict(case, text_embeds=ref_leaves[0], video=case["video"]._replace(tokens=ref_leaves[1]),
                    newline=ref_leaves[2])
    run_loop_reference(cpu_case, "grid")[0].backward(grad.cpu())
    assert torch.equal(leaves[0].grad.cpu(), ref_leaves[0].grad)  # text and video rows: one copy each
    assert torch.equal(leaves[1].grad.cpu(), ref_leaves[1].grad)
    torch.testing.assert_close(leaves[2].grad.cpu(), ref_leaves[2].grad)  # the newline: a sum, any order


def op_arguments(case, layout, output, padding_side):
    """The two ops' argument tuples, as pack_multimodal builds them."""
    video = case["video"]
    sample_video = torch.tensor(case["sample_to_video"], device=video.tokens.device)
    T = video.frame_counts.shape[-1]
    plan_args = (case["text_mask"], case["video_mask"], sample_video, video.cu_seqlens, video.indices, layout, T,
                 case["grid_width"], case["tokens_per_frame"])
    cu_seqlens, sample_info, text_rank, newline_cu, summary = torch.ops.kvtp.pack_plan(*plan_args)
    length = int(summary[1] if output == "padded" else summary[0])
    rows_args = (case["text_embeds"].requires_grad_(), video.tokens.requires_grad_(),
                 case["newline"].requires_grad_(), cu_seqlens, sample_info, text_rank, video.frame_cu_seqlens,
                 newline_cu, layout, T, length, output == "padded", padding_side == "left")
    return plan_args, rows_args


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("output,padding_side", OUTPUT_FORMS, ids=lambda x: x)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_opcheck(layout, output, padding_side, device):
    plan_args, rows_args = op_arguments(small_case(device), layout, output, padding_side)
    torch.library.opcheck(torch.ops.kvtp.pack_plan.default, plan_args)
    torch.library.opcheck(torch.ops.kvtp.pack_rows.default, rows_args)


def test_compile_fullgraph_with_given_length():
    case = make_case("B5", torch.float32, "cpu")
    eager = run(case, "grid", "padded", "left")
    length = eager.embeds.shape[1]

    @torch.compile(fullgraph=True, backend="aot_eager")
    def compiled(text_embeds, newline):
        out = run(dict(case, text_embeds=text_embeds, newline=newline), "grid", "padded", "left", length=length)
        return out.embeds, out.source_index

    embeds, source_index = compiled(case["text_embeds"], case["newline"])
    assert torch.equal(embeds, eager.embeds) and torch.equal(source_index, eager.source_index)


# ----------------------------------------------------------------------------------
# Random batches (hypothesis): every layout and output against the loop reference
# ----------------------------------------------------------------------------------
def random_batches(draw):
    B = draw(st.integers(1, 4))
    L = draw(st.integers(1, 12))
    T, N, W = draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
    text_mask = torch.tensor([[draw(st.booleans()) for _ in range(L)] for _ in range(B)])
    video_mask = torch.zeros(B, L, dtype=torch.bool)
    with_video = []
    for b in range(B):
        runs = [(s, e) for s in range(L) for e in range(s + 1, L + 1) if all(text_mask[b, s:e])]
        if runs and draw(st.booleans()):
            s, e = draw(st.sampled_from(runs))
            video_mask[b, s:e] = True
            with_video.append(b)
    order = draw(st.permutations(with_video))
    mapping = [-1] * B
    for v, b in enumerate(order):
        mapping[b] = v
    V = len(order)
    counts = torch.tensor([[draw(st.integers(0, N)) for _ in range(T)] for _ in range(V)], dtype=torch.int32)
    return dict(B=B, L=L, T=T, N=N, W=W, text_mask=text_mask, video_mask=video_mask, mapping=mapping,
                counts=counts.reshape(V, T), layout=draw(st.sampled_from(LAYOUTS)),
                output=draw(st.sampled_from(OUTPUT_FORMS)))


def _random_batches_test(batch):
    D = 3
    V = batch["counts"].shape[0]
    video = make_video(batch["counts"], batch["N"], D, torch.float32, "cpu") if V else None
    case = dict(text_embeds=torch.randn(batch["B"], batch["L"], D), text_mask=batch["text_mask"],
                video_mask=batch["video_mask"], video=video, newline=torch.randn(D), grid_width=batch["W"],
                tokens_per_frame=batch["N"], sample_to_video=batch["mapping"] if V else None)
    output, side = batch["output"]
    out = run(case, batch["layout"], output, side)
    assert_matches(out, run_loop_reference(case, batch["layout"], output, side))


if st is not None:
    test_random_batches = settings(max_examples=60, deadline=None)(given(st.composite(random_batches)())(
        _random_batches_test))
else:
    @pytest.mark.skip(reason="hypothesis is not installed (pip install hypothesis)")
    def test_random_batches():
        pass


# ----------------------------------------------------------------------------------
# Bad input: a ValueError naming the argument, what it must be and what it is
# ----------------------------------------------------------------------------------
def _span_without_video(c):
    c["sample_to_video"] = [2, -1, 0, 3, 1]
    c["video_mask"][1, 6] = True


def _video_without_span(c):
    c["video_mask"][4] = False


def _split_span(c):
    c["video_mask"][4, 10:12] = True


def _span_outside_text(c):
    c["video_mask"][0, 12:14] = True  # sample 0's text ends at 12
    c["video_mask"][0, 7:12] = True


BAD_INPUTS = {
    "text_mask batch": (lambda c: c.update(text_mask=c["text_mask"][:4]), "text_mask"),
    "video_mask length": (lambda c: c.update(video_mask=c["video_mask"][:, :-1]), "video_mask"),
    "video_mask dtype": (lambda c: c.update(video_mask=c["video_mask"].float()), "video_mask"),
    "mapping length": (lambda c: c.update(sample_to_video=[2, -1, 0, 3]), "sample_to_video"),
    "mapping repeats a video": (lambda c: c.update(sample_to_video=[2, -1, 2, 3, 1]), "sample_to_video"),
    "mapping out of range": (lambda c: c.update(sample_to_video=[2, -1, 0, 4, 1]), "sample_to_video"),
    "identity needs V == B": (lambda c: c.update(sample_to_video=None), "sample_to_video"),
    "video without span": (_video_without_span, "video_mask"),
    "span without video": (_span_without_video, "video_mask"),
    "span not contiguous": (_split_span, "video_mask"),
    "span exceeds text": (_span_outside_text, "video_mask"),
    "video D": (lambda c: c.update(video=c["video"]._replace(tokens=c["video"].tokens[:, :-1])), "video.tokens"),
    "newline D": (lambda c: c.update(newline=c["newline"][:-1]), "newline"),
    "video dtype": (lambda c: c.update(video=c["video"]._replace(tokens=c["video"].tokens.double())), "video.tokens"),
    "newline dtype": (lambda c: c.update(newline=c["newline"].half()), "newline"),
    "newline missing": (lambda c: c.update(newline=None), "newline"),
    "cu_seqlens dtype": (lambda c: c.update(video=c["video"]._replace(cu_seqlens=c["video"].cu_seqlens.long())),
                         "video.cu_seqlens"),
    "frame_cu_seqlens dtype": (
        lambda c: c.update(video=c["video"]._replace(frame_cu_seqlens=c["video"].frame_cu_seqlens.long())),
        "video.frame_cu_seqlens"),
    "indices dtype": (lambda c: c.update(video=c["video"]._replace(indices=c["video"].indices.int())),
                      "video.indices"),
    "frame_counts dtype": (lambda c: c.update(video=c["video"]._replace(frame_counts=c["video"].frame_counts.long())),
                           "video.frame_counts"),
    "grid_width missing": (lambda c: c.update(grid_width=None), "grid_width"),
    "tokens_per_frame missing": (lambda c: c.update(tokens_per_frame=None), "tokens_per_frame"),
    "text_embeds not floating": (lambda c: c.update(text_embeds=c["text_embeds"].long()), "text_embeds"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_raises_value_error(name):
    mutate, arg = BAD_INPUTS[name]
    case = make_case("B5", torch.float32, "cpu")
    run(case, "grid")  # valid before the mutation
    mutate(case)
    with pytest.raises(ValueError, match=rf"`{arg}` must be .*; got .+"):
        run(case, "grid")


@pytest.mark.parametrize("kw,arg", [({"layout": "rows"}, "layout"), ({"output": "dense"}, "output"),
                                    ({"padding_side": "top"}, "padding_side"), ({"length": -1}, "length")])
def test_bad_options_raise_value_error(kw, arg):
    case = make_case("B1", torch.float32, "cpu")
    kw = dict(kw)
    layout = kw.pop("layout", "grid")
    with pytest.raises(ValueError, match=rf"`{arg}` must be .*; got .+"):
        run(case, layout, **kw)


# ----------------------------------------------------------------------------------
# Inconsistent PrunedTokens (issue 14, item 4): a ValueError naming the field
# ----------------------------------------------------------------------------------
def _pruned_case(device="cpu"):
    import kvtp_kernels

    B, T, N, D, L = 2, 3, 4, 5, 6
    pruned = kvtp_kernels.prune(torch.randn(B, T, N, D, device=device), torch.randn(B, T, device=device), 0.5)
    text = torch.randn(B, L, D, device=device)
    video_mask = torch.zeros(B, L, dtype=torch.bool, device=device)
    video_mask[:, 2:4] = True
    return text, video_mask, pruned


def _i32(values):
    return torch.tensor(values, dtype=torch.int32)


INCONSISTENT = {
    # the case: cu_seqlens [0, 100] over the rows of one video (106 rows came out before)
    "cu_seqlens past the rows": (lambda p: p._replace(cu_seqlens=_i32([0, 100, 200])), "video.cu_seqlens"),
    "cu_seqlens not starting at 0": (lambda p: p._replace(cu_seqlens=p.cu_seqlens + 1), "video.cu_seqlens"),
    # two outputs concatenated with non-cumulative offsets (the second video was dropped before)
    "cu_seqlens not cumulative": (lambda p: p._replace(cu_seqlens=_i32([0, 6, 6])), "video.cu_seqlens"),
    "frame_cu_seqlens decreasing": (lambda p: p._replace(frame_cu_seqlens=p.frame_cu_seqlens.flip(0)),
                                    "video.frame_cu_seqlens"),
    "frame_counts disagree": (lambda p: p._replace(frame_counts=p.frame_counts.flip(1)), "video.frame_counts"),
    "videos not at their first frame": (lambda p: p._replace(cu_seqlens=_i32([0, 5, 12])), "video.cu_seqlens"),
}


@pytest.mark.parametrize("name", list(INCONSISTENT))
@pytest.mark.parametrize("layout", ["grid", "none"])
def test_inconsistent_pruned_tokens_raise(name, layout):
    text, video_mask, pruned = _pruned_case()
    mutate, field = INCONSISTENT[name]
    newline = torch.randn(text.shape[-1])
    kw = dict(newline=newline, layout=layout, grid_width=2, tokens_per_frame=4)
    pack_multimodal(text, None, video_mask, pruned, **kw)  # valid before the mutation
    bad = mutate(pruned)
    if torch.equal(bad.frame_counts, pruned.frame_counts) and name == "frame_counts disagree":
        pytest.fail("the mutation did not change frame_counts")
    with pytest.raises(ValueError, match=rf"`{field}` must be consistent with the other PrunedTokens fields"):
        pack_multimodal(text, None, video_mask, bad, **kw)


def test_wrong_tokens_per_frame_raises():
    text, video_mask, pruned = _pruned_case()
    kw = dict(newline=torch.randn(text.shape[-1]), layout="grid", grid_width=2)
    pack_multimodal(text, None, video_mask, pruned, tokens_per_frame=4, **kw)
    for wrong in (2, 3, 9):
        with pytest.raises(ValueError, match=r"`video\.(indices|frame_counts)` must be consistent.*tokens_per_frame"):
            pack_multimodal(text, None, video_mask, pruned, tokens_per_frame=wrong, **kw)


def test_number_types_are_accepted():
    import numpy as np

    text, video_mask, pruned = _pruned_case()
    kw = dict(newline=torch.randn(text.shape[-1]), layout="grid")
    want = pack_multimodal(text, None, video_mask, pruned, grid_width=2, tokens_per_frame=4, length=30,
                           sample_to_video=[0, 1], **kw)
    got = pack_multimodal(text, None, video_mask, pruned, grid_width=np.int64(2), tokens_per_frame=np.int32(4),
                          length=np.int64(30), sample_to_video=np.array([0, 1]), **kw)
    assert torch.equal(want.embeds, got.embeds) and torch.equal(want.source_index, got.source_index)
    got = pack_multimodal(text, None, video_mask, pruned, grid_width=torch.tensor(2), tokens_per_frame=4,
                          length=torch.tensor(30), **kw)
    assert torch.equal(want.embeds, got.embeds)
    with pytest.raises(ValueError, match=r"`length` must be None or an int >= 0; got 30.0"):
        pack_multimodal(text, None, video_mask, pruned, grid_width=2, tokens_per_frame=4, length=30.0, **kw)
