"""kvtp_kernels.video.load_video: sampling rule, pixels, errors, on real sample videos."""

import av
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import sample_video  # decoded here with PyAV only

from kvtp_kernels.video import VideoDecodeError, load_video, select_frames


def decode_all(path, keep):
    """Every frame's time (presentation order) and the RGB pixels of frames ``keep``, straight from PyAV."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        frames = [(torch.from_numpy(f.to_ndarray(format="rgb24")) if i in keep else None, float(f.time))
                  for i, f in enumerate(container.decode(stream))]
    return frames


def test_one_frame_per_second_real_video():
    # carphone: 120 frames at 29.97 fps (4 s) -> samples at 0, 1, 2, 3 s = frames 0, 30, 60, 90
    path = sample_video("carphone_pristine.mp4")
    frames, times = load_video(path)
    everything = decode_all(path, {0, 30, 60, 90})
    assert len(everything) == 120
    assert frames.dtype == torch.uint8 and frames.shape == (4, 144, 176, 3)
    assert times.dtype == torch.float64
    for k, i in enumerate([0, 30, 60, 90]):
        assert torch.equal(frames[k], everything[i][0])
        assert times[k].item() == pytest.approx(everything[i][1])
    torch.testing.assert_close(times, torch.tensor([0.0, 1.001, 2.002, 3.003], dtype=torch.float64))


def test_uniform_when_over_max_frames_with_b_frames():
    # bikes: 250 frames at 25 fps with B-frames (decode order != presentation order).
    # 1 fps gives 10 frames > 4 -> floor(i * 249 / 3) = 0, 83, 166, 249.
    path = sample_video("bikes.mp4")
    frames, times = load_video(path, fps=1.0, max_frames=4)
    chosen = [0, 83, 166, 249]
    everything = decode_all(path, set(chosen))
    assert frames.shape == (4, 272, 640, 3)
    for k, i in enumerate(chosen):
        assert torch.equal(frames[k], everything[i][0])
    torch.testing.assert_close(times, torch.tensor([everything[i][1] for i in chosen], dtype=torch.float64))


def test_every_frame_and_no_cap():
    path = sample_video("carphone_distorted.mp4")
    frames, times = load_video(path, fps=None, max_frames=None)
    assert frames.shape[0] == 120
    assert torch.all(times[1:] > times[:-1])


def test_select_frames_rules():
    # nearest frame to each k/fps; ties to the earlier frame; no duplicates
    assert select_frames([0.0, 0.5, 1.5, 2.0, 10.0], 1.0, None) == [0, 1, 3, 4]
    # variable frame rate, offset start
    assert select_frames([2.0, 2.1, 2.9, 3.2, 4.05], 1.0, None) == [0, 2, 4]
    # a sampling rate above the frame rate does not repeat frames
    assert select_frames([0.0, 1.0, 2.0], 10.0, None) == [0, 1, 2]
    assert select_frames([0.0, 1.0, 2.0], None, 2) == [0, 2]
    assert select_frames([0.0, 1.0, 2.0], 1.0, 1) == [0]
    assert select_frames([5.0], 1.0, 128) == [0]
    assert select_frames([], 1.0, 128) == []


@settings(max_examples=60, deadline=None)
@given(
    gaps=st.lists(st.floats(0.001, 3.0), min_size=0, max_size=60),
    fps=st.one_of(st.none(), st.floats(0.1, 30.0)),
    max_frames=st.one_of(st.none(), st.integers(1, 20)),
)
def test_select_frames_properties(gaps, fps, max_frames):
    times = [0.0]
    for g in gaps:
        times.append(times[-1] + g)
    chosen = select_frames(times, fps, max_frames)
    assert chosen, "at least one frame"
    assert chosen == sorted(set(chosen))
    assert 0 <= chosen[0] and chosen[-1] < len(times)
    assert chosen[0] == 0
    if max_frames is not None:
        assert len(chosen) <= max_frames
    if fps is not None and (max_frames is None or len(chosen) < max_frames):
        # every sample time t0 + k/fps has its nearest frame chosen
        k = 0
        while k / fps <= times[-1] + 1e-9:
            nearest = min(range(len(times)), key=lambda i: (abs(times[i] - k / fps), i))
            assert nearest in chosen
            k += 1


# ----------------------------------------------------------------------------------
# Errors name the path and the reason
# ----------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    path = tmp_path / "nope.mp4"
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        load_video(path)


def test_not_a_video(tmp_path):
    path = tmp_path / "text.mp4"
    path.write_text("this is not a video")
    with pytest.raises(VideoDecodeError, match=r"text\.mp4.*FFmpeg cannot open it") as info:
        load_video(path)
    assert info.value.path == str(path) and "cannot open" in info.value.reason
    with pytest.raises(VideoDecodeError, match="directory"):
        load_video(tmp_path)


def _mux_silence(container, samples: int) -> None:
    """Add an 8 kHz mono audio stream holding ``samples`` silent samples."""
    stream = container.add_stream("pcm_s16le", rate=8000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, samples), dtype=np.int16), format="s16", layout="mono")
    frame.sample_rate = 8000
    for packet in [*stream.encode(frame), *stream.encode()]:
        container.mux(packet)


def test_no_video_stream(tmp_path):
    path = str(tmp_path / "audio.wav")
    with av.open(path, "w") as container:
        _mux_silence(container, 800)
    with pytest.raises(VideoDecodeError, match=r"audio\.wav.*no video stream"):
        load_video(path)


def test_zero_frames(tmp_path):
    # a video stream that holds no frame (only the audio stream has packets)
    path = str(tmp_path / "empty.mkv")
    with av.open(path, "w", format="matroska") as container:
        video = container.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        _mux_silence(container, 1024)
    with pytest.raises(VideoDecodeError, match=r"empty\.mkv.*zero frames"):
        load_video(path)


def _ts_segment(width, height, count):
    import io

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mpegts") as container:
        stream = container.add_stream("mpeg2video", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(count):
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 20 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def test_frames_of_mixed_sizes(tmp_path):
    path = tmp_path / "mixed.ts"  # MPEG-TS may change resolution mid-stream
    path.write_bytes(_ts_segment(32, 32, 10) + _ts_segment(48, 32, 10))
    with pytest.raises(VideoDecodeError, match=r"mixed\.ts.*mixed sizes.*48x32.*32x32"):
        load_video(path, fps=None)


@pytest.mark.parametrize("kwargs", [{"fps": 0}, {"fps": -1.0}, {"fps": float("nan")}, {"max_frames": 0},
                                    {"max_frames": 2.5}, {"fps": True}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="fps|max_frames"):
        load_video(sample_video("carphone_distorted.mp4"), **kwargs)


def test_truncated_mp4_warns_with_both_frame_counts(tmp_path):
    # moov first (faststart), then the frames: cutting the file keeps the index and loses frames
    path = str(tmp_path / "full.mp4")
    with av.open(path, "w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("mpeg4", rate=1)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(4):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    import warnings

    from kvtp_kernels.video import TruncatedVideoWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the whole file: no warning
        assert load_video(path, fps=None)[0].shape[0] == 4
    data = open(path, "rb").read()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 6 // 10])
    with pytest.warns(TruncatedVideoWarning, match=r"cut\.mp4'.*only 2 of the 4 frames its container declares"):
        frames, stamps = load_video(str(cut), fps=None)
    assert frames.shape[0] == 2 and stamps.tolist() == [0.0, 1.0]
