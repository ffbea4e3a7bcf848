"""Sequential recommenders with a common interface (``encode``, ``project``, ``item_weight``,
``embed``, ``next_query``, ``score_all``) and the ``build_model`` factory."""

from __future__ import annotations

from negrec_fast.models.base import SequentialModel
from negrec_fast.models.bert4rec import BERT4Rec
from negrec_fast.models.gru4rec import GRU4Rec
from negrec_fast.models.sasrec import SASRec

MODELS: dict[str, type[SequentialModel]] = {"sasrec": SASRec, "bert4rec": BERT4Rec, "gru4rec": GRU4Rec}


def build_model(name: str, vocab_size: int, **options) -> SequentialModel:
    """Build the model called ``name`` ("sasrec", "bert4rec", "gru4rec", any case)."""
    cls = MODELS.get(name.lower()) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    try:
        return cls(vocab_size, **options)
    except TypeError as err:  # an option this model does not take
        raise ValueError(f"bad option for model {name!r}: {err}") from None


__all__ = ["BERT4Rec", "GRU4Rec", "MODELS", "SASRec", "SequentialModel", "build_model"]
