"""Video decoding with PyAV: the frames KVTP scores and prunes.

LLaVA-Video samples 1 frame per second and, when that gives more than 128 frames,
128 frames uniformly over the whole video instead (METHOD.md, notation). This
module reproduces that sampling with PyAV in two passes over the file:

1. demux only (no decoding): the presentation timestamps of every frame, which
   gives the exact frame count and times without trusting container metadata;
2. decode, converting to RGB only the frames that were selected.

Selection is by time, so variable-frame-rate video is handled: sample k of the
``fps`` grid (time ``t0 + k/fps``, up to the last frame's time) is the frame whose
timestamp is nearest to it (ties to the earlier frame; a frame is never taken
twice). For constant-rate video whose rate is (close to) a multiple of ``fps`` this is
LLaVA-Video's ``range(0, n, round(rate/fps))`` (25 fps or 29.97 fps at 1 fps: every
25th / 30th frame). When that yields more than ``max_frames`` frames, ``max_frames``
frame indices are taken uniformly over all frames instead
(``floor(linspace(0, n - 1, max_frames))``, LLaVA-Video's rule).
"""

from __future__ import annotations

import bisect
import math
import os
import warnings
from fractions import Fraction

import torch

__all__ = ["TruncatedVideoWarning", "VideoDecodeError", "load_video", "select_frames"]


class TruncatedVideoWarning(UserWarning):
    """The file holds fewer frames than its container declares (a truncated download or copy)."""


