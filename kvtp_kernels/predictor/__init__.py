"""Query-frame relevance predictor for KVTP (METHOD.md section 1).

- :class:`FrameRelevancePredictor` (:mod:`.model`): SigLIP image and text towers -> frame
  embeddings, query-chunk embeddings (:mod:`.text`), frame relevance logits
  (:mod:`.similarity`), and within-frame token importance from the same vision pass
  (:mod:`.probe`); loading and saving in :mod:`.loading`, settings in :mod:`.config`.
- :class:`ContextFusionHead` (:mod:`.fusion`): the Local and Global Context Fusion Head.
- :mod:`.train`: the clip log-sigmoid loss and the training entry point
  ``python -m kvtp_kernels.predictor.train``; label files in :mod:`.labels`.

transformers is imported only when a SiglipModel is built or loaded.
"""

from .._lazy import lazy_attributes
from .config import PredictorConfig
from .fusion import ContextFusionHead
from .labels import RelevanceExample, read_relevance_labels
from .model import FrameRelevancePredictor
from .outputs import FrameEncoding, PredictorOutput
from .probe import probe_attention, resample_token_importance
from .similarity import relevance_logits

# The training module is loaded on first use (so ``python -m kvtp_kernels.predictor.train``
# does not find it already imported).
_TRAIN_NAMES = ("TrainConfig", "clip_softmax_pool", "relevance_loss", "train_predictor")

__getattr__ = lazy_attributes(__name__, "train", _TRAIN_NAMES)


__all__ = [
    "ContextFusionHead",
    "FrameEncoding",
    "FrameRelevancePredictor",
    "PredictorConfig",
    "PredictorOutput",
    "RelevanceExample",
    "TrainConfig",
    "clip_softmax_pool",
    "probe_attention",
    "read_relevance_labels",
    "relevance_logits",
    "relevance_loss",
    "resample_token_importance",
    "train_predictor",
]
