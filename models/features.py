"""The lowest layer: feature keys and what the model knows of the data (`FeatureSpec`).

Both `models/` and `pipeline/` import this module; it imports neither, nor torchrec, so a
serving host with torch only can read a FeatureSpec. The batch type that carries these
features as a KeyedJaggedTensor is in models/batch.py (it needs torchrec).
"""

from __future__ import annotations

from dataclasses import dataclass

from models.schema import DEFAULT_SCHEMA, FeatureSchema

USER, ITEM, HIST_ITEM = "user", "item", "hist_item"
CATEGORY, HIST_CATEGORY = "category", "hist_category"


@dataclass(frozen=True)
class FeatureSpec:
    """What the model needs to know about the data (from the prepared data's manifest)."""

    num_users: int
    num_items: int
    num_categories: int  # 0 when the items have no categories
    bucket_boundaries: tuple[float, ...]  # M-1 cut points
    # Names of the items' separate modalities (manifest "modalities", e.g. ("image",
    # "text")), in the order of the batch's hist_modality_sims columns; () when the items
    # have one vector (item_mm, whose similarities are hist_sims).
    modalities: tuple[str, ...] = ()
    # The feature schema (models/schema.py, the manifest's "features"): the default one
    # is today's four keys; an extended one adds pooled, dense and sequence features.
    schema: FeatureSchema = DEFAULT_SCHEMA

    @property
    def num_modalities(self) -> int:
        """Modalities a per-modality model sees: the separate ones, else the one vector."""
        return max(len(self.modalities), 1)

    @property
    def num_buckets(self) -> int:
        return len(self.bucket_boundaries) + 1

    @property
    def has_categories(self) -> bool:
        return self.num_categories > 0
