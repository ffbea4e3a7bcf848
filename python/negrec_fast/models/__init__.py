"""Sequential recommenders with a common interface (``encode``, ``project``, ``item_weight``,
``embed``, ``next_query``, ``score_all``) and the ``build_model`` / ``build_model_for`` (from a config) factories."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from negrec_fast.models.base import SequentialModel
from negrec_fast.models.bert4rec import BERT4Rec
from negrec_fast.models.gru4rec import GRU4Rec
from negrec_fast.models.matrix_factorization import BPRMF, WRMF
from negrec_fast.models.pnfrec import PNFRec
from negrec_fast.models.sasrec import SASRec
from negrec_fast.models.sine import SINE

if TYPE_CHECKING:
    from negrec_fast.config import Config

MODELS: dict[str, type[SequentialModel]] = {"sasrec": SASRec, "bert4rec": BERT4Rec, "gru4rec": GRU4Rec, "sine": SINE,
                                            "pnfrec": PNFRec, "bpr": BPRMF, "wrmf": WRMF}


def build_model(name: str, vocab_size: int, **options) -> SequentialModel:
    """Build the model called ``name`` ("sasrec", "bert4rec", "gru4rec", "sine", "pnfrec", "bpr", "wrmf", any case)."""
    cls = MODELS.get(name.lower()) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    try:
        return cls(vocab_size, **options)
    except TypeError as err:  # an option this model does not take
        raise ValueError(f"bad option for model {name!r}: {err}") from None


def build_model_for(cfg: Config, vocab_size: int) -> SequentialModel:
    """The model of ``cfg.model`` (with ``cfg.data.max_len``) for a ``vocab_size`` vocabulary."""
    m = cfg.model
    if m.name in ("bpr", "wrmf"):  # matrix factorisation: no layers, head, dropout or skip embedding
        extra = {"alpha": m.wrmf_alpha, "l2": m.wrmf_l2} if m.name == "wrmf" else {}
        return build_model(m.name, vocab_size, max_len=cfg.data.max_len, d_model=m.d_model, **extra)
    options: dict[str, Any] = dict(
        max_len=cfg.data.max_len, d_model=m.d_model, dropout=m.dropout, skip_inputs=m.skip_inputs
    )
    if m.name in ("sasrec", "bert4rec", "sine", "pnfrec"):
        options.update(n_heads=m.n_heads, n_layers=m.n_layers, d_ff=m.d_ff, norm_first=m.norm_first)
        if m.name in ("sasrec", "bert4rec"):
            options.update(ffn_inner_dropout=m.ffn_inner_dropout, read_skipped=m.read_skipped)
        if m.name == "sine":
            options.update(n_interests=m.sine_interests)
        if m.name == "pnfrec":
            options.update(fusion=m.pnfrec_fusion)
    else:
        options.update(n_layers=m.n_layers)
    return build_model(m.name, vocab_size, **options)


__all__ = ["BERT4Rec", "BPRMF", "GRU4Rec", "MODELS", "PNFRec", "SASRec", "SINE", "SequentialModel", "WRMF",
           "build_model", "build_model_for"]
