"""Every served model in every artifact format, against the training forward.

pt2 and torchscript artifacts of every model the serving layer supports (plus DMF's
activity gate), with categories, are loaded in one fresh process where `models`,
`pipeline`, `data_prep` and `tests` cannot be imported (the loader is pipeline/artifact.py
read by file path; one pt2 artifact also by plain torch calls, the recipe of
docs/serving.md) and score requests with an empty history, one item, several items and
one candidate as `CTRModel(batch)` does (1e-5). Reduced-precision tables (fp16, int8)
are compared with the training forward at their stated tolerances, and each format's
programs with the eager scorer at the same table dtype. The AOTInductor package (one
compile, about 1-2 minutes on 2 cores) is the `slow` test at the end. Also: the private
torch APIs the export uses, checksums of pt2 artifacts, the scoring job and the benchmark
on pt2, and the fused DTA candidate side against its plain reference.
"""

from __future__ import annotations

import inspect
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from models.scorer import TABLE_DTYPES, lookup, quantize_table, scorer_from_model, servable
from models.zoo import MODELS, build_model, make_config
from pipeline import artifact, bench_serving, export, score_requests
from pipeline.data import PreparedData
from tests.fixtures import write_prepared, write_serving_data
from tests.test_serving import SMALL, random_model, spec_of, training_ctr

ROOT = Path(__file__).resolve().parents[1]
# Tolerances of reduced-precision tables against the fp32 training forward (CTRs in (0, 1),
# weights N(0, 0.3)): the largest differences measured over these tests were 6e-4 (fp16)
# and 1.0e-2 (int8), the bounds leave about 2x.
TOLERANCE = {"fp32": 1e-5, "fp16": 2e-3, "int8": 2.5e-2}
# (history length, candidates) of the requests scored in the fresh process.
REQUESTS = [(5, 7), (0, 4), (1, 1), (12, 3)]


def reads_times(name: str, spec) -> bool:
    """DMAE's artifacts take the behaviours' times too: exported and checked on data with
    times and two modalities in test_dmae_artifacts_* below."""
    return getattr(build_model(name, spec, make_config(name, SMALL)).over_arch.interest,
                   "needs_times", False)  # fmt: skip


def served(spec) -> list[tuple[str, dict]]:
    """Every model of the zoo the serving layer supports (those without times; DMAE: its
    own tests below), plus DMF's activity gate."""
    names = [
        name
        for name in sorted(MODELS)
        if servable(build_model(name, spec, make_config(name, SMALL)).over_arch.interest)
        and not reads_times(name, spec)
    ]
    return [*[(name, {}) for name in names], ("dmf", {"activity_gate": True})]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    return PreparedData(write_serving_data(tmp_path_factory.mktemp("prepared")))


def requests(num_items: int, num_users: int) -> list[tuple[list[int], int, list[int]]]:
    rng = np.random.default_rng(11)
    return [
        (
            rng.integers(2, num_items, size=length).tolist(),
            int(rng.integers(2, num_users)),
            rng.integers(0, num_items, size=count).tolist(),  # 0 and 1 (padding, OOV) too
        )
        for length, count in REQUESTS
    ]


FRESH = """
import importlib.abc, importlib.util, json, sys
import torch

class Blocked(importlib.abc.MetaPathFinder):  # the project's code cannot be imported here
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("models", "pipeline", "data_prep", "tests"):
            raise ImportError(f"{name} is blocked in this process")
        return None

sys.meta_path.insert(0, Blocked())
spec = importlib.util.spec_from_file_location("serving_artifact", sys.argv[1])
loader = importlib.util.module_from_spec(spec)
spec.loader.exec_module(loader)
paths, requests = json.loads(sys.argv[2]), json.loads(sys.argv[3])
out = {}
with torch.inference_mode():
    for key, path in paths.items():
        scorer, info = loader.load_artifact(path)
        scores = []
        for hist, user, cands, *times in requests:
            args = [torch.tensor(hist, dtype=torch.long), torch.tensor(user)]
            if info.get("needs_times"):  # DMAE: the behaviours' times, a request input
                args.append(torch.tensor(times[0], dtype=torch.float32))
            state = scorer.encode_user(*args)
            scores.append(scorer.score(state, torch.tensor(cands, dtype=torch.long)).tolist())
        out[key] = {"format": info["format"], "scores": scores}
    # The plain-torch recipe of docs/serving.md, on the first pt2 artifact
    from torch.export.pt2_archive._package import load_pt2
    path = next(p for k, p in paths.items() if k.endswith("/pt2"))
    programs = load_pt2(path).exported_programs
    tables = programs["tables"].module()()
    encode_user, score = programs["encode_user"].module(), programs["score"].module()
    hist, user, cands, *times = requests[0]
    args = [torch.tensor(hist), torch.tensor(user)] + [torch.tensor(t, dtype=torch.float32) for t in times]
    state = encode_user(tables, *args)
    out["plain_torch"] = score(tables, state, torch.tensor(cands)).tolist()
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("models", "pipeline", "tests"))
print(json.dumps({"results": out, "leaked": leaked}))
"""


