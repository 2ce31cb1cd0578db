"""Export a trained model's serving scorer as a self-contained, checksummed artifact.

    python -m pipeline.export --run RUN_DIR [--format pt2|aoti|torchscript]
        [--table-dtype fp32|fp16|int8] [--out PATH]              # a pipeline.train run
    export_model(model, PreparedData(DIR), "scorer.pt2")       # from a trained CTRModel
    scorer, info = load_artifact("scorer.pt2")                # verified; torch only
    state = scorer.encode_user(hist_items, user)               # (L,) long, () long
    ctr = scorer.score(state, candidates)                      # (B,) long -> (B,) float

Formats (pipeline/artifact.py describes their layout):

- `pt2` (the default): torch.export programs of the user side (`encode_user`) and of the
  candidate side (`score`), dynamic history length (0 included) and candidate count, the
  tables as a third program (`tables`, stored once) and `serving.json`, in one .pt2;
- `aoti`: those programs compiled by AOTInductor into the same kind of package (about
  a minute per program on 2 CPU cores), for this machine's CPU (-march=native) and with
  fused kernels for `--threads` threads;
- `torchscript`: `torch.jit.script` of models.scorer.CTRScorer (torch 2.13 deprecates
  it; kept for GPU hosts, docs/serving.md).

Before an artifact is written, its programs are run against the eager scorer on probe
requests (empty history, one item, a few; one candidate, a few): torch.export traces one
branch of an `if` on the history length without saying so, and the probes are what finds
it (such an arch gets a second pair of programs for the empty history). The AOTInductor
package is loaded back and probed the same way. `serving.json` records the sha256 of
every other member; the artifact is verified before it is renamed into place.

`--table-dtype` stores the ID embedding tables in fp16 or int8 (row-wise, an fp16 scale
and bias per row, as torchrec's quantized tables); the multimodal table stays fp32 (its
dot products are bucketized, and a bucket changes with any rounding near a boundary).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.export import Dim, ExportedProgram

from data_prep.integrity import atomic_file
from models import cpu_ops
from models.ctr import CTRModel, CTRTask
from models.id_map import ID_SPREAD, INPUT_ID_SPACE, admitted
from models.scorer import (
    TABLE_DTYPES,
    CandidateProgram,
    CTRScorer,
    TableStore,
    UserProgram,
    scorer_from_model,
    uses_cpu_kernels,
)
from models.zoo import build_model, make_config
from pipeline.artifact import (
    CANDIDATE_PROGRAM,
    CPU_OPS_MEMBER,
    EMPTY,
    FORMATS,
    METADATA,
    TABLES_PROGRAM,
    USER_PROGRAM,
    ArtifactError,
    ProgramScorer,
    load_artifact,
    load_programs,
    payload_checksums,
    read_metadata,
    torch_private_api,
    verify_artifact,
)
from pipeline.checkpoint import CheckpointError, best_or_latest_checkpoint
from pipeline.data import DataError, PreparedData

__all__ = [
    "ArtifactError",
    "ExportError",
    "export_model",
    "export_programs",
    "export_scorer",
    "load_artifact",
    "load_trained_model",
    "read_metadata",
    "verify_artifact",
]

SUFFIX = {"pt2": ".pt2", "aoti": ".pt2", "torchscript": ".pt"}
# Probe requests (history length, candidates) run through every exported program.
PROBES = ((0, 3), (1, 1), (2, 5), (5, 2), (9, 4))
PROBE_ATOL = 1e-5


class ExportError(ValueError):
    """A training run that cannot be exported; the message names the file."""


# ------------------------------------------------------------------ torch.export programs
def _ids(count: int, size: int, offset: int = 0) -> torch.Tensor:
    """`count` valid ids of a table of `size` rows (example and probe inputs)."""
    return (torch.arange(count) * 7 + offset + 2) % max(size, 1)


def _user_args(scorer: CTRScorer, hist: torch.Tensor, user: torch.Tensor) -> tuple:
    """encode_user's request arguments: (hist, user), and the times (L,) for an arch that
    reads them (DMAE; example and probe times: one day apart, newest last)."""
    if not scorer.needs_times:
        return (hist, user)
    return (hist, user, torch.arange(hist.shape[0], 0, -1, dtype=torch.float32) * 86400.0)


def _export_pair(
    scorer: CTRScorer, tables: dict[str, torch.Tensor], min_history: int | None
) -> tuple[ExportedProgram, ExportedProgram]:
    """(encode_user, score) exported with dynamic B and L >= min_history, or at L = 0 when
    min_history is None. The state's dims that follow L are found by encoding two
    lengths (so a weight dim equal to L by chance is not taken for it)."""
    items, users = int(tables["item_table"].shape[0]), int(tables["user_table"].shape[0])
    user = torch.tensor(min(2, users - 1))
    static_tables = {name: None for name in tables}
    candidates = Dim("candidates", min=1)
    user_side, candidate_side = UserProgram(scorer).eval(), CandidateProgram(scorer).eval()
    if min_history is None:
        hist, hist_shape = _ids(0, items), None
    else:
        history = Dim("history", min=min_history)
        hist, hist_shape = _ids(7, items), {0: history}
    args = _user_args(scorer, hist, user)
    shapes = (static_tables, hist_shape, None) + ((hist_shape,) if len(args) == 3 else ())
    with torch.no_grad():
        user_program = torch.export.export(user_side, (tables, *args), dynamic_shapes=shapes)
        state = user_side(tables, *args)
        other = (
            user_side(tables, *_user_args(scorer, _ids(5, items), user))
            if min_history is not None
            else state
        )
        state_shapes = {
            key: {i: history for i in range(value.dim()) if value.shape[i] != other[key].shape[i]}
            or None
            for key, value in state.items()
        }
        candidate_program = torch.export.export(
            candidate_side,
            (tables, state, _ids(9, items, 3)),
            dynamic_shapes=(static_tables, state_shapes, {0: candidates}),
        )
    return user_program, candidate_program


def probe_errors(scorer: CTRScorer, programmed: ProgramScorer) -> float:
    """Largest |CTR difference| between the programs and the eager scorer on PROBES;
    ValueError naming the first probe whose result differs by more than PROBE_ATOL."""
    items, users = programmed.num_items, programmed.num_users
    worst = 0.0
    for i, (length, count) in enumerate(PROBES):
        hist, cands = _ids(length, items, i), _ids(count, items, 5 * i + 1)
        user = torch.tensor((3 * i + 2) % max(users, 1))
        args = _user_args(scorer, hist, user)
        with torch.no_grad():
            expected = scorer.score(scorer.encode_user(*args), cands)
            try:
                got = programmed.score(programmed.encode_user(*args), cands)
            except Exception as error:  # torch raises many kinds here; all mean the same
                raise ValueError(f"L={length} B={count}: {type(error).__name__}: {error}") from None
        err = float((got - expected).abs().max()) if count else 0.0
        if not err <= PROBE_ATOL:  # NaN included
            raise ValueError(f"L={length} B={count}: CTRs differ from eager by {err:.3g}")
        worst = max(worst, err)
    return worst


def export_programs(scorer: CTRScorer) -> tuple[dict[str, ExportedProgram], dict[str, Any]]:
    """The scorer's torch.export programs, probed against it: {tables, encode_user,
    score[, encode_user_empty, score_empty]} and what serving.json records of them.

    One pair covers every L >= 0 unless the arch's code branches on an empty history
    (torch.export then traces the non-empty branch: the probe at L = 0 fails); such an arch
    gets a pair for L >= 1 and a pair exported at L = 0."""
    scorer = scorer.eval()
    tables = scorer.tables()
    with torch.no_grad():
        store = torch.export.export(TableStore(tables), ())
    programs: dict[str, ExportedProgram] = {TABLES_PROGRAM: store}
    history = {USER_PROGRAM: [0, None], CANDIDATE_PROGRAM: [0, None]}

    def runners(eps: dict[str, ExportedProgram]) -> ProgramScorer:
        modules = {name: ep.module() for name, ep in eps.items()}
        return ProgramScorer(modules, tables, scorer.chunk, needs_times=scorer.needs_times)

    split = None
    try:
        user_program, candidate_program = _export_pair(scorer, tables, 0)
        pair = {USER_PROGRAM: user_program, CANDIDATE_PROGRAM: candidate_program}
        error = probe_errors(scorer, runners(pair))
    except Exception as failure:  # a probe that differs, or torch refusing L = 0 outright
        split = f"{type(failure).__name__}: {failure}"
        user_program, candidate_program = _export_pair(scorer, tables, 1)
        user_empty, candidate_empty = _export_pair(scorer, tables, None)
        pair = {
            USER_PROGRAM: user_program,
            CANDIDATE_PROGRAM: candidate_program,
            USER_PROGRAM + EMPTY: user_empty,
            CANDIDATE_PROGRAM + EMPTY: candidate_empty,
        }
        history = {
            USER_PROGRAM: [1, None],
            CANDIDATE_PROGRAM: [1, None],
            USER_PROGRAM + EMPTY: [0, 0],
            CANDIDATE_PROGRAM + EMPTY: [0, 0],
        }
        try:
            error = probe_errors(scorer, runners(pair))
        except ValueError as failure:
            raise ExportError(f"the exported programs differ from the scorer: {failure}") from None
    programs.update(pair)
    info = {
        "programs": {name: {"history": history[name]} for name in pair},
        "empty_history_programs": split is not None,
        "probe_max_abs_error": {"pt2": error},
    }
    if split is not None:
        info["empty_history_reason"] = f"one pair for every L failed its probe ({split})"
    return programs, info


def aoti_files(programs: dict[str, ExportedProgram]) -> dict[str, list[Any]]:
    """AOTInductor's files of every serving program (not `tables`), compiled for this CPU
    (`aot_compile` with `aot_inductor.package=True`, what aoti_compile_and_package does)."""
    compile_ = torch_private_api().aot_compile
    files = {}
    for name, program in programs.items():
        if name == TABLES_PROGRAM:
            continue
        args, kwargs = program.example_inputs
        files[name] = compile_(
            program.module(), args, kwargs, options={"aot_inductor.package": True}
        )
    return files


# ------------------------------------------------------------------------- the archive
def _metadata(scorer: CTRScorer, kind: str, metadata: dict[str, Any]) -> dict[str, Any]:
    tables = scorer.tables()
    return {
        "format": kind,
        "interface": {
            "encode_user": "(hist_items: int64 (L,), user: int64 ()) -> Dict[str, Tensor]",
            "score": "(state, candidates: int64 (B,)) -> float32 (B,) CTR",
        },
        "torch": torch.__version__,
        "interest": type(scorer.interest).__name__,
        "serving_form": "per_candidate" if scorer.per_candidate else "cached_user",
        # DMAE (issue 17): encode_user takes hist_times (L,) float32 seconds as well.
        "needs_times": bool(scorer.needs_times),
        "modalities": int(scorer.item_mm_modalities.shape[0]),
        "num_buckets": int(scorer.bucketizer.boundaries.numel()) + 1,
        "num_items": int(tables["item_table"].shape[0]),
        "num_users": int(tables["user_table"].shape[0]),
        "chunk": int(scorer.chunk),
        "table_dtype": scorer.table_dtype,
        "tables": {
            name: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
            for name, t in tables.items()
        },
        "table_bytes": sum(t.numel() * t.element_size() for t in tables.values()),
        **_id_map_metadata(scorer),
        **metadata,
    }


def _id_map_metadata(scorer: CTRScorer) -> dict[str, Any]:
    """serving.json's `managed_collisions` for a scorer with id maps (requests carry raw
    user and item ids below `input_id_space`; the maps are tables, under the checksums),
    nothing otherwise."""
    if not scorer.managed_ids:
        return {}
    return {
        "managed_collisions": {
            "input_id_space": INPUT_ID_SPACE,
            # Raw ids pass through models.id_map.spread_ids before the maps (inside the
            # programs); the maps hold spread ids.
            "id_spread": ID_SPREAD,
            "id_maps": {
                kind: {
                    "raw_ids": f"{kind}_raw_ids",
                    "rows": f"{kind}_id_rows",
                    "miss_rows": f"{kind}_miss_rows",
                    "admitted": admitted(getattr(scorer, f"{kind}_raw_ids")),
                    "buckets": int(getattr(scorer, f"{kind}_miss_rows").numel()),
                    "bucket_width": int(getattr(scorer, f"{kind}_bucket_width")),
                }
                for kind in ("user", "item")
            },
        }
    }


def _package(
    kind: str,
    info: dict[str, Any],
    save: Callable[[io.BytesIO, str], None],
) -> bytes:
    """The archive written by `save(buffer, serving_json)` with its checksums: members
    other than serving.json are the same in every save of one content, so their
    checksums, taken from a first save, describe the archive saved next."""
    first = io.BytesIO()
    save(first, "{}")
    info = {**info, "payload_sha256": payload_checksums(first.getvalue())}
    archive = io.BytesIO()
    save(archive, json.dumps(info, indent=2))
    return archive.getvalue()


def _torchscript_bytes(scorer: CTRScorer, info: dict[str, Any]) -> bytes:
    scripted = torch.jit.script(scorer)  # deprecated by torch 2.13: the warning is shown

    def save(buffer: io.BytesIO, serving: str) -> None:
        torch.jit.save(scripted, buffer, _extra_files={METADATA: serving})

    return _package("torchscript", info, save)


def _cpu_ops_files(scorer: CTRScorer) -> dict[str, str]:
    """The fused CPU kernels' library, for a package whose programs call them (models/
    cpu_ops.py): {member name: the .so, base64} (a pt2 extra file is text)."""
    if not uses_cpu_kernels(scorer):
        return {}
    library = cpu_ops.library_path()
    if library is None:
        raise ExportError(
            "the scorer runs the fused CPU kernels but their library file is unknown "
            "(registered by another module): export with cpu_kernels off"
        )
    return {CPU_OPS_MEMBER: base64.b64encode(Path(library).read_bytes()).decode("ascii")}


def _pt2_bytes(scorer: CTRScorer, kind: str, info: dict[str, Any]) -> bytes:
    api = torch_private_api()
    programs, program_info = export_programs(scorer)
    library = _cpu_ops_files(scorer)
    info = {**info, **program_info, "cpu_ops_library": CPU_OPS_MEMBER if library else None}
    if kind == "pt2":
        contents: dict[str, Any] = {"exported_programs": programs}
    else:
        started = time.perf_counter()
        contents = {
            "exported_programs": {TABLES_PROGRAM: programs[TABLES_PROGRAM]},
            "aoti_files": aoti_files(programs),
        }
        info["aoti_compile_s"] = round(time.perf_counter() - started, 1)
        # Inductor's C++ kernels are built for this CPU (-march=native) and for the torch
        # thread count at compile time (1: no OpenMP regions in them; the ATen calls of
        # the program, its GEMMs, follow the serving process's thread count).
        info["aoti_kernel_threads"] = torch.get_num_threads()

    # A package stores each program's example inputs (data/sample_inputs/*.pt, pickled):
    # here they would hold the tables, once per serving program. AOTInductor has compiled
    # from them above; the package does without them.
    for program in contents["exported_programs"].values():
        program.example_inputs = None

    def save(buffer: io.BytesIO, serving: str) -> None:
        api.package_pt2(buffer, **contents, extra_files={METADATA: serving, **library})

    data = _package(kind, info, save)
    if kind == "aoti":  # the compiled package, loaded back and probed like the programs
        try:
            compiled = load_programs(data, json.loads(_read_serving(data)))
            error = probe_errors(scorer, compiled)
        except (ValueError, RuntimeError) as failure:
            raise ExportError(
                f"the AOTInductor package differs from the scorer: {failure}"
            ) from None
        info["probe_max_abs_error"]["aoti"] = error
        data = _package(kind, info, save)
    return data


def _read_serving(data: bytes) -> str:
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        name = next(n for n in archive.namelist() if n.endswith(f"/extra/{METADATA}"))
        return archive.read(name).decode()


def format_of(path: str | Path, kind: str | None = None) -> str:
    """The format to write: `kind`, or by suffix (.pt2: pt2, otherwise torchscript)."""
    if kind is None:
        return "pt2" if Path(path).suffix == ".pt2" else "torchscript"
    if kind not in FORMATS:
        raise ExportError(f"format must be one of {FORMATS}, got {kind!r}")
    if SUFFIX[kind] == ".pt2" and Path(path).suffix != ".pt2":
        raise ExportError(f"{path}: a {kind} artifact is a .pt2 package; name it *.pt2")
    return kind


def export_scorer(
    scorer: CTRScorer, path: str | Path, metadata: dict[str, Any], kind: str | None = None
) -> Path:
    """Write `scorer` in format `kind` (default: by the suffix of `path`) with `metadata`
    and its checksums as serving.json; returns the path, once the written archive has been
    verified."""
    path = Path(path)
    kind = format_of(path, kind)
    info = _metadata(scorer.eval(), kind, metadata)
    if kind == "torchscript":
        data = _torchscript_bytes(scorer, info)
    else:
        data = _pt2_bytes(scorer, kind, info)
    try:
        verify_artifact(path, data)
    except ArtifactError as error:
        raise ArtifactError(f"{path}: the export does not verify: {error}") from None
    with atomic_file(path) as tmp:  # renamed into place when complete
        tmp.write_bytes(data)
    return path


def item_categories(data: PreparedData) -> np.ndarray | None:
    """item_category.npy (num_items,) when the data has categories, else None."""
    if not data.has_categories:
        return None
    path = data.root / "item_category.npy"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the data has categories but no item -> category table")
    return np.load(path)


def export_model(
    model: CTRModel,
    data: PreparedData,
    path: str | Path,
    per_candidate: bool = False,
    metadata: dict[str, Any] | None = None,
    kind: str | None = None,
    table_dtype: str = "fp32",
) -> Path:
    """Export a trained, unsharded CTRModel with the prepared data's tables.

    per_candidate: serve the interest arch by its training forward per candidate instead
    of its per-user cache (arches without a cache, such as DIN, are always served so).
    kind: "pt2", "aoti" or "torchscript" (default: by the suffix of `path`).
    table_dtype: "fp32", "fp16" or "int8" ID tables (models.scorer.quantize_table).
    """
    scorer = scorer_from_model(
        model, data.item_mm, item_categories(data), per_candidate=per_candidate,
        table_dtype=table_dtype, feature_tables=data.feature_tables(),
        modality_mm=data.modality_mm,
    )  # fmt: skip
    info = {"data_checksum": data.checksum, "max_history": data.max_history, **(metadata or {})}
    context = context_columns(data.schema)
    if context["sparse"] or context["dense"]:  # the request's context columns (score_requests)
        info["context"] = context
    return export_scorer(scorer, path, info, kind)


def context_columns(schema: Any) -> dict[str, Any]:
    """The schema's event features a request carries: sparse ones (name, table rows), in
    `state["context"]` order, and dense ones (names), in `state["context_dense"]` order."""
    return {
        "sparse": [[f.name, f.rows] for f in schema.pooled if f.source == "event"],
        "dense": [f.name for f in schema.dense if f.source == "event"],
    }


def load_trained_model(
    run_dir: str | Path, data_dir: str | Path | None = None, verify: str = "sizes"
) -> tuple[CTRModel, PreparedData, dict[str, Any]]:
    """The unsharded CTRModel of a pipeline.train run, from its latest DCP checkpoint.

    Reads RUN_DIR/metrics.json (model name, model_config, data path; `data_dir` overrides
    the path) and the latest verified checkpoint of RUN_DIR/checkpoints (see
    pipeline.checkpoint). DCP reassembles the sharded embedding tables into whole tensors
    in this single process. `verify`: how the data folder is checked ("sizes", "full").
    Returns (model in eval mode, data, metrics).
    """

    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    try:
        result = json.loads(metrics_path.read_bytes())
        name, model_config = result["model"], result["model_config"]
        data_path = data_dir or result["data"]["path"]
    except FileNotFoundError:
        raise ExportError(f"{metrics_path}: missing; is {run_dir} a pipeline.train run?") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, RecursionError) as error:
        raise ExportError(f"{metrics_path}: not a training result ({error!r})") from None
    data = PreparedData(data_path, verify=verify)
    recorded = (result.get("data") or {}).get("manifest_checksum")
    if recorded is not None and recorded != data.checksum:
        raise ExportError(
            f"{data.root}: its manifest checksum {data.checksum[:12]} is not the one the run "
            f"trained on ({str(recorded)[:12]}, {metrics_path}); pass the run's data folder"
        )
    dropped = (result.get("config") or {}).get("drop_features")
    if dropped:  # the run left these schema features out (pipeline.train --drop-features)
        data.drop_features(*dropped.split(","))
    # Managed collisions split their id maps in one bucket per training rank (and round
    # the tables' rows up to a multiple of it): the model is built as it was trained.
    world = int(result.get("world_size") or 1)
    model = build_model(
        name, data.feature_spec(), make_config(name, model_config), world_size=world
    )
    # The weights the run's test metrics are of (its best validation step's with
    # --restore-best), verified against their checksums before anything is unpickled.
    latest = best_or_latest_checkpoint(run_dir)
    if latest is None:
        raise ExportError(
            f"{run_dir / 'checkpoints'}: no checkpoint (train with --restore-best and "
            "validation, or --checkpoint-every N)"
        )
    task = CTRTask(model)
    state = {"model": task.state_dict()}  # the trainer's layout: {"model": CTRTask state}
    dcp.load(state, checkpoint_id=str(latest))
    task.load_state_dict(state["model"])
    return model.eval(), data, result


def evaluate_artifact(path: str | Path, data: PreparedData, split: str = "test") -> dict[str, Any]:
    """AUC, GAUC and log loss of an artifact on a split of the prepared data, scored as
    serving scores (load_artifact; one request per user and history, its rows' items as
    the candidates; similarities from the artifact's tables, not the shards' hist_sims),
    with the artifact's size and load time."""
    import pyarrow.parquet as pq

    from pipeline import metrics

    started = time.perf_counter()
    scorer, info = load_artifact(path)
    load_s = time.perf_counter() - started
    needs_times = bool(info.get("needs_times"))
    columns = ["user", "item", "label", "hist_items"] + (["hist_ts_delta"] if needs_times else [])
    table = pq.ParquetDataset(data.split_files(split)).read(columns=columns)
    users = table.column("user").to_numpy()
    items = table.column("item").to_numpy()
    labels = table.column("label").to_numpy()
    hists = table.column("hist_items").to_pylist()
    deltas = table.column("hist_ts_delta").to_pylist() if needs_times else [()] * len(hists)
    groups: dict[tuple[int, tuple[int, ...], tuple[int, ...]], list[int]] = {}
    for row, (user, hist, delta) in enumerate(zip(users.tolist(), hists, deltas)):
        groups.setdefault((user, tuple(hist), tuple(delta)), []).append(row)
    scores = np.zeros(len(items), dtype=np.float32)
    started = time.perf_counter()
    with torch.inference_mode():
        for (user, hist, delta), rows in groups.items():
            args = (torch.tensor(hist, dtype=torch.long), torch.tensor(user))
            if needs_times:  # the behaviours' times, a request input (models/scorer.py)
                args = (*args, torch.tensor(delta, dtype=torch.float32))
            state = scorer.encode_user(*args)
            scores[rows] = scorer.score(state, torch.from_numpy(items[rows])).numpy()
    return {
        "artifact": str(path),
        "format": info["format"],
        "table_dtype": info.get("table_dtype", "fp32"),
        "bytes": Path(path).stat().st_size,
        "table_bytes": info.get("table_bytes"),
        "split": split,
        "rows": len(items),
        "requests": len(groups),
        "auc": metrics.auc(scores, labels),
        "gauc": metrics.gauc(scores, labels, users)[0],
        "logloss": metrics.logloss(scores, labels),
        "load_s": load_s,
        "scoring_s": time.perf_counter() - started,
    }


