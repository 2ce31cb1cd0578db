"""Serving artifacts: their formats, checksums and verified loading (torch only).

    scorer, info = load_artifact("scorer.pt2")      # any format; ArtifactError when not intact
    state = scorer.encode_user(hist_items, user)    # (L,) long, () long -> dict of tensors
    ctr = scorer.score(state, candidates)           # (B,) long -> (B,) float CTR

Formats (pipeline/export.py writes them, `serving.json` says which):

- `pt2`: a torch.export package (.pt2) of three programs: `tables` (no input; returns
  the tables, stored once), `encode_user(tables, hist_items, user) -> state` (and
  `hist_times` (L,) float32 last when serving.json has `needs_times`: DMAE) and
  `score(tables, state, candidates) -> CTR` with dynamic history length L (0 included)
  and candidate count B. The two serving programs take the tables as their first
  argument, so the big tables are not stored twice (a package keeps each program's
  weights apart). An arch whose code branches on an empty history (dnn, make, sasrec)
  has a second pair, `encode_user_empty` / `score_empty`, exported at L = 0, and the
  pair above then covers L >= 1.
- `aoti`: the same programs compiled by AOTInductor (C++ kernels in shared libraries)
  in one .pt2, the `tables` program kept as an exported program.
- `torchscript`: `torch.jit.script` of models.scorer.CTRScorer (deprecated by torch 2.13;
  kept for GPU hosts, see docs/serving.md).

Every format is a zip archive with one top folder; `extra/serving.json` inside describes
the artifact and records the sha256 of every other member (`payload_sha256`; the members
that differ between two identical saves excepted). `load_artifact` reads the file once,
checks every member and loads those same bytes, so what is loaded is what was checked.
An artifact holds code and pickles: load artifacts from trusted places
(docs/reliability.md).

This module imports torch and the standard library only: a serving host can copy it
alone beside the artifact (tests/test_export_formats.py loads it so, by file path, in a
process where neither `models` nor `pipeline` can be imported).
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import hashlib
import io
import json
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

FORMATS = ("pt2", "aoti", "torchscript")
METADATA = "serving.json"
# The fused CPU kernels' shared library (models/cpu_ops.py), base64, in a pt2 / aoti
# package whose programs call `torch.ops.dmf_cpu.*` (serving.json: cpu_ops_library).
CPU_OPS_MEMBER = "dmf_cpu_ops.so.b64"
CPU_OPS_NAMESPACE = "dmf_cpu"
# Members of an archive that differ between two saves of the same content.
UNHASHED = ("extra/serving.json", ".data/serialization_id")
TABLES_PROGRAM = "tables"
USER_PROGRAM = "encode_user"
CANDIDATE_PROGRAM = "score"
EMPTY = "_empty"  # suffix of the programs exported at L = 0

State = dict[str, Tensor]


class ArtifactError(ValueError):
    """An artifact that is not intact: damaged, truncated, modified or without checksums."""


def torch_private_api() -> SimpleNamespace:
    """The torch functions this project needs that torch 2.13 keeps private, in one place.

    - `package_pt2` / `load_pt2` (torch.export.pt2_archive._package): write / read one
      .pt2 holding several programs, exported (`exported_programs`) and AOTInductor-
      compiled (`aoti_files`), with `extra_files`. The public torch.export.save / load
      hold a single program (named "model"); the public torch.export.pt2_archive
      exports only the raw PT2ArchiveWriter / Reader.
    - `aot_compile` (torch._inductor, with `aot_inductor.package=True`): the AOTInductor
      files of one program, to be packaged with others. The documented
      torch._inductor.aoti_compile_and_package writes a one-program package and itself
      points to aot_compile + package for several.

    tests/test_export_formats.py::test_private_torch_api_is_as_expected checks their
    names, keywords and results and fails naming what changed.
    """
    from torch._inductor import aot_compile
    from torch.export.pt2_archive import _package

    return SimpleNamespace(
        package_pt2=_package.package_pt2, load_pt2=_package.load_pt2, aot_compile=aot_compile
    )


# ------------------------------------------------------------------------- checksums
def _members(archive: zipfile.ZipFile) -> dict[str, str]:
    """sha256 of every member of an artifact archive, keyed without its top folder."""
    out = {}
    for info in archive.infolist():
        _, _, name = info.filename.partition("/")
        if name and not info.is_dir() and name not in UNHASHED:
            out[name] = hashlib.sha256(archive.read(info)).hexdigest()
    return out


def payload_checksums(data: bytes) -> dict[str, str]:
    """The checksums `serving.json` records: sha256 of each archive member (code, programs,
    weights, tables), the members that change between identical saves excepted."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return _members(archive)