def run_fresh(paths: dict[str, str], reqs: list, cwd: Path) -> dict:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            FRESH,
            str(ROOT / "pipeline" / "artifact.py"),
            json.dumps(paths),
            json.dumps(reqs),
        ],
        capture_output=True,
        text=True,
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def exported(data: PreparedData, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """pt2 and torchscript artifacts of every served model, scored in one fresh process."""
    tmp = tmp_path_factory.mktemp("artifacts")
    models, paths = {}, {}
    for name, overrides in served(data.feature_spec()):
        key = name + ("+gate" if overrides else "")
        models[key] = random_model(name, spec_of(data, True), seed=2, **overrides)
        for kind in ("pt2", "torchscript"):
            path = tmp / f"{key}{export.SUFFIX[kind]}"
            export.export_model(models[key], data, path, kind=kind, metadata={"model": name})
            paths[f"{key}/{kind}"] = str(path)
    reqs = requests(data.vocab_sizes["item"], data.vocab_sizes["user"])
    result = run_fresh(paths, reqs, tmp)
    return {"models": models, "paths": paths, "requests": reqs, **result}


def expected_ctrs(model, data: PreparedData, reqs: list, table_dtype: str = "fp32") -> list:
    cats = np.load(data.root / "item_category.npy")
    scorer = scorer_from_model(model, data.item_mm, cats, table_dtype=table_dtype)
    return [
        training_ctr(model, scorer, np.array(h, dtype=np.int64), u, np.array(c), cats)
        for h, u, c in reqs
    ]


def test_every_served_model_is_exported(exported: dict, data: PreparedData) -> None:
    served_names = {key.split("+")[0] for key in exported["models"]}
    unserved = {name for name in MODELS if name not in served_names}
    # Arches reading behaviour times (DMAE) are exported by test_dmae_artifacts_* below.
    spec = data.feature_spec()
    assert unserved == {n for n in MODELS if reads_times(n, spec)} == {"dmae"}
    assert {"dmf", "dta", "ta", "din", "sasrec", "dnn", "make"} <= served_names
    assert exported["leaked"] == []


@pytest.mark.parametrize("kind", ["pt2", "torchscript"])
def test_fresh_process_scores_as_the_training_forward(
    exported: dict, data: PreparedData, kind: str
) -> None:
    for key, model in exported["models"].items():
        got = exported["results"][f"{key}/{kind}"]
        assert got["format"] == kind
        for i, expected in enumerate(expected_ctrs(model, data, exported["requests"])):
            torch.testing.assert_close(
                torch.tensor(got["scores"][i]), expected, atol=1e-5, rtol=0, msg=f"{key} {i}"
            )
    first = next(k for k in exported["models"])
    torch.testing.assert_close(
        torch.tensor(exported["results"]["plain_torch"]),
        torch.tensor(exported["results"][f"{first}/pt2"]["scores"][0]),
        atol=0,
        rtol=0,
    )


def test_empty_history_programs_only_where_an_arch_branches_on_it(exported: dict) -> None:
    split = {
        key
        for key in exported["models"]
        if artifact.read_metadata(exported["paths"][f"{key}/pt2"])["empty_history_programs"]
    }
    # dnn: max(L, 1); make: `if sims.shape[-1] == 0`; sasrec: request_inputs' L == 0.
    assert split == {"dnn", "make", "sasrec"} & set(exported["models"])
    info = artifact.read_metadata(exported["paths"]["dmf/pt2"])
    assert info["programs"] == {
        "encode_user": {"history": [0, None]},
        "score": {"history": [0, None]},
    }
    assert info["probe_max_abs_error"]["pt2"] <= 1e-5


def test_tables_are_stored_once(exported: dict) -> None:
    """The big tables are members of the `tables` program only: the serving programs take
    them as an argument (a pt2 package keeps each program's weights apart)."""
    path = exported["paths"]["dmf/pt2"]
    info = artifact.read_metadata(path)
    with zipfile.ZipFile(path) as archive:
        configs = {
            n.rsplit("/", 1)[1]: json.loads(archive.read(n))["config"]
            for n in archive.namelist()
            if n.endswith("_weights_config.json")
        }
    with zipfile.ZipFile(path) as archive:  # example inputs (they would hold the tables): none
        samples = [i.file_size for i in archive.infolist() if "/sample_inputs/" in i.filename]
    assert samples and max(samples) < 1000
    tables = set(info["tables"])
    assert set(configs["tables_weights_config.json"]) == tables
    for program in ("encode_user", "score"):
        assert not tables & {
            k.rsplit(".", 1)[-1] for k in configs[f"{program}_weights_config.json"]
        }


@pytest.mark.parametrize("table_dtype", ["fp16", "int8"])
def test_reduced_precision_tables_against_the_training_forward(
    data: PreparedData, table_dtype: str
) -> None:
    reqs = requests(data.vocab_sizes["item"], data.vocab_sizes["user"])
    cats = np.load(data.root / "item_category.npy")
    for name, overrides in served(data.feature_spec()):
        model = random_model(name, spec_of(data, True), seed=2, **overrides)
        scorer = scorer_from_model(model, data.item_mm, cats, table_dtype=table_dtype)
        for (hist, user, cands), expected in zip(reqs, expected_ctrs(model, data, reqs)):
            state = scorer.encode_user(torch.tensor(hist, dtype=torch.long), torch.tensor(user))
            got = scorer.score(state, torch.tensor(cands))
            torch.testing.assert_close(got, expected, atol=TOLERANCE[table_dtype], rtol=0, msg=name)


def test_quantized_tables() -> None:
    weight = torch.randn(50, 16) * torch.linspace(0.01, 3.0, 50)[:, None]
    weight[3] = 0.7  # a constant row
    ids = torch.arange(50)
    for dtype in TABLE_DTYPES:
        rows, qparams = quantize_table(weight, dtype)
        back = lookup(rows, qparams, ids, torch.float32)
        if dtype == "fp32":
            assert torch.equal(back, weight)
            continue
        if dtype == "fp16":
            assert rows.dtype == torch.float16
            torch.testing.assert_close(back, weight, atol=0, rtol=2**-11)
            continue
        assert rows.dtype == torch.uint8 and qparams.shape == (50, 2)
        assert qparams.dtype == torch.float16
        span = weight.max(1).values - weight.min(1).values
        bound = span / 255 / 2 + weight.abs().max(1).values * 2**-10  # half a step + fp16 bias
        assert bool(((back - weight).abs() <= bound[:, None] + 1e-7).all())
        torch.testing.assert_close(back[3], weight[3], atol=0.7 * 2**-10, rtol=0)
    with pytest.raises(ValueError, match="fp16 range"):
        quantize_table(torch.tensor([[1e6]]), "int8")


def test_each_format_equals_its_eager_scorer_with_int8_tables(
    data: PreparedData, tmp_path: Path
) -> None:
    model = random_model("dmf", spec_of(data, True), seed=4)
    cats = np.load(data.root / "item_category.npy")
    scorer = scorer_from_model(model, data.item_mm, cats, table_dtype="int8")
    sizes = {}
    for kind in ("pt2", "torchscript"):
        path = export.export_model(
            model, data, tmp_path / f"s{export.SUFFIX[kind]}", kind=kind, table_dtype="int8"
        )
        loaded, info = artifact.load_artifact(path)
        assert info["table_dtype"] == "int8" and info["tables"]["item_table"]["dtype"] == "uint8"
        for hist, user, cands in requests(data.vocab_sizes["item"], data.vocab_sizes["user"]):
            h, u, c = torch.tensor(hist, dtype=torch.long), torch.tensor(user), torch.tensor(cands)
            expected = scorer.score(scorer.encode_user(h, u), c)
            torch.testing.assert_close(
                loaded.score(loaded.encode_user(h, u), c), expected, atol=1e-6, rtol=0
            )
        sizes[kind] = info["table_bytes"]
    fp32 = scorer_from_model(model, data.item_mm, cats).tables()
    int8 = scorer.tables()
    for name in ("item_table", "user_table"):
        rows = fp32[name].shape[0]
        assert int8[name].numel() * 1 + int8[f"{name}_qparams"].numel() * 2 == rows * (8 + 4)
        assert fp32[name].numel() * 4 == rows * 8 * 4


def test_a_flipped_or_truncated_pt2_artifact_is_refused(data: PreparedData, tmp_path: Path) -> None:
    model = random_model("dta", spec_of(data, False), seed=3)
    path = export.export_model(model, data, tmp_path / "scorer.pt2")
    artifact.load_artifact(path)
    with zipfile.ZipFile(path) as archive:
        member = max(
            (i for i in archive.infolist() if "/data/weights/" in i.filename),
            key=lambda i: i.file_size,
        )
    data = bytearray(path.read_bytes())
    # the member's bytes start after its local header (its own name and extra lengths)
    name_length, extra_length = struct.unpack(
        "<HH", data[member.header_offset + 26 : member.header_offset + 30]
    )
    data[member.header_offset + 30 + name_length + extra_length + 4] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(artifact.ArtifactError, match=r"scorer\.pt2: .*(Bad CRC|differs)"):
        artifact.load_artifact(path)
    path.write_bytes(bytes(data)[:-100])
    with pytest.raises(artifact.ArtifactError, match="damaged or truncated"):
        artifact.load_artifact(path)


def test_export_refuses_a_format_its_suffix_does_not_name(
    data: PreparedData, tmp_path: Path
) -> None:
    model = random_model("ta", spec_of(data, False), seed=1)
    with pytest.raises(export.ExportError, match=r"name it \*\.pt2"):
        export.export_model(model, data, tmp_path / "scorer.pt", kind="aoti")
    assert export.format_of(tmp_path / "x.pt2") == "pt2"
    assert export.format_of(tmp_path / "x.pt") == "torchscript"


def test_score_requests_job_takes_a_pt2_artifact(
    exported: dict, data: PreparedData, tmp_path: Path
) -> None:
    requests_path = tmp_path / "requests.parquet"
    pq.write_table(
        pa.table(
            {
                "request_id": pa.array(["a", "b", "c"]),
                "user": pa.array([3, 4, 5], pa.int64()),
                "hist_items": pa.array([[2, 5, 9], [], [39]], pa.list_(pa.int64())),
                "candidates": pa.array([[4, 5, 6], [2, 40], [7]], pa.list_(pa.int64())),
            }
        ),
        requests_path,
    )
    out = tmp_path / "scores.parquet"
    argv = ["--artifact", exported["paths"]["dmf/pt2"], "--requests", str(requests_path)]
    assert score_requests.main([*argv, "--out", str(out)]) == 0
    scores = pq.read_table(out).to_pylist()
    rejects = [json.loads(line) for line in (tmp_path / "scores.rejects.jsonl").open()]
    assert [r["reason"] for r in rejects] == ["id_out_of_range"]
    expected = expected_ctrs(
        exported["models"]["dmf"], data, [([2, 5, 9], 3, [4, 5, 6]), ([39], 5, [7])]
    )
    got = [r["score"] for r in scores]
    np.testing.assert_allclose(got, torch.cat(expected).numpy(), atol=1e-5)


def test_private_torch_api_is_as_expected() -> None:
    """pipeline/artifact.py's `torch_private_api`: fails naming what torch changed."""
    api = artifact.torch_private_api()
    keywords = {
        "package_pt2": {"exported_programs", "aoti_files", "extra_files"},
        "load_pt2": set(),
        "aot_compile": {"options"},
    }
    for name, expected in keywords.items():
        params = set(inspect.signature(getattr(api, name)).parameters)
        assert expected <= params, f"torch changed {name}: it takes {sorted(params)}"
    fields = set(inspect.signature(api.load_pt2).return_annotation.__dataclass_fields__)
    assert {"exported_programs", "aoti_runners", "extra_files"} <= fields, (
        f"torch changed load_pt2's result: {sorted(fields)}"
    )


def test_bench_serving_formats_in_one_run(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = [
        "--candidates", "6", "--history", "5", "--hidden", "16", "--heads", "2",
        "--buckets", "5", "--items", "60", "--users", "10", "--threads", "1",
        "--requests", "2", "--warmup", "1", "--slow-every", "1",
        "--format", "eager,pt2", "--malloc", "default", "--json", str(out),
    ]  # fmt: skip
    assert bench_serving.main(argv) == 0
    result = json.loads(out.read_text())
    assert set(result["formats"]) == {"eager", "pt2"}
    for figures in result["formats"].values():
        assert set(figures["qps"]) == set(bench_serving.KEYS)
        assert {"dta_over_early_fusion", "dta_over_ta"} <= set(figures["ratios"])
    assert set(result["formats"]["pt2"]["cold_start_ms"]) == set(bench_serving.KEYS)
    assert result["qps"] == result["formats"]["eager"]["qps"]  # the first format, as before


@pytest.mark.slow
def test_aoti_package_of_dmf_in_a_fresh_process(
    data: PreparedData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The AOTInductor package (the suite's one AOTInductor compile): exported, loaded in a
    fresh process without the project's code, scored as the training forward."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    model = random_model("dmf", spec_of(data, True), seed=2)
    path = export.export_model(model, data, tmp_path / "scorer.aoti.pt2", kind="aoti")
    info = artifact.read_metadata(path)
    assert info["format"] == "aoti" and info["probe_max_abs_error"]["aoti"] <= 1e-5
    with zipfile.ZipFile(path) as archive:
        assert any(n.endswith(".so") for n in archive.namelist())
    pt2 = export.export_model(model, data, tmp_path / "scorer.pt2")
    reqs = requests(data.vocab_sizes["item"], data.vocab_sizes["user"])
    result = run_fresh({"dmf/aoti": str(path), "dmf/pt2": str(pt2)}, reqs, tmp_path)
    assert result["leaked"] == []
    for i, expected in enumerate(expected_ctrs(model, data, reqs)):
        got = torch.tensor(result["results"]["dmf/aoti"]["scores"][i])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0, msg=str(i))


# ------------------------------------------------------------------------------- DMAE
# DMAE reads the behaviours' times (a request input) and, with two modalities, the
# per-modality similarities, computed by the artifact from its item_mm_modalities table.
DMAE_SMALL = {"interest_dim": 8, "mieu_hidden": [8], "decoder_hidden": [8], "attention_dims": [8]}


@pytest.fixture(scope="module")
def dmae_data(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    root = write_prepared(
        tmp_path_factory.mktemp("dmae-data"), num_items=40, categories=True, seed=5,
        modalities=("image", "text"), times=True,
    )  # fmt: skip
    np.save(root / "item_category.npy", np.random.default_rng(3).integers(2, 6, size=40))
    return PreparedData(root)


def dmae_requests(data: PreparedData) -> list:
    """(hist, user, cands, times) with the empty history among them."""
    rng = np.random.default_rng(12)
    out = []
    for hist, user, cands in requests(data.vocab_sizes["item"], data.vocab_sizes["user"]):
        times = np.sort(rng.integers(0, 30 * 86400, size=len(hist)))[::-1].tolist()
        out.append((hist, user, cands, times))
    return out


def dmae_expected(model, data: PreparedData, reqs: list) -> list:
    from tests.test_dmae import served_and_training_ctr

    scorer = scorer_from_model(
        model, data.item_mm, np.load(data.root / "item_category.npy"),
        modality_mm=data.modality_mm,
    )  # fmt: skip
    return [served_and_training_ctr(scorer, model, data, h, t, u, c)[1] for h, u, c, t in reqs]


def test_dmae_artifacts_score_as_the_training_forward(
    dmae_data: PreparedData, tmp_path: Path
) -> None:
    """pt2 and torchscript artifacts of DMAE (two modalities, times), loaded in a fresh
    process without the project's code: the training forward's CTRs (1e-5), the empty
    history included; serving.json says that encode_user takes the times."""
    model = random_model("dmae", dmae_data.feature_spec(), seed=2, **DMAE_SMALL)
    paths = {}
    for kind in ("pt2", "torchscript"):
        path = tmp_path / f"dmae{export.SUFFIX[kind]}"
        export.export_model(model, dmae_data, path, kind=kind, metadata={"model": "dmae"})
        info = artifact.read_metadata(path)
        assert info["needs_times"] is True and info["modalities"] == 2
        assert info["tables"]["item_mm_modalities"]["shape"][:2] == [2, 40]
        paths[f"dmae/{kind}"] = str(path)
    reqs = dmae_requests(dmae_data)
    result = run_fresh(paths, reqs, tmp_path)
    assert result["leaked"] == []
    for i, expected in enumerate(dmae_expected(model, dmae_data, reqs)):
        for kind in ("pt2", "torchscript"):
            got = torch.tensor(result["results"][f"dmae/{kind}"]["scores"][i])
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0, msg=f"{kind} {i}")
    scorer, _ = artifact.load_artifact(paths["dmae/pt2"])
    with pytest.raises(ValueError, match="hist_times"):
        scorer.encode_user(torch.tensor([3, 4]), torch.tensor(2))

    # The batch scoring job reads hist_ts_delta for it, and rejects rows without usable times.
    rows = {
        "request_id": ["ok", "none", "short", "negative", "nan"],
        "user": [3, 4, 5, 6, 7],
        "hist_items": [[2, 5, 9], [2], [4, 5], [6], [7]],
        "candidates": [[4, 5, 6], [2], [7], [8], [9]],
    }
    times = pa.array([[172800, 86400, 60], None, [5], [-1], [float("nan")]], pa.list_(pa.float64()))
    table = pa.table({k: pa.array(v) for k, v in rows.items()}).append_column(
        "hist_ts_delta", times
    )
    for name, requests_table in (("with", table), ("without", table.drop(["hist_ts_delta"]))):
        requests_path, out = tmp_path / f"{name}.parquet", tmp_path / f"{name}.scores.parquet"
        pq.write_table(requests_table, requests_path)
        argv = [
            "--artifact",
            paths["dmae/pt2"],
            "--requests",
            str(requests_path),
            "--out",
            str(out),
        ]
        assert score_requests.main(argv) == 0
        rejects = [
            json.loads(line) for line in out.with_name(f"{name}.scores.rejects.jsonl").open()
        ]
        reasons = {r["request_id"]: r["reason"] for r in rejects}
        if name == "without":
            assert set(reasons.values()) == {"missing_times"} and len(reasons) == 5
            continue
        assert reasons == {"none": "missing_times", "short": "times_misaligned",
                           "negative": "bad_time", "nan": "bad_time"}  # fmt: skip
        state = scorer.encode_user(torch.tensor([2, 5, 9]), torch.tensor(3),
                                   torch.tensor([172800.0, 86400.0, 60.0]))  # fmt: skip
        want = scorer.score(state, torch.tensor([4, 5, 6]))
        got = torch.tensor(pq.read_table(out).column("score").to_pylist())
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("DMF_DMAE_AOTI_TEST") != "1",
    reason="DMAE's AOTInductor compile takes 3-8 minutes on 2 cores; the aoti path itself is "
    "tested on DMF above and DMAE's programs in pt2 and TorchScript; set "
    "DMF_DMAE_AOTI_TEST=1 to run it",
)
def test_dmae_aoti_package_in_a_fresh_process(
    dmae_data: PreparedData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DMAE's AOTInductor package scores as the training forward in a fresh process."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    model = random_model("dmae", dmae_data.feature_spec(), seed=2, **DMAE_SMALL)
    path = export.export_model(model, dmae_data, tmp_path / "dmae.aoti.pt2", kind="aoti")
    assert artifact.read_metadata(path)["probe_max_abs_error"]["aoti"] <= 1e-5
    pt2 = export.export_model(model, dmae_data, tmp_path / "dmae.pt2")
    reqs = dmae_requests(dmae_data)
    result = run_fresh({"dmae/aoti": str(path), "dmae/pt2": str(pt2)}, reqs, tmp_path)
    for i, expected in enumerate(dmae_expected(model, dmae_data, reqs)):
        got = torch.tensor(result["results"]["dmae/aoti"]["scores"][i])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0, msg=str(i))
