"""Replay an outside library's DNN (FuxiCTR 2.3.10) on this project's prepared splits.

The reference issue 11 quotes (FuxiCTR's DNN at 0.7644 test AUC on the Electronics split)
is checked here by feeding FuxiCTR the very samples this pipeline trains on: each split's
`item` and `hist_items` become FuxiCTR's `item_id` (categorical) and `item_history`
(sequence, `^`-joined, sharing `item_id`'s embedding, masked sum pooling, its default);
no user feature. FuxiCTR is not a dependency of the project: install it beside it
(`pip install fuxictr==2.3.10 'polars<2'`; it pulls ray[data]) and run

    python -m experiments.outside_fuxictr --data data/amazon --out runs/outside-fuxictr

Settings (the issue's quote of FuxiCTR's published BARS config): embedding 64, MLP
1024-512-256 ReLU, Adam 5e-4, embedding L2 0.005 (FuxiCTR applies it to the whole
table), batch 1024, 3 epochs, the best epoch on validation restored, seed 2019. Prints
the valid and test AUC and writes them to OUT/metrics.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.data import PreparedData


def write_csv(data: PreparedData, split: str, path: Path) -> int:
    """One split -> FuxiCTR's CSV (label, item_id, item_history); returns its rows."""
    rows = 0
    with pacsv.CSVWriter(
        path,
        pa.schema(
            [("label", pa.float32()), ("item_id", pa.string()), ("item_history", pa.string())]
        ),
    ) as writer:
        for file in data.split_files(split):
            table = pq.read_table(file, columns=["label", "item", "hist_items"])
            history = ["^".join(map(str, h)) for h in table.column("hist_items").to_pylist()]
            writer.write_table(
                pa.table(
                    {
                        "label": table.column("label").cast(pa.float32()),
                        "item_id": table.column("item").cast(pa.string()),
                        "item_history": pa.array(history, pa.string()),
                    }
                )
            )
            rows += table.num_rows
    return rows


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", required=True, help="a prepared folder (manifest.json)")
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--embedding-l2", type=float, default=0.005)
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO)  # FuxiCTR's per-epoch validation lines
    from fuxictr.features import FeatureMap
    from fuxictr.preprocess import FeatureProcessor, build_dataset
    from fuxictr.pytorch.dataloaders import RankDataLoader
    from fuxictr.pytorch.layers import FeatureEmbedding, MLP_Block
    from fuxictr.pytorch.models import BaseModel
    from fuxictr.pytorch.torch_utils import seed_everything

    class OutsideDNN(BaseModel):
        """FuxiCTR's DNN: every feature's embedding, flattened, into one MLP."""

        def __init__(self, feature_map, **kw):
            super().__init__(
                feature_map,
                model_id=kw["model_id"],
                gpu=-1,
                embedding_regularizer=kw["embedding_regularizer"],
                net_regularizer=0,
                **{
                    k: v
                    for k, v in kw.items()
                    if k not in ("model_id", "embedding_regularizer", "net_regularizer")
                },
            )
            self.embedding_layer = FeatureEmbedding(feature_map, kw["embedding_dim"])
            self.mlp = MLP_Block(
                input_dim=feature_map.sum_emb_out_dim(),
                output_dim=1,
                hidden_units=kw["hidden_units"],
                hidden_activations="relu",
                output_activation=self.output_activation,
            )
            self.compile(kw["optimizer"], kw["loss"], kw["learning_rate"])
            self.reset_parameters()
            self.model_to_device()

        def forward(self, inputs):
            return {
                "y_pred": self.mlp(self.embedding_layer(self.get_inputs(inputs), flatten_emb=True))
            }

    out = Path(a.out).resolve()
    (out / "csv").mkdir(parents=True, exist_ok=True)
    data = PreparedData(Path(a.data))
    counts = {s: write_csv(data, s, out / "csv" / f"{s}.csv") for s in ("train", "valid", "test")}
    params = dict(
        dataset_id="prepared",
        data_root=str(out / "built"),
        data_format="csv",
        **{f"{s}_data": str(out / "csv" / f"{s}.csv") for s in ("train", "valid", "test")},
        min_categr_count=1,
        feature_cols=[
            {"name": "item_id", "active": True, "dtype": "str", "type": "categorical"},
            {
                "name": "item_history",
                "active": True,
                "dtype": "str",
                "type": "sequence",
                "splitter": "^",
                "max_len": data.max_history,
                "share_embedding": "item_id",
                "padding": "pre",
            },
        ],
        label_col={"name": "label", "dtype": "float"},
        model_id="outside_dnn",
        model_root=str(out / "checkpoints"),
        loss="binary_crossentropy",
        metrics=["AUC", "logloss"],
        task="binary_classification",
        optimizer="adam",
        learning_rate=5e-4,
        embedding_regularizer=a.embedding_l2,
        net_regularizer=0,
        batch_size=1024,
        embedding_dim=64,
        hidden_units=[1024, 512, 256],
        epochs=a.epochs,
        shuffle=True,
        seed=2019,
        monitor="AUC",
        monitor_mode="max",
        early_stop_patience=2,
        save_best_only=True,
        eval_steps=None,
        num_workers=1,
        verbose=0,
        group_id=None,
        pickle_feature_encoder=True,
        debug_mode=False,
        feature_config=None,
        feature_specs=None,
        use_features=None,
    )
    (out / "checkpoints" / "prepared").mkdir(parents=True, exist_ok=True)
    seed_everything(seed=params["seed"])
    encoder = FeatureProcessor(**params)
    params["train_data"], params["valid_data"], params["test_data"] = build_dataset(
        encoder, **params
    )
    root = os.path.join(params["data_root"], params["dataset_id"])
    feature_map = FeatureMap(params["dataset_id"], root)
    feature_map.load(os.path.join(root, "feature_map.json"), params)
    model = OutsideDNN(feature_map, **params)
    train, valid = RankDataLoader(feature_map, stage="train", **params)
    model.fit(train, validation_data=valid, **params)  # restores the best epoch's weights
    result = {"samples": counts, "valid": dict(model.evaluate(valid))}
    test = RankDataLoader(feature_map, stage="test", **params)
    result["test"] = dict(model.evaluate(test))
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
