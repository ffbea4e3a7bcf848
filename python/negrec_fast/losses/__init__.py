"""Reference loss functions in plain PyTorch: the ground truth the Triton kernels match."""

from negrec_fast.losses.binary import bce_loss, gbce_beta, gbce_loss
from negrec_fast.losses.bpr import bpr_loss
from negrec_fast.losses.full_softmax import full_softmax_loss
from negrec_fast.losses.sampled_softmax import sampled_softmax_loss
from negrec_fast.losses.skip_infonce import next_kept_index, skip_infonce_loss
from negrec_fast.losses.wrmf import wrmf_loss

__all__ = [
    "bce_loss",
    "bpr_loss",
    "full_softmax_loss",
    "gbce_beta",
    "gbce_loss",
    "next_kept_index",
    "sampled_softmax_loss",
    "skip_infonce_loss",
    "wrmf_loss",
]
