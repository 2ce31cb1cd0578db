"""The serving form of the CTR model: one user, B candidates, torch only.

    scorer = scorer_from_model(model, item_mm)          # a trained, unsharded CTRModel
    state = scorer.encode_user(hist_items, user)        # (L,) long, () long -> dict
    ctr = scorer.score(state, candidates)               # (B,) long -> (B,) probabilities

The training form is models/ctr.py (TorchRec embeddings + OverArch); both build the head's
input with `item_representation` and `head_input` below, and both run the same interest
arch, whose training and serving forms sit side by side in its own file. This module
imports no torchrec, so a serving or benchmark host (a bare CUDA box, say) needs torch only.

The tables (ID embeddings, multimodal table, item -> category) are one dict of tensors
(`CTRScorer.tables()`), and every step of serving has a form that takes them as an
argument (`encode_user_with`, `score_chunk_with`): `UserProgram` and `CandidateProgram`
are those two steps as modules without the tables, which is what pipeline/export.py hands
to torch.export, so the two exported programs share one copy of the tables.

ID tables can be stored in reduced precision (`table_dtype`): fp16, or int8 row-wise with
an fp16 scale and bias per row (`quantize_table`, the layout of torchrec's / fbgemm's
8-bit row-wise quantized embeddings); rows are dequantized to fp32 at lookup.

Feature schema (models/schema.py): the extra sequence features join the item
representation (`sequence_table`, `item_sequence`), and the pooled and dense features are
`side` (models/side_features.py): the user's encoded in `encode_user`, the request's
context set in the state by the caller (`state["context"]`, `state["context_dense"]`),
the candidates' looked up per candidate, appended to the head's input as in training.

Behaviour times and per-modality similarities (DMAE, issue 17). An arch with
`needs_times` takes the behaviours' time deltas as a request input: `encode_user(hist_items,
user, hist_times)`, hist_times (L,) float seconds, the request's time minus each
behaviour's (the data's `hist_ts_delta`); they depend on the user only and are kept in the
state. An arch with `needs_modality_sims` gets the K per-modality cosines (B, L, K) of each
candidate to the history, computed here from the per-modality tables `item_mm_modalities`
(K, I, d_max: each modality's L2-normalised table, zero-padded to the widest, so a dot
product is that modality's cosine); the history's rows of it are cached per user
(`hist_mm_modalities_t`, (K, d_max, L)), the candidates' rows and the K (B, L) products are
per candidate. Other arches take neither: their artifacts hold an empty (0, 0, 0) table.

Managed collisions (models/collisions.py): a model trained with them looks raw ids up in
each table's id map (raw id -> row, `models.id_map.remap_ids`; never-admitted ids -> the
table's miss row). Its scorer holds the user and item maps as tables (`user_raw_ids`,
`user_id_rows`, `item_raw_ids`, `item_id_rows`: the sorted admitted raw ids (A + 1,) and
their rows; `user_miss_rows`, `item_miss_rows`: the miss row of each bucket (buckets,), one
bucket per training rank, `models.id_map.IdMap`) and maps the request's user, history and candidates through them before the ID
table lookups; `item_category` then holds each item's category *row* (its category id
mapped at export), and the multimodal table is read by the raw item id, which must be
a vocabulary index (items beyond item_mm have no multimodal vector). Without managed
collisions the six are empty (0,) and ids are table rows, as before.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models import cpu_ops
from models.buckets import Bucketizer
from models.id_map import IdMap, id_maps_of, rows_of
from models.interest import InterestArch, InterestInputs, State
from models.side_features import SideFeatures, side_features_from_model

TABLE_DTYPES = ("fp32", "fp16", "int8")
# The keys of CTRScorer.tables(): the ID tables with their int8 row parameters (empty
# unless int8), the item -> category table and the multimodal table.
TABLE_NAMES = (
    "item_table",
    "item_table_qparams",
    "user_table",
    "user_table_qparams",
    "category_table",
    "category_table_qparams",
    "item_category",
    "item_mm",
    "item_mm_modalities",
    "user_raw_ids",
    "user_id_rows",
    "item_raw_ids",
    "item_id_rows",
    "user_miss_rows",
    "item_miss_rows",
)
FP16_MAX = 65504.0


def item_representation(item: Tensor, category: Tensor | None) -> Tensor:
    """An item's representation (..., D): its ID embedding, then its category's if any."""
    if category is None:
        return item
    return torch.cat([item, category], dim=-1)


def head_input(interest: Tensor, target: Tensor, user: Tensor | None) -> Tensor:
    """The head's input (B, d_head): [interest; target; user embedding (when used)]."""
    if user is None:
        return torch.cat([interest, target], dim=-1)
    return torch.cat([interest, target, user], dim=-1)


