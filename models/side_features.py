"""The schema's pooled and dense features at serving time: torch only, TorchScript- and
torch.export-compatible (no postponed annotations here: TorchScript reads the class ones).

A request is one user and B candidates. `SideFeatures.encode(user)` computes once per
request what depends on the user only: the pooled embeddings of the user-table features
(looked up by user index in the prepared `features/user_NAME.npy` tables) and their dense
values; the request's context (the schema's `event` features) travels in the state as
`context` (Ke,) int64 indices and `context_dense` (Fe,) float32 raw values, set by the
caller after `encode_user` (defaults: 1, missing, and the features' `fill`).
`candidates(state, candidates (B,))` looks up the item features of each candidate
(`features/item_NAME.npy`), assembles every pooled embedding and dense value in schema
order, exactly as training's PooledArch (sum or mean pooling) and the dense arch see them,
and returns the head's side input (B, P + dense_dims[-1]) (`OverArch.side_input`).

All pooled tables are one padded table `weight` (R, Dmax): feature k reads rows
base[k] + id, columns :dim[k].
"""

import copy

import numpy as np
import torch
from torch import Tensor, nn

MISSING = 1  # the index of a missing or unknown value (docs/data-format.md)


def _long(values) -> Tensor:
    return torch.as_tensor(np.asarray(values), dtype=torch.long)


class SideFeatures(nn.Module):
    """The serving form of the schema's pooled and dense features (module docstring).

    Built by `side_features_from_model`; `enabled` is False for the default schema (then
    nothing here runs and the tensors are empty)."""

    enabled: bool
    user_dims: list[int]
    user_bases: list[int]
    user_mean: list[bool]
    user_multi: list[bool]
    event_dims: list[int]
    event_bases: list[int]
    item_dims: list[int]
    item_bases: list[int]
    item_mean: list[bool]
    event_log1p: list[bool]
    num_event_dense: int
    has_dense: bool

    def __init__(self) -> None:
        super().__init__()
        self.enabled = False
        self.user_dims, self.user_bases, self.user_mean, self.user_multi = [], [], [], []
        self.event_dims, self.event_bases = [], []
        self.item_dims, self.item_bases, self.item_mean = [], [], []
        self.event_log1p = []
        self.num_event_dense = 0
        self.has_dense = False
        self.event_fill = nn.Parameter(torch.zeros(0), requires_grad=False)
        for name, value in (
            ("weight", torch.zeros(0, 0)),
            ("user_ids", torch.zeros(0, 0, dtype=torch.long)),
            ("user_values", torch.zeros(0, dtype=torch.long)),
            ("user_offsets", torch.zeros(0, 0, dtype=torch.long)),
            ("item_ids", torch.zeros(0, 0, dtype=torch.long)),
            ("user_dense", torch.zeros(0, 0)),
            ("item_dense", torch.zeros(0, 0)),
            ("pooled_perm", torch.zeros(0, dtype=torch.long)),
            ("dense_perm", torch.zeros(0, dtype=torch.long)),
        ):
            self.register_buffer(name, value)
        self.dense_arch = nn.Identity()

    def _rows(self, ids: Tensor, base: int, dim: int) -> Tensor:
        return self.weight.index_select(0, ids + base)[:, :dim]

    def encode(self, user: Tensor) -> dict[str, Tensor]:
        """user () int64 -> the user's side state: side_user (Pu,), side_user_dense (Fu,),
        and the context placeholders (`context` (Ke,) = 1, `context_dense` (Fe,) = fill)."""
        parts: list[Tensor] = [self.weight.new_zeros(0)]
        u = user.reshape(1)
        single = self.user_ids.index_select(0, u).reshape(-1)  # (Ks,) one id per feature
        s = 0
        m = 0
        for k in range(len(self.user_dims)):
            if self.user_multi[k]:  # a list per user: its slice of user_values
                lo = int(self.user_offsets[m, u[0]])
                hi = int(self.user_offsets[m, u[0] + 1])
                rows = self._rows(self.user_values[lo:hi], self.user_bases[k], self.user_dims[k])
                pooled = rows.sum(0)
                if self.user_mean[k]:
                    pooled = pooled / float(max(hi - lo, 1))
                m += 1
            else:
                ids = single.narrow(0, s, 1)
                pooled = self._rows(ids, self.user_bases[k], self.user_dims[k])[0]
                s += 1
            parts.append(pooled)
        dense = self.user_dense.index_select(0, u.reshape(1)).reshape(-1)
        return {
            "side_user": torch.cat(parts),
            "side_user_dense": dense,
            "context": torch.ones(len(self.event_dims), dtype=torch.long),  # 1: missing
            "context_dense": self.event_fill.detach().clone(),
        }

    def candidates(self, state: dict[str, Tensor], candidates: Tensor) -> Tensor:
        """(B,) candidates -> the head's side input (B, P + dense_dims[-1])."""
        batch = candidates.shape[0]
        request: list[Tensor] = [state["side_user"]]
        context = state["context"]
        for k in range(len(self.event_dims)):
            request.append(
                self._rows(context.narrow(0, k, 1), self.event_bases[k], self.event_dims[k])[0]
            )
        shared = torch.cat(request)
        parts: list[Tensor] = [shared.unsqueeze(0).expand(batch, shared.shape[0])]
        item_ids = self.item_ids.index_select(0, candidates)
        for k in range(len(self.item_dims)):
            parts.append(self._rows(item_ids[:, k], self.item_bases[k], self.item_dims[k]))
        pooled = torch.cat(parts, dim=1).index_select(1, self.pooled_perm)
        if not self.has_dense:
            return pooled
        raw = state["context_dense"]
        events: list[Tensor] = [raw.new_zeros(0)]
        for k in range(self.num_event_dense):
            value = raw.narrow(0, k, 1)
            events.append(torch.log1p(value) if self.event_log1p[k] else value)
        shared_dense = torch.cat([state["side_user_dense"]] + events)
        dense = torch.cat(
            [
                shared_dense.unsqueeze(0).expand(batch, shared_dense.shape[0]),
                self.item_dense.index_select(0, candidates),
            ],
            dim=1,
        ).index_select(1, self.dense_perm)
        return torch.cat([pooled, self.dense_arch(dense)], dim=1)


