"""Triton fused losses. Each op module holds kernels, host functions and an autograd wrapper."""