def quantize_table(weight: Tensor, dtype: str) -> tuple[Tensor, Tensor]:
    """An ID table (N, E) as stored for serving: (rows, qparams).

    fp32: the rows, qparams empty; fp16: rows in fp16; int8: row-wise asymmetric 8-bit
    codes (uint8, 0..255) and qparams (N, 2) fp16 = (scale, bias) per row, so that
    row ~= codes * scale + bias (fbgemm's fused 8-bit row-wise layout, as torchrec serves
    int8 tables, with the scale and bias apart). Error per value: at most scale / 2 plus
    the fp16 rounding of the bias (a constant row is exact up to that rounding).

    >>> rows, qparams = quantize_table(torch.tensor([[0.0, 0.5, 1.0], [2.0, 2.0, 2.0]]), "int8")
    >>> values = lookup(rows, qparams, torch.tensor([0, 1]), torch.float32)
    >>> rows.tolist(), [[round(v, 3) for v in row] for row in values.tolist()]
    ([[0, 128, 255], [0, 0, 0]], [[0.0, 0.502, 1.0], [2.0, 2.0, 2.0]])
    """
    if dtype not in TABLE_DTYPES:
        raise ValueError(f"table dtype must be one of {TABLE_DTYPES}, got {dtype!r}")
    w = weight.detach().float().contiguous()
    empty = torch.zeros(0, dtype=torch.float16)
    if dtype == "fp32":
        return w.clone(), empty.float()
    if w.numel() and float(w.abs().max()) > FP16_MAX:
        raise ValueError(f"a table value exceeds the fp16 range ({FP16_MAX}); keep fp32")
    if dtype == "fp16":
        return w.half(), empty
    if w.shape[0] == 0 or w.shape[1] == 0:
        return torch.zeros(w.shape, dtype=torch.uint8), torch.zeros(w.shape[0], 2).half()
    low, high = w.min(1).values, w.max(1).values
    bias = low.half()
    scale = ((high - bias.float()) / 255.0).half()
    step = torch.where(scale.float() > 0, scale.float(), torch.ones_like(high))
    codes = ((w - bias.float()[:, None]) / step[:, None]).round().clamp(0, 255)
    return codes.to(torch.uint8), torch.stack([scale, bias], dim=1)


def lookup(table: Tensor, qparams: Tensor, ids: Tensor, dtype: torch.dtype) -> Tensor:
    """Rows `ids` of a table stored by `quantize_table`, as `dtype` (N, E)."""
    rows = table.index_select(0, ids)
    if table.dtype == torch.uint8:
        scale_bias = qparams.index_select(0, ids).to(dtype)
        return torch.addcmul(scale_bias[:, 1:], rows.to(dtype), scale_bias[:, :1])
    return rows.to(dtype)