def default_path(run_dir: Path, kind: str, table_dtype: str) -> Path:
    """RUN_DIR/scorer[.aoti][.fp16|.int8].pt2 (or .pt for TorchScript)."""
    parts = ["scorer"] + (["aoti"] if kind == "aoti" else [])
    parts += [] if table_dtype == "fp32" else [table_dtype]
    return run_dir / (".".join(parts) + SUFFIX[kind])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export a training run's serving scorer.")
    parser.add_argument("--run", type=Path, required=True, help="pipeline.train output dir")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="pt2: torch.export programs (default, or by the --out suffix); aoti: compiled by "
        "AOTInductor; torchscript: torch.jit.script (deprecated by torch)",
    )
    parser.add_argument(
        "--table-dtype",
        choices=TABLE_DTYPES,
        default="fp32",
        help="ID embedding tables: fp32, fp16, or int8 row-wise (fp16 scale and bias per row)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="artifact path (default RUN/scorer[.aoti][.DTYPE].pt2, .pt for torchscript)",
    )
    parser.add_argument("--data", type=Path, default=None, help="prepared data (default: run's)")
    parser.add_argument(
        "--per-candidate",
        action="store_true",
        help="serve the interest arch per candidate (its training form) instead of from a "
        "per-user cache",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="check the sha256 of every file of the data folder (default: sizes)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads while exporting; an aoti package's fused kernels are compiled "
        "for this many (default: torch's)",
    )
    parser.add_argument(
        "--evaluate",
        metavar="SPLIT",
        default=None,
        help="then score SPLIT (e.g. test) of the run's data through the artifact: AUC, GAUC, "
        "log loss, size (printed as JSON)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        kind = args.format or ("pt2" if args.out is None else format_of(args.out))
        out = args.out or default_path(args.run, kind, args.table_dtype)
        format_of(out, kind)
        verify = "full" if args.verify else "sizes"
        model, data, result = load_trained_model(args.run, args.data, verify)
        meta = {
            "model": result["model"],
            "model_config": result["model_config"],
            "run": str(args.run),
        }
        path = export_model(
            model, data, out, per_candidate=args.per_candidate, metadata=meta, kind=kind,
            table_dtype=args.table_dtype,
        )  # fmt: skip
    except (ExportError, ArtifactError, CheckpointError, DataError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    size = path.stat().st_size / 2**20
    print(
        f"exported {result['model']} ({kind}, {args.table_dtype} tables, {size:.1f} MiB) -> {path}"
    )
    if args.evaluate:
        try:
            print(json.dumps(evaluate_artifact(path, data, args.evaluate), indent=2))
        except (ArtifactError, DataError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
