"""Settings shared by every model of the zoo; each model's file extends them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelConfig:
    """Settings shared by every model (defaults: the paper's Amazon settings).

    embedding_dim: ID embedding size of users, items and categories.
    hidden_dim: d_h = H * dk, the interest vector size of the attention arches.
    num_heads: H.
    mlp_dims: hidden layers of the prediction head (a final 1-unit layer is added).
    temperature: tau of the attention softmax.
    use_user_embedding: feed the user-ID embedding to the head.
    dropout: dropout rate after each hidden layer of the head MLP (training only).
    managed_collisions: user, item and category ids from an open space through torchrec's
        managed collision modules (models/collisions.py): an id unseen at prep time gets its
        own row (admitted every mc_eviction_interval training steps, LRU eviction) instead of
        the out-of-vocabulary row; tables keep the data's vocabulary sizes as capacity.
    dense_dims: layers of the dense arch over the schema's dense features (models/pooled.py;
        unused when the data has none).
    """

    embedding_dim: int = 32
    hidden_dim: int = 32
    num_heads: int = 4
    mlp_dims: list[int] = field(default_factory=lambda: [80, 40])
    temperature: float = 1.0
    use_user_embedding: bool = True
    dropout: float = 0.0
    managed_collisions: bool = False
    mc_eviction_interval: int = 100
    dense_dims: list[int] = field(default_factory=lambda: [16])