def padded_request_inputs(
    history: Tensor,
    query: Tensor,
    sims: Tensor,
    buckets: Tensor,
    with_sims: bool,
    with_buckets: bool,
    times: Tensor | None = None,
    modality_sims: Tensor | None = None,
) -> InterestInputs:
    """One user's request as B training rows with one masked padding slot after the
    history (L + 1 slots), the same for any L, L = 0 included: a training batch is padded
    too, and every arch's forward ignores padding (tested), so this is the training forward
    of each row. Unlike `models.interest.request_inputs` nothing branches on L, which is
    what torch.export needs for a dynamic L that includes 0.

    history (L, D), query (B, D); sims and buckets (B, L), read only when `with_sims` /
    `with_buckets` (otherwise zeros); times (L,) seconds and modality_sims (B, L, K) when
    the arch reads them (a 0 in the padding slot, as a training batch pads them).
    """
    batch, length, width = query.shape[0], history.shape[0], history.shape[1]
    slots = length + 1
    history = torch.cat([history, history.new_zeros(1, width)], dim=0)
    if with_sims:
        sims = torch.cat([sims, sims.new_zeros(batch, 1)], dim=1)
    else:
        sims = query.new_zeros(batch, slots)
    if with_buckets:
        buckets = torch.cat([buckets, buckets.new_zeros(batch, 1)], dim=1)
    else:
        buckets = torch.zeros(batch, slots, dtype=torch.long, device=query.device)
    mask = torch.arange(slots, device=query.device) < length
    batch_times: Tensor | None = None
    if times is not None:
        padded_times = torch.cat([times, times.new_zeros(1)], dim=0)
        batch_times = padded_times.unsqueeze(0).expand(batch, slots)
    padded_modality: Tensor | None = None
    if modality_sims is not None:
        pad = modality_sims.new_zeros(batch, 1, modality_sims.shape[2])
        padded_modality = torch.cat([modality_sims, pad], dim=1)
    return InterestInputs(
        target=query,
        history=history.unsqueeze(0).expand(batch, slots, width),
        mask=mask.unsqueeze(0).expand(batch, slots),
        sims=sims,
        buckets=buckets,
        lengths=torch.full((batch,), length, dtype=torch.long, device=query.device),
        times=batch_times,
        modality_sims=padded_modality,
    )


def servable(interest: InterestArch) -> bool:
    """Whether CTRScorer serves this arch: every arch of the zoo since the scorer takes the
    behaviours' times as an input and computes per-modality similarities (module
    docstring); kept for the callers that ask."""
    return isinstance(interest, nn.Module)


