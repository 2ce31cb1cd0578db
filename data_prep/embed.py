"""Item embeddings: titles -> cached vectors; several modalities -> one d_m vector.

Empty titles are never sent to the encoder: such items get a zero vector (similarity 0
to everything). Results are cached under `cache_dir/<key>.npy`, the key being a hash of
(titles, encoder name, encoder settings), so a re-run skips the encoder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from data_prep.columns import as_strings
from data_prep.encoders import TextEncoder, make_encoder
from data_prep.integrity import atomic_file, file_sha256, write_json_atomic
from data_prep.limits import positive_int
from data_prep.rejects import InputError
from data_prep.similarity import normalize_rows


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("DATA_PREP_CACHE", Path(base) / "dmf-data-prep"))


def cache_key(titles: list[str], encoder: TextEncoder) -> str:
    digest = hashlib.sha256(json.dumps([encoder.name, encoder.settings()], sort_keys=True).encode())
    for title in titles:
        digest.update(title.encode("utf-8") + b"\0")
    return digest.hexdigest()


def embed_titles(titles: np.ndarray, encoder: TextEncoder, cache_dir: Path | None) -> np.ndarray:
    """Titles (N,) str -> float32 (N, dim) L2-normalised; blank titles give zero rows."""
    titles = [str(t).strip() for t in titles]
    path = None if cache_dir is None else cache_dir / f"{cache_key(titles, encoder)}.npy"
    if path is not None and path.exists():
        cached = _read_cache(path, (len(titles), encoder.dim))
        if cached is not None:
            print(f"item embeddings: cache hit {path}")
            return cached
    out = np.zeros((len(titles), encoder.dim), dtype=np.float32)
    rows = [i for i, title in enumerate(titles) if title]
    if rows:
        out[rows] = encoder.encode([titles[i] for i in rows])
    if path is not None:
        with atomic_file(path) as tmp:
            with tmp.open("wb") as f:
                np.save(f, out)
            digest = file_sha256(tmp)
        write_json_atomic(_cache_sum(path), {"sha256": digest})
    return out


def _cache_sum(path: Path) -> Path:
    return path.with_name(path.name + ".sha256.json")


def _read_cache(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """A cached table whose sha256 matches the one written with it, else None (recomputed,
    with a message): a damaged cache never turns into wrong item vectors."""
    try:
        recorded = json.loads(_cache_sum(path).read_text())["sha256"]
        if file_sha256(path) != recorded:
            raise ValueError("sha256 differs from the one written with it")
        cached = np.load(path, allow_pickle=False)
        if cached.shape != shape or cached.dtype != np.float32:
            raise ValueError(f"shape {cached.shape} {cached.dtype}, expected {shape} float32")
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as error:
        print(f"item embeddings: ignoring the cache {path} ({error}); encoding again")
        return None
    return cached


def orthogonal_projection(dim_in: int, dim_out: int, seed: int) -> np.ndarray:
    """A fixed random (dim_in, dim_out) matrix with orthonormal columns (dim_out <= dim_in)."""
    if dim_out > dim_in:
        raise ValueError(f"cannot project {dim_in}-d vectors up to {dim_out}-d")
    gaussian = np.random.default_rng(seed).normal(size=(dim_in, dim_out))
    q, _ = np.linalg.qr(gaussian)
    return q.astype(np.float32)


def fuse(modalities: list[np.ndarray], dim: int | None = None, seed: int = 0) -> np.ndarray:
    """Fuse per-item vectors of several modalities into one L2-normalised vector.

    Each modality (N, d_k) is L2-normalised and weighted 1/sqrt(K), the K modalities are
    concatenated, optionally projected to `dim` by a fixed random orthogonal matrix
    (`seed`), and normalised again. An item that is zero in every modality stays zero;
    cosine of fused vectors = mean of the per-modality cosines (without projection).
    """
    parts = [normalize_rows(m)[0] / np.sqrt(len(modalities)) for m in modalities]
    fused = np.concatenate(parts, axis=1)
    if dim is not None and dim != fused.shape[1]:
        fused = fused @ orthogonal_projection(fused.shape[1], dim, seed)
    return normalize_rows(fused)[0]


@dataclass
class EmbedSettings:
    """How item vectors are made from titles (and optionally fused and projected)."""

    encoder: str = "minilm"
    max_tokens: int = 32
    hashed_dim: int = 256
    project_dim: int | None = None
    seed: int = 0
    cache_dir: Path | None = None

    def text_encoder(self) -> TextEncoder:
        if self.encoder == "minilm":
            return make_encoder("minilm", max_tokens=self.max_tokens)
        return make_encoder(self.encoder, dim=self.hashed_dim)

    def embed(self, titles: np.ndarray) -> tuple[np.ndarray, str]:
        """Titles (N,) -> (float32 (N, d) normalised vectors, description of their source)."""
        encoder = self.text_encoder()
        vectors = embed_titles(titles, encoder, self.cache_dir)
        source = f"title:{encoder.name}:{json.dumps(encoder.settings(), sort_keys=True)}"
        if self.project_dim is not None:
            vectors = fuse([vectors], self.project_dim, self.seed)
            source += f" -> orthogonal-projection:{self.project_dim}:seed={self.seed}"
        return vectors, source


def add_embed_arguments(parser: argparse.ArgumentParser, encoders: tuple[str, ...]) -> None:
    parser.add_argument("--encoder", choices=encoders, default="minilm", help="title encoder")
    parser.add_argument(
        "--max-tokens", type=positive_int, default=32, help="minilm: tokens per title"
    )
    parser.add_argument("--hashed-dim", type=positive_int, default=256, help="hashed: vector size")
    parser.add_argument(
        "--project-dim",
        type=positive_int,
        help="project item vectors to this size (fixed random orthogonal)",
    )
    parser.add_argument("--projection-seed", type=int, default=0)
    parser.add_argument(
        "--cache-dir", type=Path, default=default_cache_dir(), help="embedding cache folder"
    )


def embed_settings(args: argparse.Namespace) -> EmbedSettings:
    return EmbedSettings(
        encoder=args.encoder,
        max_tokens=args.max_tokens,
        hashed_dim=args.hashed_dim,
        project_dim=args.project_dim,
        seed=args.projection_seed,
        cache_dir=args.cache_dir,
    )


def add_title_vectors(
    table: pa.Table,
    settings: EmbedSettings,
    title_column: str = "title",
    vector_column: str = "mm_vector",
) -> tuple[pa.Table, str, int]:
    """Table with titles -> (table with a vector column, vector source, number of blank titles)."""
    if title_column not in table.column_names:
        raise InputError(f"no column {title_column!r} to embed (columns: {table.column_names})")
    titles, blank, not_utf8 = as_strings(table.column(title_column))
    empty = blank | not_utf8
    vectors, source = settings.embed(np.where(empty, "", titles))
    offsets = pa.array(np.arange(len(vectors) + 1, dtype=np.int32) * vectors.shape[1])
    column = pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1)), mask=pa.array(empty))
    if vector_column in table.column_names:
        table = table.drop_columns([vector_column])
    return table.append_column(vector_column, column), source, int(empty.sum())
