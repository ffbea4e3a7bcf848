"""One RecBole 1.2.1 SASRec run for ``benches/bench_vs_recbole.py`` (runs in the RecBole venv).

Usage: ``python recbole_worker.py CONFIG.json OUT.json``. CONFIG holds ``data_path``,
``dataset`` (RecBole reads ``data_path/dataset/dataset.inter``), ``seed``, ``epochs``,
``patience`` (epochs without improvement before stopping, as negrec-fast counts them) and the
shared hyper-parameters. OUT gets the per-epoch validation metrics with wall-clock times from
the start of training, the test metrics of the best epoch and the test (user, item) pairs.
"""

from __future__ import annotations

import json
import sys
import time

from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.model.sequential_recommender import SASRec
from recbole.trainer import Trainer
from recbole.utils import init_seed


class TimedTrainer(Trainer):
    """Records every validation result with its time since ``fit`` started."""

    def fit(self, *args, **kwargs):
        self.epochs_log: list[dict] = []
        self.t0 = time.perf_counter()
        return super().fit(*args, **kwargs)

    def _valid_epoch(self, valid_data, show_progress=False):
        score, result = super()._valid_epoch(valid_data, show_progress)
        self.epochs_log.append({"elapsed": time.perf_counter() - self.t0, "valid": {k: float(v) for k, v in result.items()}})
        return score, result


def main(config_path: str, out_path: str) -> None:
    spec = json.loads(open(config_path).read())
    params = {
        "data_path": spec["data_path"],
        "checkpoint_dir": spec["checkpoint_dir"],
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "user_inter_num_interval": f"[{spec['min_interactions']},inf)",
        "item_inter_num_interval": None,
        "MAX_ITEM_LIST_LENGTH": spec["max_len"],
        "n_layers": spec["n_layers"],
        "n_heads": spec["n_heads"],
        "hidden_size": spec["d_model"],
        "inner_size": spec["d_ff"],
        "hidden_dropout_prob": spec["dropout"],
        "attn_dropout_prob": spec["dropout"],
        "loss_type": "CE",
        "train_neg_sample_args": None,
        "epochs": spec["epochs"],
        "train_batch_size": spec["batch_size"],
        "learner": "adam",
        "learning_rate": spec["lr"],
        "weight_decay": 0.0,
        # RecBole stops once more than stopping_step epochs in a row did not improve
        "stopping_step": spec["patience"] - 1,
        "eval_step": 1,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "metrics": ["Hit", "NDCG", "MRR"],
        "topk": [10],
        "valid_metric": "NDCG@10",
        "eval_batch_size": 4096,
        "seed": spec["seed"],
        "reproducibility": True,
        "use_gpu": False,
        "device": "cpu",
        "show_progress": False,
        "state": spec.get("state", "WARNING"),
    }
    config = Config(model="SASRec", dataset=spec["dataset"], config_dict=params)
    init_seed(config["seed"], config["reproducibility"])
    tic = time.perf_counter()
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = SASRec(config, train_data._dataset).to(config["device"])
    trainer = TimedTrainer(config, model)
    setup = time.perf_counter() - tic
    best_score, best_valid = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    train_seconds = time.perf_counter() - trainer.t0
    test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    tds = test_data._dataset
    users = tds.id2token("user_id", tds.inter_feat["user_id"].numpy())
    items = tds.id2token("item_id", tds.inter_feat["item_id"].numpy())
    best_epoch = max(range(len(trainer.epochs_log)), key=lambda e: (trainer.epochs_log[e]["valid"]["ndcg@10"], e))  # ties: the later (>=)
    out = {
        "side": "recbole",
        "seed": spec["seed"],
        "setup_seconds": setup,
        "train_seconds": train_seconds,
        "epochs": trainer.epochs_log,
        "best_epoch": best_epoch + 1,
        "test": {k: float(v) for k, v in test.items()},
        "n_items": int(dataset.item_num - 1),
        "n_train_examples": len(train_data._dataset),
        "test_pairs": [[str(u), str(i)] for u, i in zip(users, items)],
    }
    with open(out_path, "w") as fh:
        json.dump(out, fh)


if __name__ == "__main__":
    main(*sys.argv[1:3])