class CTRScorer(nn.Module):
    """The serving form of a CTRModel: `encode_user` once per request, then `score`.

        scorer = scorer_from_model(model, item_mm)          # a trained, unsharded CTRModel
        state = scorer.encode_user(hist_items, user)        # (L,) long, () long -> dict
        ctr = scorer.score(state, candidates)               # (B,) long -> (B,) probabilities

    It holds the model's own interest arch and head classes (nothing is re-implemented for
    serving) and the tables as buffers (`tables()`, TABLE_NAMES): item_table (I, E),
    user_table (U, E), category_table (C, E) and item_category (I,) when the data has
    categories, in `table_dtype` with their int8 row parameters; item_mm (I, d_m)
    L2-normalised, fp32. `encode_user` computes what depends only on the user: the
    history's representations (L, D), its multimodal vectors, the user embedding and the
    arch's cache (`InterestArch.encode`). `score` computes, per candidate, the cosine
    similarities against the frozen multimodal table (cosine = dot), their buckets
    (`Bucketizer`, exact `bucketize`), the arch's `attend` and the head, in chunks of
    `chunk` candidates.

    per_candidate: serve the arch by its training forward over the history repeated per
    candidate (the reference, and the only form of arches that cache nothing, such as DIN).
    modality_mm (K, I, d_max): the per-modality tables (`stack_modalities`), required when
    the arch reads per-modality similarities; the arch's behaviour times come with the
    request (`encode_user(..., hist_times)`) when it reads times.
    The scorer is TorchScript-compatible and its two steps export with torch.export
    (`UserProgram`, `CandidateProgram`); the artifacts need torch only.
    """

    def __init__(
        self,
        interest: InterestArch,
        head: nn.Module,
        tables: dict[str, Tensor],
        item_mm: Tensor,
        boundaries: Tensor,
        item_category: Tensor | None = None,
        use_user_embedding: bool = True,
        per_candidate: bool = False,
        chunk: int = 2048,
        table_dtype: str = "fp32",
        side: SideFeatures | None = None,
        sequence: tuple[Tensor, Tensor] | None = None,
        modality_mm: Tensor | None = None,
        id_maps: Mapping[str, IdMap] | None = None,
    ) -> None:
        """side: the schema's pooled and dense features (`side_features_from_model`);
        sequence: (table (R, E), item -> rows (I, Ks)) of the schema's extra sequence
        features (item attributes joined to the item representation); id_maps: "user" and
        "item" -> IdMap of a model with managed collisions (module docstring)."""
        super().__init__()
        self.managed_ids: bool = id_maps is not None
        self.user_bucket_width: int = 1
        self.item_bucket_width: int = 1
        for kind in ("user", "item"):
            raw = rows = miss = torch.zeros(0, dtype=torch.long)
            if id_maps is not None:
                if kind not in id_maps:
                    raise ValueError(f"id_maps has no {kind!r} map (it has {sorted(id_maps)})")
                raw, rows, miss, width = id_maps[kind]
                setattr(self, f"{kind}_bucket_width", int(width))
            self.register_buffer(f"{kind}_raw_ids", raw.long().contiguous())
            self.register_buffer(f"{kind}_id_rows", rows.long().contiguous())
            self.register_buffer(f"{kind}_miss_rows", miss.long().contiguous())
        # Behaviour times (a request input) and per-modality similarities (module docstring).
        self.needs_times: bool = bool(getattr(interest, "needs_times", False))
        self.needs_modality_sims: bool = bool(getattr(interest, "needs_modality_sims", False))
        if self.needs_modality_sims:
            modalities = int(getattr(interest, "num_modalities", 0))
            if modality_mm is None or modality_mm.dim() != 3:
                raise ValueError(
                    f"{type(interest).__name__} reads {modalities} per-modality similarities: "
                    "pass modality_mm, the per-modality tables (PreparedData.modality_mm)"
                )
            if modality_mm.shape[0] != modalities or modality_mm.shape[1] != item_mm.shape[0]:
                raise ValueError(
                    f"modality_mm is {tuple(modality_mm.shape)}; the arch reads {modalities} "
                    f"modalities of {item_mm.shape[0]} items"
                )
            modality_table = modality_mm.detach().float().contiguous()
        else:
            modality_table = torch.zeros(0, 0, 0)
        self.register_buffer("item_mm_modalities", modality_table)
        self.interest = interest
        self.head = head
        self.table_dtype = table_dtype
        self.has_categories = item_category is not None
        category = tables.get("t_category")
        if category is None:
            category = torch.zeros(0, 0)
        for name, weight in (
            ("item_table", tables["t_item"]),
            ("user_table", tables["t_user"]),
            ("category_table", category),
        ):
            rows, qparams = quantize_table(weight, table_dtype)
            self.register_buffer(name, rows)
            self.register_buffer(f"{name}_qparams", qparams)
        empty = torch.zeros(0, dtype=torch.long)
        self.register_buffer(
            "item_category", empty if item_category is None else item_category.long()
        )
        self.register_buffer("item_mm", item_mm.detach().float().contiguous())
        self.bucketizer = Bucketizer(boundaries)
        self.use_user_embedding = use_user_embedding
        self.per_candidate = per_candidate or not interest.caches_user
        # What the interest arch reads: similarities (B, L) and/or their buckets.
        self.needs_sims: bool = interest.needs_sims or interest.needs_buckets
        self.needs_buckets: bool = interest.needs_buckets
        self.chunk = chunk
        self.side = side if side is not None else SideFeatures()
        table, rows = sequence if sequence is not None else (torch.zeros(0, 0), torch.zeros(0, 0))
        self.register_buffer("sequence_table", table.detach().float().contiguous())
        self.register_buffer("item_sequence", rows.long())
        self.num_sequence: int = int(rows.shape[1]) if rows.dim() == 2 else 0

    # ------------------------------------------------------------------ the tables
    @torch.jit.export
    def tables(self) -> dict[str, Tensor]:
        """The tables by name (TABLE_NAMES), the argument of the `*_with` methods."""
        return {
            "item_table": self.item_table,
            "item_table_qparams": self.item_table_qparams,
            "user_table": self.user_table,
            "user_table_qparams": self.user_table_qparams,
            "category_table": self.category_table,
            "category_table_qparams": self.category_table_qparams,
            "item_category": self.item_category,
            "item_mm": self.item_mm,
            "item_mm_modalities": self.item_mm_modalities,
            "user_raw_ids": self.user_raw_ids,
            "user_id_rows": self.user_id_rows,
            "item_raw_ids": self.item_raw_ids,
            "item_id_rows": self.item_id_rows,
            "user_miss_rows": self.user_miss_rows,
            "item_miss_rows": self.item_miss_rows,
        }

    def without_tables(self) -> CTRScorer:
        """The same scorer (its arch, head and bucketizer shared) without the table
        buffers: what the exported programs hold, the tables being their argument."""
        clone = copy.copy(self)
        clone._buffers = {k: v for k, v in self._buffers.items() if k not in TABLE_NAMES}
        clone._modules = dict(self._modules)
        clone._parameters = dict(self._parameters)
        return clone

    def item_rows_with(self, tables: dict[str, Tensor], ids: Tensor) -> Tensor:
        """Item ids (N,) -> their rows of item_table (N,): through the item id map with
        managed collisions, the ids themselves otherwise."""
        if not self.managed_ids:
            return ids
        return rows_of(
            ids,
            tables["item_raw_ids"],
            tables["item_id_rows"],
            tables["item_miss_rows"],
            self.item_bucket_width,
        )

    def user_rows_with(self, tables: dict[str, Tensor], users: Tensor) -> Tensor:
        """User ids (N,) -> their rows of user_table (N,), as `item_rows_with`."""
        if not self.managed_ids:
            return users
        return rows_of(
            users,
            tables["user_raw_ids"],
            tables["user_id_rows"],
            tables["user_miss_rows"],
            self.user_bucket_width,
        )

    def items_with(self, tables: dict[str, Tensor], ids: Tensor) -> Tensor:
        """Item representations (N,) -> (N, D), as OverArch builds them."""
        dtype = tables["item_mm"].dtype  # the scorer's floating dtype
        rows = self.item_rows_with(tables, ids)
        emb = lookup(tables["item_table"], tables["item_table_qparams"], rows, dtype)
        if self.has_categories:
            categories = lookup(
                tables["category_table"],
                tables["category_table_qparams"],
                tables["item_category"].index_select(0, ids),
                dtype,
            )
            emb = item_representation(emb, categories)
        if self.num_sequence:  # the schema's item attributes, in schema order
            rows = self.item_sequence.index_select(0, ids).reshape(-1)
            attributes = self.sequence_table.index_select(0, rows).to(dtype)
            emb = torch.cat([emb, attributes.reshape(ids.shape[0], -1)], dim=-1)
        return emb

    def items(self, ids: Tensor) -> Tensor:
        return self.items_with(self.tables(), ids)

    # ------------------------------------------------------------------ the user side
    def encode_user_with(
        self,
        tables: dict[str, Tensor],
        hist_items: Tensor,
        user: Tensor,
        hist_times: Tensor | None = None,
    ) -> State:
        """`encode_user` with the tables as an argument (the exported user program)."""
        history = self.items_with(tables, hist_items)
        state: State = {} if self.per_candidate else self.interest.encode(history)
        state["history"] = history
        hist_mm = tables["item_mm"].index_select(0, hist_items)
        state["hist_mm_t"] = hist_mm.t().contiguous()  # (d_m, L)
        user_row = lookup(
            tables["user_table"],
            tables["user_table_qparams"],
            self.user_rows_with(tables, user.reshape(1)),
            tables["item_mm"].dtype,
        )
        state["user"] = user_row.reshape(-1)  # (E,)
        if self.side.enabled:
            state.update(self.side.encode(user))
        if self.needs_times:  # (L,) seconds: per user, the same for every candidate
            if hist_times is None:
                raise ValueError(
                    "this model reads the behaviours' times: pass hist_times (L,), the "
                    "request's time minus each behaviour's in seconds (hist_ts_delta)"
                )
            if hist_times.shape != hist_items.shape:
                raise ValueError("hist_times must have one entry per history item (L,)")
            state["hist_times"] = hist_times.to(tables["item_mm"].dtype)
        if self.needs_modality_sims:  # (K, d_max, L): the history's rows of each modality
            modal = tables["item_mm_modalities"]
            state["hist_mm_modalities_t"] = modal.index_select(1, hist_items).transpose(1, 2)
        return state

    @torch.jit.export
    def encode_user(
        self, hist_items: Tensor, user: Tensor, hist_times: Tensor | None = None
    ) -> State:
        """hist_items (L,) long, oldest first; user () long; hist_times (L,) float seconds,
        required when the model reads times (`needs_times`) -> the user's state."""
        return self.encode_user_with(self.tables(), hist_items, user, hist_times)

    # ------------------------------------------------------------- the candidate side
    def similarities_with(
        self, tables: dict[str, Tensor], state: State, candidates: Tensor
    ) -> Tensor:
        return torch.mm(tables["item_mm"].index_select(0, candidates), state["hist_mm_t"])

    @torch.jit.export
    def similarities(self, state: State, candidates: Tensor) -> Tensor:
        """Cosine similarities (B, L) of candidates (B,) and the user's history."""
        return self.similarities_with(self.tables(), state, candidates)

    def modality_similarities_with(
        self, tables: dict[str, Tensor], state: State, candidates: Tensor
    ) -> Tensor:
        modal = tables["item_mm_modalities"].index_select(1, candidates)  # (K, B, d_max)
        sims = torch.bmm(modal, state["hist_mm_modalities_t"])  # (K, B, L)
        return sims.permute(1, 2, 0)

    @torch.jit.export
    def modality_similarities(self, state: State, candidates: Tensor) -> Tensor:
        """Per-modality cosines (B, L, K) of candidates (B,) and the history (the arches
        with `needs_modality_sims`; the training data's hist_sims_<name>, in its order)."""
        return self.modality_similarities_with(self.tables(), state, candidates)

    def score_chunk_with(
        self, tables: dict[str, Tensor], state: State, candidates: Tensor
    ) -> Tensor:
        """CTRs (B,) of candidates (B,), all at once (the exported candidate program)."""
        target = self.items_with(tables, candidates)
        sims, buckets = torch.zeros(0), torch.zeros(0, dtype=torch.long)
        if self.needs_sims:
            sims = self.similarities_with(tables, state, candidates)
        if self.needs_buckets:
            buckets = self.bucketizer(sims)
        history = state["history"]
        if self.per_candidate:
            times: Tensor | None = None
            if self.needs_times:
                times = state["hist_times"]
            modality_sims: Tensor | None = None
            if self.needs_modality_sims:
                modality_sims = self.modality_similarities_with(tables, state, candidates)
            inputs = padded_request_inputs(
                history, target, sims, buckets, self.needs_sims, self.needs_buckets,
                times, modality_sims,
            )  # fmt: skip
            interest = self.interest(inputs)
        else:
            interest = self.interest.attend(state, history, target, sims, buckets)
        user: Tensor | None = None
        if self.use_user_embedding:
            user = state["user"].expand(candidates.shape[0], state["user"].shape[0])
        head_in = head_input(interest, target, user)
        if self.side.enabled:
            side = self.side.candidates(state, candidates).to(head_in.dtype)
            head_in = torch.cat([head_in, side], dim=-1)
        return torch.sigmoid(self.head(head_in).squeeze(-1))

    def score_with(self, tables: dict[str, Tensor], state: State, candidates: Tensor) -> Tensor:
        if candidates.shape[0] <= self.chunk:
            return self.score_chunk_with(tables, state, candidates)
        chunks = [self.score_chunk_with(tables, state, c) for c in candidates.split(self.chunk)]
        return torch.cat(chunks)

    @torch.jit.export
    def score(self, state: State, candidates: Tensor) -> Tensor:
        """candidates (B,) long -> CTR (B,) float, in chunks of `chunk` candidates."""
        return self.score_with(self.tables(), state, candidates)

    def forward(
        self,
        hist_items: Tensor,
        user: Tensor,
        candidates: Tensor,
        hist_times: Tensor | None = None,
    ) -> Tensor:
        """One request: (L,), (), (B,)[, hist_times (L,)] -> CTR (B,)."""
        return self.score(self.encode_user(hist_items, user, hist_times), candidates)


