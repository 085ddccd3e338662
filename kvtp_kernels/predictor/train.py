"""Training the relevance predictor (METHOD.md section 1, training objective).

Per video, with frame logits ``s`` [T] and annotator labels ``y`` [T] in 0..5::

    p_c = sum_{t in c} softmax_{t in c}(s)_t * s_t      # clips of C = 8 consecutive frames
    y_c = y at the clip's first frame
    y~_c = y_c - mean_t(y_t)                            # centred by the mean over all frames
    loss = -mean_c log sigmoid(p_c * y~_c)

Command line (``--help`` for every option)::

    python -m kvtp_kernels.predictor.train labels.csv --model google/siglip-so400m-patch14-384 \\
        --output-dir runs/kvtp-head --train head --epochs 3

The label file is CSV, JSON (a list of objects) or JSONL with the columns ``video``
(a path, relative to the label file's folder unless absolute), ``query`` and
``labels`` (one integer 0..5 per sampled frame: a JSON list, or numbers separated
by spaces, commas or semicolons). Videos are decoded with
:func:`kvtp_kernels.video.load_video` (1 fps, at most 128 frames uniformly sampled
otherwise), so ``labels`` must have one value per frame of that sampling.

What is trained (``--train``):

- ``head``: the fusion head's two temperatures. The towers are frozen, so every
  video and query is encoded once, up front, and the epochs run on the cached
  embeddings (fast).
- ``logits``: the head plus SigLIP's ``logit_scale`` and ``logit_bias`` (cached too).
- ``all``: everything, towers included; videos are decoded and encoded at every step.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..options import check_device
from ..video import VideoDecodeError, load_video
from .config import _check_clip_size, _describe
from .labels import MAX_LABEL, RelevanceExample, read_relevance_labels
from .model import FrameRelevancePredictor

__all__ = [
    "TRAINABLE",
    "RelevanceExample",
    "TrainConfig",
    "clip_softmax_pool",
    "main",
    "read_relevance_labels",
    "relevance_loss",
    "train_predictor",
]

TRAINABLE = ("head", "logits", "all")


# ----------------------------------------------------------------------------------
# The objective
# ----------------------------------------------------------------------------------
def clip_softmax_pool(scores: torch.Tensor, clip_size: int) -> torch.Tensor:
    """``p_c = sum_{t in c} softmax_{t in c}(s)_t * s_t`` over consecutive clips.

    Args:
        scores: [..., T] frame logits (float).
        clip_size: C; the last clip may be shorter.

    Returns:
        [..., ceil(T / C)], dtype of ``scores``.
    """
    _check_clip_size(clip_size)
    T = scores.shape[-1]
    if T == 0:
        raise ValueError("kvtp_kernels.predictor: `scores` must have at least one frame; got T = 0")
    n = -(-T // clip_size)
    pad = n * clip_size - T
    valid = F.pad(torch.ones(T, dtype=torch.bool, device=scores.device), (0, pad), value=False).reshape(n, clip_size)
    s = F.pad(scores, (0, pad)).reshape(*scores.shape[:-1], n, clip_size)
    weights = s.masked_fill(~valid, float("-inf")).softmax(dim=-1)
    return (weights * s.masked_fill(~valid, 0.0)).sum(dim=-1)


def relevance_loss(scores: torch.Tensor, labels: torch.Tensor, clip_size: int = 8) -> torch.Tensor:
    """KVTP's clip-level log-sigmoid loss (see the module docstring).

    Args:
        scores: [T] or [B, T] frame logits (float; gradients flow through).
        labels: [T] or [B, T] per-frame relevance labels, integers 0..5.
        clip_size: C.

    Returns:
        Scalar: the mean over clips (and videos) of ``-log sigmoid(p_c * y~_c)``.
    """
    if not isinstance(scores, torch.Tensor) or not scores.is_floating_point() or scores.dim() not in (1, 2):
        raise ValueError(f"kvtp_kernels.predictor: `scores` must be a float [T] or [B, T] tensor; got "
                         f"{_describe(scores)}")
    labels = torch.as_tensor(labels, device=scores.device)
    if labels.shape != scores.shape:
        raise ValueError(f"kvtp_kernels.predictor: `labels` must have the shape of `scores` {tuple(scores.shape)}; "
                         f"got {tuple(labels.shape)}")
    if labels.numel() and (labels.min() < 0 or labels.max() > MAX_LABEL):
        raise ValueError(f"kvtp_kernels.predictor: `labels` must lie in 0..{MAX_LABEL}; got values from "
                         f"{labels.min().item()} to {labels.max().item()}")
    y = labels.to(scores.dtype)
    pooled = clip_softmax_pool(scores, clip_size)
    y_tilde = y[..., ::clip_size] - y.mean(dim=-1, keepdim=True)
    return -F.logsigmoid(pooled * y_tilde).mean()


# ----------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------
@dataclasses.dataclass
class TrainConfig:
    """Options of :func:`train_predictor` (the CLI flags of the same names).

    Attributes:
        train: "head", "logits" or "all" (see the module docstring).
        epochs, lr, weight_decay: AdamW over the trained parameters.
        batch_size: examples per optimiser step (their losses are averaged).
        fps, max_frames: video sampling (:func:`kvtp_kernels.video.load_video`).
        seed: shuffling seed.
        gradient_checkpointing: for ``train="all"``, recompute tower activations.
        progress: show a tqdm progress bar.
    """

    train: str = "head"
    epochs: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 4
    fps: float | None = 1.0
    max_frames: int | None = 128
    seed: int = 0
    gradient_checkpointing: bool = False
    progress: bool = True

    def __post_init__(self):
        if self.train not in TRAINABLE:
            raise ValueError(f"kvtp_kernels.predictor: `train` must be one of {TRAINABLE}; got {self.train!r}")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"kvtp_kernels.predictor: `{name}` must be an int >= 1; got {value!r}")
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"kvtp_kernels.predictor: `{name}` must be a finite number >= 0; got {value!r}")


def _frames_of(example: RelevanceExample, config: TrainConfig) -> torch.Tensor:
    if isinstance(example.video, torch.Tensor):
        return example.video
    frames, _ = load_video(example.video, fps=config.fps, max_frames=config.max_frames)
    return frames


def _check_length(example: RelevanceExample, num_frames: int, config: TrainConfig) -> None:
    if num_frames != example.labels.shape[0]:
        sampling = "the given frames" if isinstance(example.video, torch.Tensor) else \
            f"the video sampled at fps={config.fps}, max_frames={config.max_frames}"
        raise ValueError(f"{example.origin or 'example'}: column 'labels' has {example.labels.shape[0]} labels but "
                         f"{sampling} gives {num_frames} frames; give one label per sampled frame")


def _query_key(query: str | torch.Tensor) -> Any:
    return query if isinstance(query, str) else ("ids", tuple(torch.as_tensor(query).tolist()))


def train_predictor(
    predictor: FrameRelevancePredictor,
    examples: Sequence[RelevanceExample],
    config: TrainConfig | None = None,
    output_dir: str | os.PathLike | None = None,
) -> list[float]:
    """Train with AdamW on the clip loss; checkpoint after every epoch.

    Args:
        predictor: the model (its device is used; float32 recommended).
        examples: the training set.
        config: :class:`TrainConfig`.
        output_dir: when given, ``predictor.save_pretrained(output_dir/epoch-<k>)``
            after epoch k.

    Returns:
        The loss of every optimiser step (Python floats).
    """
    config = config if config is not None else TrainConfig()
    _check_training(predictor, examples, config)
    flags = {name: p.requires_grad for name, p in predictor.named_parameters()}
    params = _trainable_parameters(predictor, config)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    checkpointing = config.train == "all" and config.gradient_checkpointing
    if checkpointing:
        predictor.siglip.gradient_checkpointing_enable()
    try:
        example_loss = _example_loss(predictor, examples, config)
        return _run_epochs(predictor, len(examples), example_loss, optimizer, config, output_dir)
    finally:
        if checkpointing:
            predictor.siglip.gradient_checkpointing_disable()
        for name, p in predictor.named_parameters():
            p.requires_grad_(flags[name])
        predictor.eval()


def _check_training(predictor: FrameRelevancePredictor, examples: Sequence[RelevanceExample],
                    config: TrainConfig) -> None:
    if not examples:
        raise ValueError("kvtp_kernels.predictor: `examples` must not be empty")
    if config.train == "head" and not predictor.config.use_fusion_head:
        raise ValueError("kvtp_kernels.predictor: train='head' needs config.use_fusion_head=True (without the head "
                         "the loss does not depend on its parameters)")


def _trainable_parameters(predictor: FrameRelevancePredictor, config: TrainConfig) -> list[torch.nn.Parameter]:
    """Freezes the predictor but for what ``config.train`` trains, and returns that."""
    predictor.requires_grad_(False)
    if config.train == "all":
        params = list(predictor.parameters())
    else:
        params = list(predictor.fusion_head.parameters())
        if config.train == "logits":
            params += [predictor.siglip.logit_scale, predictor.siglip.logit_bias]
    for p in params:
        p.requires_grad_(True)
    return params


def _encode_query(predictor: FrameRelevancePredictor, query: str | torch.Tensor) -> torch.Tensor:
    return predictor.encode_queries([query] if isinstance(query, str) else [torch.as_tensor(query)])


def _encode_example(predictor: FrameRelevancePredictor, ex: RelevanceExample,
                    config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(frame embeddings, query embeddings, labels) of one example, through the towers."""
    frames = _frames_of(ex, config)
    _check_length(ex, frames.shape[0], config)
    pixels = predictor.preprocess(frames)
    frame_embeds = predictor.encode_frames(pixels, token_importance=False).frame_embeds
    return frame_embeds, _encode_query(predictor, ex.query), ex.labels.to(predictor.device)