class VideoDecodeError(RuntimeError):
    """A video file could not be decoded into frames.

    Attributes:
        path: the file.
        reason: what went wrong, in words.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"kvtp_kernels.load_video: cannot decode {self.path!r}: {reason}")


def select_frames(times: list[float], fps: float | None, max_frames: int | None) -> list[int]:
    """Indices (ascending, distinct) of the frames to keep, given every frame's time.

    Args:
        times: presentation time in seconds of each frame, ascending.
        fps: sampling rate in frames per second, or ``None`` for every frame.
        max_frames: cap; when the ``fps`` sampling gives more frames, this many are
            taken uniformly over all frames instead. ``None``: no cap.

    Returns:
        For ``fps``: for each ``k = 0, 1, ...`` with ``t0 + k/fps <= t_last``, the
        frame whose time is nearest to ``t0 + k/fps``, ties to the earlier one
        (duplicates removed; a 4 s clip at 29.97 fps gives frames 0, 30, 60, 90 like
        LLaVA-Video's ``range(0, n, 30)``).
        Over the cap: ``floor(i * (n - 1) / (max_frames - 1))`` for
        ``i < max_frames`` (LLaVA-Video's ``linspace(0, n - 1, max_frames, dtype=int)``,
        in exact integer arithmetic).
    """
    n = len(times)
    if n == 0:
        return []
    if fps is None:
        chosen = list(range(n))
    else:
        eps = 1e-9  # timestamps are rationals rounded to float: the last target may land a hair past t_last
        count = math.floor((times[-1] - times[0]) * fps + eps) + 1
        chosen = sorted({_nearest(times, times[0] + k / fps) for k in range(count)})
    if max_frames is not None and len(chosen) > max_frames:
        if max_frames == 1:
            return [0]
        chosen = [i * (n - 1) // (max_frames - 1) for i in range(max_frames)]
    return chosen


def _nearest(times: list[float], target: float) -> int:
    """Index of the time nearest to ``target`` in ascending ``times`` (ties: the earlier)."""
    i = bisect.bisect_left(times, target)
    if i == 0:
        return 0
    if i == len(times) or target - times[i - 1] <= times[i] - target:
        return i - 1
    return i


def _check_args(fps: object, max_frames: object) -> None:
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float))
                            or not math.isfinite(fps) or fps <= 0):
        raise ValueError(f"kvtp_kernels.load_video: `fps` must be a positive finite number or None; got {fps!r}")
    if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int)
                                   or max_frames < 1):
        raise ValueError(f"kvtp_kernels.load_video: `max_frames` must be an int >= 1 or None; got {max_frames!r}")


def load_video(
    path: str | os.PathLike,
    fps: float | None = 1.0,
    max_frames: int | None = 128,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a video's sampled frames (1 fps, at most 128 uniformly otherwise).

    Args:
        path: a video file PyAV (FFmpeg) can read.
        fps: frames per second to sample (``None``: every frame). See the module
            docstring for the exact rule.
        max_frames: at most this many frames; beyond it, frames are sampled
            uniformly over the whole video instead (``None``: no cap).

    Returns:
        ``(frames, timestamps)``: frames uint8 [T, H, W, 3] (RGB, the stream's
        native size); timestamps float64 [T], seconds from the start of the stream.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        VideoDecodeError: (a RuntimeError) the file is not a readable video, has no
            video stream, no decodable frame, or changes resolution mid-stream;
            the message names the path and the reason.
        ValueError: bad ``fps`` / ``max_frames``.

    Warns:
        TruncatedVideoWarning: the file holds fewer frames than its container declares
            (a truncated file): the message gives both counts; the frames that are
            there are sampled.
    """
    import av  # lazily: only video loading needs PyAV

    _check_args(fps, max_frames)
    path = _check_path(path)
    pts, time_base, start, declared = _demux(av, path)
    if declared and len(pts) < declared:
        warnings.warn(f"kvtp_kernels.load_video: {path!r}: only {len(pts)} of the {declared} frames its container "
                      "declares are in the file (truncated?); sampling from those", TruncatedVideoWarning,
                      stacklevel=2)
    times = [float((p - start) * time_base) for p in pts]
    wanted = select_frames(times, fps, max_frames)
    frames, stamps = _decode(av, path, pts, times, wanted, start, time_base)
    return torch.stack(frames), torch.tensor(stamps, dtype=torch.float64)


def _check_path(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"kvtp_kernels.load_video: no such file: {path!r}")
    if os.path.isdir(path):
        raise VideoDecodeError(path, "it is a directory, not a video file")
    return path


def _open(av, path: str):
    try:
        return av.open(path)
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        raise VideoDecodeError(path, f"FFmpeg cannot open it ({exc})") from exc


def _demux(av, path: str) -> tuple[list[int], Fraction, int, int]:
    """Pass 1, demux only (no decoding) -> (every frame's pts, ascending; time base; start; declared frame count)."""
    with _open(av, path) as container:
        if not container.streams.video:
            raise VideoDecodeError(path, "it has no video stream")
        stream = container.streams.video[0]
        time_base = stream.time_base or Fraction(1, 1)
        start = stream.start_time or 0
        declared = int(stream.frames or 0)  # the container's frame count (0: not recorded)
        try:
            pts = sorted(p.pts for p in container.demux(stream) if p.size and p.pts is not None)
        except av.FFmpegError as exc:
            raise VideoDecodeError(path, f"demuxing failed ({exc})") from exc
    if not pts:
        declared_note = f" (the container declares {declared})" if declared else ""
        raise VideoDecodeError(path, f"its video stream has no frames (zero frames){declared_note}")
    return pts, time_base, start, declared


def _decode(av, path: str, pts: list[int], times: list[float], wanted: list[int], start: int,
            time_base: Fraction) -> tuple[list[torch.Tensor], list[float]]:
    """Pass 2: decode, convert only the wanted frames -> (RGB frames [H, W, 3], their times).

    The decoder emits frames in presentation order, so a frame without a pts is matched by its ordinal.
    """
    wanted_pts = {pts[i] for i in wanted}
    wanted_ordinals = set(wanted)
    frames: list[torch.Tensor] = []
    stamps: list[float] = []
    size = None
    with _open(av, path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for ordinal, frame in enumerate(container.decode(stream)):
                if not (frame.pts in wanted_pts if frame.pts is not None else ordinal in wanted_ordinals):
                    continue
                if size is None:
                    size = (frame.width, frame.height)
                elif (frame.width, frame.height) != size:
                    raise VideoDecodeError(
                        path, f"frames of mixed sizes: frame {ordinal} is {frame.width}x{frame.height} but the "
                              f"first sampled frame is {size[0]}x{size[1]}")
                frames.append(torch.from_numpy(frame.to_ndarray(format="rgb24")))
                stamps.append(float((frame.pts - start) * time_base) if frame.pts is not None else times[ordinal])
        except av.FFmpegError as exc:
            raise VideoDecodeError(path, f"decoding failed after {len(frames)} sampled frames ({exc})") from exc
    if not frames:
        raise VideoDecodeError(path, f"none of its {len(pts)} frames could be decoded")
    if len(frames) != len(wanted):
        raise VideoDecodeError(
            path, f"{len(wanted)} frames were sampled from the container's timestamps but {len(frames)} of them "
                  "were decoded (decoded timestamps do not match the packets')")
    return frames, stamps