class UserProgram(nn.Module):
    """`encode_user` as a module of its own: (tables, hist_items (L,), user ()) -> state.

    Holds the scorer without its tables (they are the first argument), so an exported
    program of it carries only the arch's user-side weights."""

    def __init__(self, scorer: CTRScorer) -> None:
        super().__init__()
        self.scorer = scorer.without_tables()

    def forward(
        self,
        tables: dict[str, Tensor],
        hist_items: Tensor,
        user: Tensor,
        hist_times: Tensor | None = None,
    ) -> State:
        return self.scorer.encode_user_with(tables, hist_items, user, hist_times)


class CandidateProgram(nn.Module):
    """`score` of one chunk as a module of its own: (tables, state, candidates (B,)) ->
    CTR (B,); the tables are the first argument, as for `UserProgram`."""

    def __init__(self, scorer: CTRScorer) -> None:
        super().__init__()
        self.scorer = scorer.without_tables()

    def forward(self, tables: dict[str, Tensor], state: State, candidates: Tensor) -> Tensor:
        return self.scorer.score_chunk_with(tables, state, candidates)


class TableStore(nn.Module):
    """The tables as the buffers of a module whose forward returns them: exported as a
    third program, it is where an artifact keeps its one copy of the tables."""

    def __init__(self, tables: dict[str, Tensor]) -> None:
        super().__init__()
        self.names = list(tables)
        for name, tensor in tables.items():
            self.register_buffer(name, tensor)

    def forward(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in self.names}


