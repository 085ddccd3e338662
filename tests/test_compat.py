"""kvtp_kernels.integrations._compat: one test per difference between the supported transformers releases.

Each helper is tested on both shapes of the difference (stand-in classes with the old and the
new layout), and on the installed release's real classes; `.ci/run` runs this file with
transformers 5.17.0, the pinned 5.18.0 and the newest release, so every real branch runs in CI.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys

import pytest
import tiny_models
import torch
import transformers
from tiny_models import SIZE, N
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from kvtp_kernels.integrations import _compat, apply_kvtp
from kvtp_kernels.predictor import FrameRelevancePredictor


@pytest.mark.parametrize("text, expected", [("5.17.0", (5, 17, 0)), ("5.24.0", (5, 24, 0)),
                                            ("5.25.0.dev0", (5, 25, 0)), ("5.18.0rc1", (5, 18, 0)),
                                            ("6.0", (6, 0))])
def test_parse_version(text, expected):
    assert _compat.parse_version(text) == expected


def test_installed_release_is_in_the_supported_range():
    assert _compat.transformers_version()[:2] >= _compat.MIN_TRANSFORMERS


@pytest.mark.parametrize("old", ["5.16.1", "4.57.6"])
def test_older_release_is_refused_naming_the_minimum(monkeypatch, old):
    model = tiny_models.tiny_llava_model()
    # sys.modules' entry, not this file's `transformers`: building a model can re-register the lazy module
    monkeypatch.setattr(sys.modules["transformers"], "__version__", old)
    with pytest.raises(ImportError, match=rf"apply_kvtp supports transformers >= 5\.17; found {old}"):
        apply_kvtp(model)
    with pytest.raises(ImportError, match=rf"kvtp_kernels.predictor supports transformers >= 5\.17; found {old}"):
        FrameRelevancePredictor.from_pretrained("unused-path")
    with pytest.raises(RuntimeError, match="kvtp eval supports transformers >= 5.17"):
        _compat.require_transformers("kvtp eval", RuntimeError)


# ----------------------------------------------------------------------------------
# 5.18.0: get_video_features(pixel_values=) -> get_video_features(pixel_values_videos=);
#         the per-video image_newline moved from forward into get_video_features
# ----------------------------------------------------------------------------------
def test_video_features_keyword_on_both_signatures():
    def before_5_18(pixel_values, vision_feature_layer=None, **kwargs): ...

    def from_5_18(pixel_values_videos, vision_feature_layer=None, **kwargs): ...

    assert _compat.video_features_keyword(before_5_18) == "pixel_values"
    assert _compat.video_features_keyword(from_5_18) == "pixel_values_videos"


def test_get_video_features_on_the_installed_release():
    model = tiny_models.tiny_llava_model()
    T = 3
    pixels = torch.randn(2, T, 3, SIZE, SIZE)
    with torch.no_grad():
        pooled = _compat.get_video_features(model, pixels, return_dict=True).pooler_output
        inner = _compat.get_video_features(model.model, pixels, return_dict=True).pooler_output
    newline = int(_compat.video_features_end_with_newline())
    assert newline == int(_compat.transformers_version() >= (5, 18))
    assert pooled.shape == (2, T * N + newline, model.config.text_config.hidden_size)
    torch.testing.assert_close(pooled, inner, rtol=0, atol=0)
    if newline:  # the row HF appends is the model's image_newline
        torch.testing.assert_close(pooled[:, -1], model.model.image_newline.detach().expand(2, -1), rtol=0, atol=0)


# ----------------------------------------------------------------------------------
# 5.24.0: past_key_values -> cache; video_hidden_states -> video_outputs (+ a read-only property)
# ----------------------------------------------------------------------------------
def test_passed_cache_under_either_name():
    cache = object()
    assert _compat.passed_cache({"past_key_values": cache}) is cache
    assert _compat.passed_cache({"cache": cache}) is cache
    assert _compat.passed_cache({"cache": None, "past_key_values": cache}) is cache
    assert _compat.passed_cache({}) is None


def test_cache_keyword_of_the_installed_release_is_known():
    forward = inspect.signature(transformers.LlavaOnevisionForConditionalGeneration.forward).parameters
    assert any(name in forward for name in _compat.CACHE_KEYWORDS)


@dataclasses.dataclass
class OutputBefore524(ModelOutput):
    """The layout up to 5.23: a plain field."""

    logits: torch.Tensor | None = None
    video_hidden_states: torch.Tensor | None = None


@dataclasses.dataclass
class OutputFrom524(ModelOutput):
    """The layout from 5.24: video_outputs, and video_hidden_states a read-only property over it."""

    logits: torch.Tensor | None = None
    video_outputs: BaseModelOutputWithPooling | None = None

    @property
    def video_hidden_states(self):
        return self.video_outputs.pooler_output


@pytest.mark.parametrize("cls", [OutputBefore524, OutputFrom524])
def test_with_video_features_builds_a_new_output(cls):
    logits, features = torch.randn(1, 3, 5), torch.randn(7, 4)
    out = cls(logits=logits)
    if cls is OutputFrom524:
        with pytest.raises(AttributeError):  # what broke apply_kvtp on 5.24
            out["video_hidden_states"] = features
    new = _compat.with_video_features(out, features)
    assert type(new) is cls and new is not out
    assert new.logits is logits and new["logits"] is logits
    assert new.video_hidden_states is features and _compat.video_features_of(new) is features
    assert _compat.video_features_of(out) is None if cls is OutputFrom524 else out.video_hidden_states is None


def test_with_video_features_on_the_installed_output_class():
    cls = transformers.models.llava_onevision.modeling_llava_onevision.LlavaOnevisionCausalLMOutputWithPast
    features = torch.randn(7, 4)
    new = _compat.with_video_features(cls(logits=torch.randn(1, 3, 5)), features)
    assert type(new) is cls and _compat.video_features_of(new) is features


def test_with_video_features_leaves_tuples_alone():
    out = (torch.randn(1, 3, 5),)
    assert _compat.with_video_features(out, torch.randn(2, 4)) is out


def test_with_sequences():
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    seq = torch.arange(6).reshape(2, 3)
    assert _compat.with_sequences(torch.zeros(2, 1), seq) is seq
    out = GenerateDecoderOnlyOutput(sequences=torch.zeros(2, 1, dtype=torch.long), scores=(torch.randn(2, 5),))
    new = _compat.with_sequences(out, seq)
    assert new.sequences is seq and new.scores is out.scores and out.sequences.shape == (2, 1)


# ----------------------------------------------------------------------------------
# Qwen3-VL deepstack layout: one tensor per level (5.17) or a tuple per video (5.18.0 on)
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("split", [False, True], ids=["5.17 tensor per level", "5.18 tuple per video"])
def test_deepstack_levels_and_layout_round_trip(split):
    videos = [[torch.randn(3, 4), torch.randn(5, 4)], [torch.randn(3, 4), torch.randn(5, 4)]]  # 2 levels x 2 videos
    features = [tuple(level) if split else torch.cat(level) for level in videos]
    levels = _compat.deepstack_levels(features)
    assert [lvl.shape for lvl in levels] == [(8, 4), (8, 4)]
    torch.testing.assert_close(levels[1], torch.cat(videos[1]), rtol=0, atol=0)
    rebuilt = _compat.deepstack_like(features, videos)
    assert isinstance(rebuilt[0], tuple) == split
    for got, want in zip(rebuilt, features):
        torch.testing.assert_close(torch.cat(list(got)) if split else got,
                                   torch.cat(list(want)) if split else want, rtol=0, atol=0)


def test_deepstack_layout_of_the_installed_release():
    model = tiny_models.tiny_qwen_model("qwen3_vl")
    grids = [(2, 4, 4), (1, 4, 6)]
    with torch.no_grad():
        out = model.model.get_video_features(tiny_models.qwen_pixels(grids), torch.tensor(grids), return_dict=True)
    levels = _compat.deepstack_levels(out.deepstack_features)
    assert [lvl.shape[0] for lvl in levels] == [8 + 6] * 2
    rebuilt = _compat.deepstack_like(out.deepstack_features, [list(lvl.split([8, 6])) for lvl in levels])
    assert isinstance(rebuilt[0], tuple) == isinstance(out.deepstack_features[0], (list, tuple))


@pytest.mark.parametrize("shape", [(3, 4, 5), (12, 5)], ids=["to 5.20 [T, N, D]", "5.21 [T*N, D]"])
def test_frames_by_tokens(shape):
    rows = torch.arange(60.0).reshape(shape)
    out = _compat.frames_by_tokens(rows, 3)
    assert out.shape == (3, 4, 5)
    torch.testing.assert_close(out.reshape(-1), torch.arange(60.0), rtol=0, atol=0)
