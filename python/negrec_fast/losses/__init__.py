"""Reference loss functions in plain PyTorch: the ground truth the Triton kernels match."""

from negrec_fast.losses.full_softmax import full_softmax_loss
from negrec_fast.losses.sampled_softmax import sampled_softmax_loss
from negrec_fast.losses.skip_infonce import next_kept_index, skip_infonce_loss

__all__ = ["full_softmax_loss", "sampled_softmax_loss", "skip_infonce_loss", "next_kept_index"]
