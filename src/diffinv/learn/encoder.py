"""Moved: the contrastive encoder of CL-DPS lives in :mod:`diffinv.guidance.encoder`.

The guidance energy (:mod:`diffinv.guidance.contrastive`) evaluates the network and the trainer
(:mod:`diffinv.learn.moco`) trains it; the network sits with the energy, in the lower layer both
can import. This module re-exports it so ``from diffinv.learn.encoder import ...`` keeps working:
edit :mod:`diffinv.guidance.encoder`, not this file.
"""

from diffinv.guidance.encoder import (
    FORMAT,
    ContrastiveEncoder,
    EncoderConfig,
    load_encoder,
    save_encoder,
)

__all__ = ["FORMAT", "ContrastiveEncoder", "EncoderConfig", "load_encoder", "save_encoder"]