def verify_artifact(path: str | Path, data: bytes | None = None) -> dict[str, Any]:
    """serving.json of an artifact whose members all match the checksums it records;
    ArtifactError naming the artifact and the first member that does not."""
    path = Path(path)
    try:
        data = path.read_bytes() if data is None else data
    except OSError as error:
        raise ArtifactError(f"{path}: cannot be read ({error})") from None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = [i.filename for i in archive.infolist()]
            serving = [n for n in names if n.partition("/")[2] == f"extra/{METADATA}"]
            if len(serving) != 1 or len({n.partition("/")[0] for n in names}) != 1:
                raise ArtifactError(
                    f"{path}: not an artifact of pipeline.export (no {METADATA}: damaged or "
                    "truncated, or written by something else)"
                )
            metadata = json.loads(archive.read(serving[0]))
            actual = _members(archive)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as error:
        raise ArtifactError(f"{path}: damaged or truncated archive ({error})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{path}: {METADATA} is not JSON ({error})") from None
    expected = metadata.get("payload_sha256") if isinstance(metadata, dict) else None
    if not isinstance(expected, dict) or not expected:
        raise ArtifactError(
            f"{path}: {METADATA} records no checksums (exported before they were added); "
            "export it again"
        )
    for name in sorted(set(expected) | set(actual)):
        if name not in actual:
            raise ArtifactError(f"{path}: member {name} is missing")
        if name not in expected:
            raise ArtifactError(f"{path}: member {name} is not in the checksums")
        if actual[name] != expected[name]:
            raise ArtifactError(f"{path}: member {name} differs from its checksum (damaged)")
    return metadata


def read_metadata(path: str | Path) -> dict[str, Any]:
    """serving.json of an exported artifact (verified)."""
    return verify_artifact(path)


# --------------------------------------------------------------------------- scorers
class ProgramScorer:
    """A `pt2` or `aoti` artifact with CTRScorer's interface.

    programs: name -> callable (an exported program's module, or an AOTInductor runner),
    each taking the tables first; tables: the `tables` program's result. `encode_user`
    and `score` pick the `_empty` pair for an empty history when the artifact has one;
    `score` runs the candidates in chunks of `chunk` (serving.json), as CTRScorer does.
    """

    def __init__(
        self,
        programs: dict[str, Callable[..., Any]],
        tables: dict[str, Tensor],
        chunk: int,
        needs_times: bool = False,
    ) -> None:
        self.programs = programs
        self.needs_times = needs_times  # serving.json: encode_user takes hist_times too
        self.tables = tables
        self.chunk = chunk
        self.split_empty = USER_PROGRAM + EMPTY in programs
        self.num_items = int(tables["item_table"].shape[0])
        self.num_users = int(tables["user_table"].shape[0])

    def _program(self, name: str, length: int) -> Callable[..., Any]:
        return self.programs[name + EMPTY if self.split_empty and length == 0 else name]

    def encode_user(
        self, hist_items: Tensor, user: Tensor, hist_times: Tensor | None = None
    ) -> State:
        """hist_items (L,) long, oldest first; user () long; hist_times (L,) float32
        seconds before the request, required when serving.json has needs_times (DMAE)
        -> the user's state."""
        program = self._program(USER_PROGRAM, int(hist_items.shape[0]))
        if not self.needs_times:
            return program(self.tables, hist_items, user)
        if hist_times is None or hist_times.shape != hist_items.shape:
            raise ValueError(
                "this model reads the behaviours' times: pass hist_times (L,), the request's "
                "time minus each behaviour's in seconds (hist_ts_delta)"
            )
        return program(self.tables, hist_items, user, hist_times.to(torch.float32))

    def score(self, state: State, candidates: Tensor) -> Tensor:
        """candidates (B,) long -> CTR (B,) float, in chunks of `chunk` candidates."""
        if candidates.shape[0] == 0:
            return torch.zeros(0)
        program = self._program(CANDIDATE_PROGRAM, int(state["history"].shape[0]))
        if candidates.shape[0] <= self.chunk:
            return program(self.tables, state, candidates)
        return torch.cat([program(self.tables, state, c) for c in candidates.split(self.chunk)])


