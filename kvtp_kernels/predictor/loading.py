"""Loading and saving a predictor: SigLIP's checkpoint plus the files KVTP adds next to it
(``kvtp_predictor.json``, the fusion head's weights) and the tokenizer (mixed into
:class:`FrameRelevancePredictor`)."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from .config import CONFIG_NAME, HEAD_WEIGHTS_NAME, PredictorConfig, _fail

if TYPE_CHECKING:
    from .model import FrameRelevancePredictor

__all__ = ["PretrainedIO"]

_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "spiece.model", "tokenizer.model")


def _kvtp_files_dir(name_or_path: str, model_kwargs: dict[str, Any]) -> str | None:
    """The directory holding kvtp_predictor.json / the head weights, if any."""
    if os.path.isdir(name_or_path):
        return name_or_path
    from huggingface_hub import snapshot_download  # a dependency of transformers

    passthrough = {k: model_kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only")
                   if k in model_kwargs}
    return snapshot_download(name_or_path, allow_patterns=[CONFIG_NAME, HEAD_WEIGHTS_NAME], **passthrough)


def _merged_config(files_dir: str | None, config: PredictorConfig | dict[str, Any] | None) -> PredictorConfig:
    """The saved ``kvtp_predictor.json`` (if any) with ``config`` replacing or overriding it."""
    saved: dict[str, Any] = {}
    config_file = os.path.join(files_dir, CONFIG_NAME) if files_dir else None
    if config_file and os.path.isfile(config_file):
        with open(config_file) as fh:
            saved = json.load(fh)
        saved.pop("format_version", None)
    if isinstance(config, PredictorConfig):
        return config
    if config is not None and not isinstance(config, dict):
        _fail("config", "a PredictorConfig, a dict of fields or None", type(config).__name__)
    return PredictorConfig.from_dict({**saved, **(config or {})}, source=config_file or "config")


def _resolve_tokenizer(transformers: Any, name_or_path: str, tokenizer: Any) -> Any:
    """``tokenizer`` as :meth:`PretrainedIO.from_pretrained` documents it -> a tokenizer object or None."""
    if isinstance(tokenizer, str) and tokenizer == "auto":
        local = os.path.isdir(name_or_path)
        has_files = local and any(os.path.isfile(os.path.join(name_or_path, n)) for n in _TOKENIZER_FILES)
        return transformers.AutoTokenizer.from_pretrained(name_or_path) if (has_files or not local) else None
    if isinstance(tokenizer, (str, os.PathLike)):
        return transformers.AutoTokenizer.from_pretrained(os.fspath(tokenizer))
    return tokenizer


class PretrainedIO:
    """``from_config`` / ``from_pretrained`` / ``save_pretrained`` of
    :class:`~kvtp_kernels.predictor.FrameRelevancePredictor` (its ``siglip``, ``fusion_head``,
    ``config`` and ``tokenizer``)."""

    @classmethod
    def from_config(cls, siglip_config: Any, config: PredictorConfig | None = None,
                    tokenizer: Any = None) -> FrameRelevancePredictor:
        """A randomly initialised predictor from a ``SiglipConfig`` (for tests and training from scratch)."""
        from ..integrations._compat import require_transformers  # not at import: the integrations package is heavy

        transformers = require_transformers("kvtp_kernels.predictor")
        return cls(transformers.SiglipModel(siglip_config), config, tokenizer)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        tokenizer: Any = "auto",
        config: PredictorConfig | dict[str, Any] | None = None,
        **model_kwargs: Any,
    ) -> FrameRelevancePredictor:
        """Load a SiglipModel checkpoint (hub name or directory), plus what
        :meth:`save_pretrained` added (``kvtp_predictor.json``, the fusion head's
        weights) when present.

        Args:
            name_or_path: e.g. "google/siglip-so400m-patch14-384" or a local directory.
            tokenizer: "auto" (load ``AutoTokenizer`` from ``name_or_path``: always
                for a hub name, for a directory when it holds tokenizer files), None
                (no tokenizer: queries as token ids), a name/path to load one from,
                or a tokenizer object.
            config: a PredictorConfig replacing the saved one, or a dict of fields
                overriding it (e.g. ``{"use_fusion_head": False}``).
            **model_kwargs: passed to ``SiglipModel.from_pretrained`` (``dtype``,
                ``revision``, ``cache_dir``, ``token``, ``local_files_only``, ...).
        """
        from ..integrations._compat import require_transformers  # not at import: the integrations package is heavy

        transformers = require_transformers("kvtp_kernels.predictor")
        name_or_path = os.fspath(name_or_path)
        siglip = transformers.SiglipModel.from_pretrained(name_or_path, **model_kwargs)
        files_dir = _kvtp_files_dir(name_or_path, model_kwargs)
        cfg = _merged_config(files_dir, config)
        predictor = cls(siglip, cfg, _resolve_tokenizer(transformers, name_or_path, tokenizer))
        head_file = os.path.join(files_dir, HEAD_WEIGHTS_NAME) if files_dir else None
        if head_file and os.path.isfile(head_file):
            from safetensors.torch import load_file

            predictor.fusion_head.load_state_dict(load_file(head_file))
        return predictor.to(siglip.logit_scale.device)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Save the SiglipModel (transformers format), the fusion head
        (``kvtp_fusion_head.safetensors``), the config (``kvtp_predictor.json``)
        and the tokenizer if any, so that :meth:`from_pretrained` restores all."""
        from safetensors.torch import save_file

        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        self.siglip.save_pretrained(path)
        state = {k: v.detach().cpu().contiguous() for k, v in self.fusion_head.state_dict().items()}
        save_file(state, os.path.join(path, HEAD_WEIGHTS_NAME))
        with open(os.path.join(path, CONFIG_NAME), "w") as fh:
            json.dump({"format_version": 1, **self.config.to_dict()}, fh, indent=2)
        if self.tokenizer is not None and hasattr(self.tokenizer, "save_pretrained"):
            self.tokenizer.save_pretrained(path)