def _encode_once(predictor: FrameRelevancePredictor, examples: Sequence[RelevanceExample],
                 config: TrainConfig) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Frozen towers: every video and query encoded once (shared ones once in all)."""
    from tqdm.auto import tqdm

    predictor.eval()
    videos: dict[Any, torch.Tensor] = {}
    queries: dict[Any, torch.Tensor] = {}
    cached = []
    with torch.no_grad():
        for ex in tqdm(examples, desc="encoding", unit="example", disable=not config.progress):
            vkey = ex.video if isinstance(ex.video, str) else id(ex.video)
            if vkey not in videos:
                pixels = predictor.preprocess(_frames_of(ex, config))
                videos[vkey] = predictor.encode_frames(pixels, token_importance=False).frame_embeds
            _check_length(ex, videos[vkey].shape[1], config)
            qkey = _query_key(ex.query)
            if qkey not in queries:
                queries[qkey] = _encode_query(predictor, ex.query)
            cached.append((videos[vkey], queries[qkey], ex.labels.to(predictor.device)))
    return cached


def _example_loss(predictor: FrameRelevancePredictor, examples: Sequence[RelevanceExample],
                  config: TrainConfig) -> Callable[[int], torch.Tensor]:
    """The loss of example i: on cached embeddings (frozen towers) or through the towers (``train="all"``)."""
    clip_size = predictor.config.clip_size
    if config.train != "all":
        cached = _encode_once(predictor, examples, config)
        inputs = cached.__getitem__
    else:
        predictor.train()
        inputs = lambda i: _encode_example(predictor, examples[i], config)  # noqa: E731

    def example_loss(i: int) -> torch.Tensor:
        frame_embeds, query_embeds, labels = inputs(i)
        scores = predictor.scores(frame_embeds, query_embeds)
        return relevance_loss(scores[0], labels, clip_size)

    return example_loss


def _run_epochs(predictor: FrameRelevancePredictor, count: int, example_loss: Callable[[int], torch.Tensor],
                optimizer: torch.optim.Optimizer, config: TrainConfig,
                output_dir: str | os.PathLike | None) -> list[float]:
    """The optimiser steps over ``count`` examples, shuffled each epoch; a checkpoint after each epoch."""
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = -(-count // config.batch_size)
    losses: list[float] = []
    with tqdm(total=config.epochs * steps_per_epoch, desc="training", unit="step",
              disable=not config.progress) as bar:
        for epoch in range(1, config.epochs + 1):
            order = torch.randperm(count, generator=generator).tolist()
            for start in range(0, len(order), config.batch_size):
                loss = torch.stack([example_loss(i) for i in order[start:start + config.batch_size]]).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())  # one sync per step, for the log
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{losses[-1]:.4f}")
            if output_dir is not None:
                predictor.save_pretrained(os.path.join(os.fspath(output_dir), f"epoch-{epoch}"))
    return losses


# ----------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------
def build_parser(prog: str = "python -m kvtp_kernels.predictor.train") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train KVTP's query-frame relevance predictor (SigLIP + Local and Global Context Fusion Head) "
                    "on per-frame relevance labels.",
        epilog="Label file columns: video (path, relative to the label file), query, labels (one integer 0..5 per "
               "sampled frame). Checkpoints: OUTPUT_DIR/epoch-<k> after each epoch, OUTPUT_DIR itself at the end; "
               "load them with FrameRelevancePredictor.from_pretrained.")
    parser.add_argument("labels", help="label file: .csv, .json (list of objects) or .jsonl")
    parser.add_argument("--model", required=True,
                        help="SigLIP checkpoint: hub name (e.g. google/siglip-so400m-patch14-384) or directory")
    parser.add_argument("--output-dir", required=True, help="where checkpoints are written")
    parser.add_argument("--tokenizer", default="auto",
                        help="tokenizer name or path (default: the model's own)")
    parser.add_argument("--train", choices=TRAINABLE, default="head",
                        help="head: the fusion head's temperatures; logits: also SigLIP's logit scale/bias; "
                             "all: everything (default: head)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--batch-size", type=int, default=4, help="examples per optimiser step")
    parser.add_argument("--fps", type=float, default=1.0, help="frames sampled per second (default 1)")
    parser.add_argument("--max-frames", type=int, default=128,
                        help="at most this many frames per video, uniformly sampled beyond (default 128)")
    parser.add_argument("--clip-size", type=int, default=None, help="frames per clip (default: the model's, 8)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gradient-checkpointing", action="store_true", help="with --train all")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _writable_dir(path: str) -> str | None:
    """Creates ``path`` and writes a probe file in it; -> None, or why it cannot be used."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".kvtp-probe-"):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Exit status: 0 done, 2 usage error (bad option, label file, model, device or output folder)."""
    parser = build_parser(prog) if prog else build_parser()
    args = parser.parse_args(argv)
    try:
        config = TrainConfig(train=args.train, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                             batch_size=args.batch_size, fps=args.fps, max_frames=args.max_frames, seed=args.seed,
                             gradient_checkpointing=args.gradient_checkpointing, progress=not args.no_progress)
        # Everything a user can get wrong is checked before the first model is loaded.
        examples = read_relevance_labels(args.labels)
        device = check_device(ValueError, args.device, auto=(None,), expected="cpu, cuda or cuda:N")
        problem = _writable_dir(args.output_dir)
        if problem is not None:
            raise ValueError(f"--output-dir {args.output_dir!r}: cannot write there ({problem})")
        overrides: dict[str, Any] = {}
        if args.clip_size is not None:
            overrides["clip_size"] = args.clip_size
        if args.train == "head":
            overrides["use_fusion_head"] = True
        torch.manual_seed(args.seed)
        try:
            predictor = FrameRelevancePredictor.from_pretrained(args.model, tokenizer=args.tokenizer,
                                                                config=overrides)
        except OSError as exc:  # no such directory / hub name, no network, no config in it
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"--model {args.model!r}: cannot load a SigLIP checkpoint ({first})") from None
        predictor = predictor.to(device=device, dtype=torch.float32)
        if predictor.tokenizer is None:
            raise ValueError(f"--model {args.model!r} has no tokenizer and the label file has text queries; pass "
                             "--tokenizer NAME_OR_PATH")
        losses = train_predictor(predictor, examples, config, output_dir=args.output_dir)
        predictor.save_pretrained(args.output_dir)
    except (ValueError, FileNotFoundError, VideoDecodeError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    print(f"trained {len(losses)} steps; loss {losses[0]:.4f} -> {losses[-1]:.4f}; saved to {args.output_dir}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