def register_cpu_ops(data: bytes, metadata: dict[str, Any]) -> None:
    """Register the fused CPU kernels a package's programs call, from its own copy of the
    library (written to a private temporary file: the loader needs a path). Kept when the
    operators are registered already in this process (by models.cpu_ops or an earlier
    artifact: one library per process registers the namespace)."""
    member = metadata.get("cpu_ops_library")
    if not member or hasattr(getattr(torch.ops, CPU_OPS_NAMESPACE), "bucket_softmax"):
        return
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = [n for n in archive.namelist() if n.partition("/")[2] == f"extra/{member}"]
        if len(names) != 1:
            raise ArtifactError(f"serving.json names {member} but the package has no such member")
        library = base64.b64decode(archive.read(names[0]))
    # Once loaded (dlopen), the library stays mapped: its file can go with the folder.
    with tempfile.TemporaryDirectory(prefix="artifact-ops-") as folder:
        path = Path(folder) / member.removesuffix(".b64")
        path.write_bytes(library)
        try:
            torch.ops.load_library(str(path))
        except OSError as error:
            raise ArtifactError(f"the package's CPU kernels do not load here ({error})") from None


def load_programs(data: bytes, metadata: dict[str, Any]) -> ProgramScorer:
    """The ProgramScorer of a `pt2` / `aoti` artifact's bytes (not verified here)."""
    register_cpu_ops(data, metadata)
    load_pt2 = torch_private_api().load_pt2
    if metadata.get("format") == "aoti":
        # AOTInductor's loader reads a file: these bytes (the verified ones), written to a
        # private temporary folder; the shared libraries are extracted from it at load.
        with tempfile.TemporaryDirectory(prefix="artifact-") as folder:
            copy = Path(folder) / "artifact.pt2"
            copy.write_bytes(data)
            contents = load_pt2(str(copy))
        programs: dict[str, Callable[..., Any]] = dict(contents.aoti_runners)
    else:
        contents = load_pt2(io.BytesIO(data))
        programs = {
            name: program.module()
            for name, program in contents.exported_programs.items()
            if name != TABLES_PROGRAM
        }
    tables = contents.exported_programs[TABLES_PROGRAM].module()()
    missing = {USER_PROGRAM, CANDIDATE_PROGRAM} - set(programs)
    if missing:
        raise ArtifactError(f"the package has no program {sorted(missing)}")
    return ProgramScorer(
        programs, tables, int(metadata.get("chunk", 2048)), bool(metadata.get("needs_times"))
    )


def load_artifact(
    path: str | Path, map_location: str | torch.device | None = None
) -> tuple[Any, dict[str, Any]]:
    """(scorer, serving.json) of an exported artifact of any format, verified first.

    The bytes are read once, checked against the checksums in serving.json and loaded
    from memory, so what is loaded is what was checked. The scorer has `encode_user` and
    `score` (a ScriptModule for `torchscript`, a ProgramScorer otherwise). map_location:
    TorchScript only (`pt2` and `aoti` artifacts are CPU programs). Artifacts hold code:
    load them from trusted places (docs/reliability.md)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ArtifactError(f"{path}: cannot be read ({error})") from None
    metadata = verify_artifact(path, data)
    kind = metadata.get("format", "torchscript")
    if kind not in FORMATS:
        raise ArtifactError(f"{path}: unknown format {kind!r} in {METADATA}")
    if kind != "torchscript" and map_location not in (None, "cpu", torch.device("cpu")):
        raise ArtifactError(f"{path}: a {kind} artifact is a CPU program (map_location)")
    try:
        if kind == "torchscript":
            scorer = torch.jit.load(io.BytesIO(data), map_location=map_location)
        else:
            scorer = load_programs(data, metadata)
    except (RuntimeError, KeyError, ValueError) as error:
        if isinstance(error, ArtifactError):
            raise ArtifactError(f"{path}: {error}") from None
        raise ArtifactError(f"{path}: verified but not loadable as {kind} ({error})") from None
    return scorer, metadata


def retain_freed_memory(trim_threshold: int = 1 << 30) -> bool:
    """Let this process reuse freed memory instead of returning it to the OS (glibc's
    `mallopt`: no mmap per large block, M_MMAP_MAX = 0, and no trimming of the heap below
    `trim_threshold` bytes of free memory). True when applied (glibc), False elsewhere.

    A request allocates its large temporaries afresh: at B=1200, L=400 each (H, B, L)
    float tensor is 7.7 MB, which glibc serves by mmap and unmaps when freed, so every
    request faults its pages in again (a few ms per tensor on this machine; more than the
    GEMMs around it). With the memory kept, the next request reuses the same pages. The
    heap then holds the largest working set seen (tens of MB here). The same effect is what
    jemalloc or tcmalloc give PyTorch CPU inference when preloaded.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, trim_threshold))


def table_sizes(scorer: Any) -> tuple[int, int]:
    """(items, users) of a loaded scorer's tables, any format."""
    if isinstance(scorer, ProgramScorer):
        return scorer.num_items, scorer.num_users
    return int(scorer.item_table.shape[0]), int(scorer.user_table.shape[0])