def side_features_from_model(model, feature_tables: dict[str, np.ndarray]) -> SideFeatures:
    """The serving side features of a trained, unsharded CTRModel (models/ctr.py) with the
    prepared data's per-user and per-item feature tables (`PreparedData.feature_tables`:
    `user_NAME`, `user_NAME.offsets`, `item_NAME`). Disabled for the default schema."""
    side = SideFeatures()
    schema = model.over_arch.schema
    if not (schema.pooled or schema.dense):
        return side
    side.enabled = True
    tables: dict[str, Tensor] = {}
    if model.pooled_arch is not None:
        tables = {
            n: b.weight.detach().float() for n, b in model.pooled_arch.ebc.embedding_bags.items()
        }
    width = max([t.shape[1] for t in tables.values()] or [0])
    base_of: dict[str, int] = {}
    blocks, row = [], 0
    for name, table in tables.items():
        base_of[name] = row
        blocks.append(torch.nn.functional.pad(table, (0, width - table.shape[1])))
        row += table.shape[0]
    side.weight = torch.cat(blocks) if blocks else torch.zeros(0, 0)
    columns = {"user": [], "event": [], "item": []}  # feature -> (start, dim) in schema order
    user_values, user_offsets, item_ids, user_single = [], [], [], []
    embedding_dim = model.over_arch.embedding_dim
    for feature in schema.pooled:
        dim = feature.dim or embedding_dim
        base = base_of[feature.table]
        columns[feature.source].append((feature.name, dim))
        if feature.source == "user":
            values = np.asarray(feature_tables[f"user_{feature.name}"], dtype=np.int64)
            offsets = feature_tables.get(f"user_{feature.name}.offsets")
            if offsets is None:  # one value per user
                user_single.append(values)
            else:
                shift = sum(len(v) for v in user_values)
                user_values.append(values)
                user_offsets.append(np.asarray(offsets, dtype=np.int64) + shift)
            side.user_multi.append(offsets is not None)
            side.user_dims.append(dim)
            side.user_bases.append(base)
            side.user_mean.append(feature.pooling == "mean")
        elif feature.source == "event":
            side.event_dims.append(dim)
            side.event_bases.append(base)
        else:
            item_ids.append(np.asarray(feature_tables[f"item_{feature.name}"], dtype=np.int64))
            side.item_dims.append(dim)
            side.item_bases.append(base)
            side.item_mean.append(feature.pooling == "mean")
    num_users = model.sparse_arch.embedding_collection.embeddings["t_user"].weight.shape[0]
    side.user_ids = (
        _long(np.stack(user_single, axis=1))
        if user_single
        else torch.zeros(num_users, 0, dtype=torch.long)
    )
    if user_values:
        side.user_values = _long(np.concatenate(user_values))
        side.user_offsets = _long(np.stack(user_offsets))
    if item_ids:
        side.item_ids = _long(np.stack(item_ids, axis=1))
    else:
        num_items = model.sparse_arch.embedding_collection.embeddings["t_item"].weight.shape[0]
        side.item_ids = torch.zeros(num_items, 0, dtype=torch.long)
    side.pooled_perm = _long(_permutation(schema.pooled, columns, embedding_dim, "pooled"))
    dense = schema.dense
    if dense:
        side.has_dense = True
        side.dense_arch = copy.deepcopy(model.over_arch.dense_arch)
        by_source = {s: [f for f in dense if f.source == s] for s in ("user", "event", "item")}
        num_items = side.item_ids.shape[0]
        side.user_dense = _dense_table(
            [feature_tables[f"user_{f.name}"] for f in by_source["user"]], num_users
        )
        side.item_dense = _dense_table(
            [feature_tables[f"item_{f.name}"] for f in by_source["item"]], num_items
        )
        side.num_event_dense = len(by_source["event"])
        side.event_log1p = [f.transform == "log1p" for f in by_source["event"]]
        side.event_fill = nn.Parameter(
            torch.tensor([f.fill or 0.0 for f in by_source["event"]], dtype=torch.float32),
            requires_grad=False,
        )
        order = by_source["user"] + by_source["event"] + by_source["item"]
        side.dense_perm = _long([order.index(f) for f in dense])
    return side.eval().requires_grad_(False)


def _dense_table(columns: list[np.ndarray], rows: int) -> Tensor:
    if not columns:
        return torch.zeros(rows, 0)
    return torch.as_tensor(np.stack([np.asarray(c, np.float32) for c in columns], axis=1))


def _permutation(features, columns, embedding_dim: int, what: str) -> list[int]:
    """Column index of each schema-order pooled column in [user, event, item] order."""
    start, where = 0, {}
    for source in ("user", "event", "item"):
        for name, dim in columns[source]:
            where[name] = (start, dim)
            start += dim
    out: list[int] = []
    for feature in features:
        first, dim = where[feature.name]
        out += list(range(first, first + dim))
    return out