def scorer_from_model(
    model: Any,  # models.ctr.CTRModel (not imported here: it needs torchrec)
    item_mm: Tensor | np.ndarray,
    item_category: Tensor | np.ndarray | None = None,
    per_candidate: bool = False,
    chunk: int = 2048,
    table_dtype: str = "fp32",
    feature_tables: dict[str, np.ndarray] | None = None,
    cpu_kernels: bool = True,
    modality_mm: Mapping[str, Any] | None = None,
) -> CTRScorer:
    """The serving scorer of a trained, unsharded CTRModel (eval mode, no gradients).

    feature_tables: the prepared data's per-user and per-item feature tables
    (`pipeline.data.PreparedData.feature_tables()`), needed when the model's schema has
    pooled, dense or extra sequence features.

    item_mm (I, d_m): PreparedData.item_mm; item_category (I,): item_category.npy, needed
    when the model has categories; modality_mm: PreparedData.modality_mm (name -> (I, d_k),
    in the data's order), needed when the arch reads per-modality similarities (DMAE with
    two or more modalities; unused otherwise). The scorer shares the model's interest arch and head.
    table_dtype: how the ID tables are stored ("fp32", "fp16", "int8"; `quantize_table`).
    cpu_kernels: use the fused CPU kernels where they are available (`use_cpu_kernels`).
    A model with managed collisions is served through its id maps (module docstring).
    """
    over = model.over_arch
    if over.has_categories and item_category is None:
        raise ValueError("the model uses categories: pass item_category (item_category.npy)")
    id_maps = id_maps_of(model)
    collection = model.sparse_arch.embedding_collection
    if id_maps is not None:  # a ManagedCollisionEmbeddingCollection
        collection = collection._embedding_module
    tables = {name: table.weight for name, table in collection.embeddings.items()}
    category = None
    if over.has_categories:
        category = torch.as_tensor(np.asarray(item_category), dtype=torch.long)
        if id_maps is not None:  # each item's category row, by the category id map
            category = rows_of(category, *id_maps["category"])
    schema = getattr(over, "schema", None)
    if id_maps is not None and schema is not None and schema.extended:
        raise ValueError(
            "serving a model with managed collisions and schema features is not supported: "
            "their per-user and per-item tables are indexed by vocabulary ids"
        )
    side = sequence = None
    if schema is not None and schema.extended:
        if feature_tables is None:
            raise ValueError("the model has schema features: pass feature_tables")
        side = side_features_from_model(model, feature_tables)
        if schema.extra_sequence:
            blocks, rows, base = [], [], 0
            for feature in schema.extra_sequence:
                weight = tables[feature.table].detach().float()
                blocks.append(weight)
                rows.append(np.asarray(feature_tables[f"item_{feature.name}"]) + base)
                base += weight.shape[0]
            sequence = (torch.cat(blocks), torch.as_tensor(np.stack(rows, axis=1)))
    scorer = CTRScorer(
        copy.deepcopy(over.interest),
        copy.deepcopy(over.head),
        tables,
        torch.tensor(np.asarray(item_mm, dtype=np.float32)),
        over.bucket_boundaries,
        item_category=category,
        use_user_embedding=over.use_user_embedding,
        per_candidate=per_candidate,
        chunk=chunk,
        table_dtype=table_dtype,
        side=side,
        sequence=sequence,
        modality_mm=(
            stack_modalities(modality_mm)
            if modality_mm and getattr(over.interest, "needs_modality_sims", False)
            else None
        ),
        id_maps=id_maps,
    )
    use_cpu_kernels(scorer, cpu_kernels)
    return scorer.eval().requires_grad_(False)


def use_cpu_kernels(module: nn.Module, on: bool = True) -> bool:
    """Switch the fused CPU kernels of models/cpu_ops.py on (or off) in every submodule
    that has them (DTA's attend, the bucketizer, DMF's histogram); builds or loads the
    library first. Returns whether they are on: False where the library is unavailable
    (`models.cpu_ops.unavailable_reason()`), and the plain ATen forms run. TorchScript
    always runs the plain forms (the kernels are `torch.jit.unused` there)."""
    on = bool(on) and cpu_ops.enabled()
    for sub in module.modules():
        if hasattr(sub, "cpu_kernels"):
            sub.cpu_kernels = on
    return on


def uses_cpu_kernels(module: nn.Module) -> bool:
    """Whether any submodule runs a fused CPU kernel (an export then ships the library)."""
    return any(getattr(sub, "cpu_kernels", False) for sub in module.modules())


def stack_modalities(modality_mm: Mapping[str, Any]) -> Tensor:
    """name -> (I, d_k) tables -> (K, I, d_max), each zero-padded to the widest (a dot
    product of two padded rows is the modality's own)."""
    tables = [torch.from_numpy(np.array(t, dtype=np.float32)) for t in modality_mm.values()]
    width = max(int(t.shape[1]) for t in tables)
    return torch.stack([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in tables])
