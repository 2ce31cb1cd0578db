"""The Ray engine (`--engine ray`, data_prep/ray_engine.py) in local mode: the same prepared
folder as the local engine, file for file, bad inputs and reject accounting included.

One local Ray (2 CPUs, a small object store, no dashboard) serves the whole module: the
jobs find it initialised and run their tasks on it, and leave it running.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from data_prep.__main__ import main
from data_prep.rejects import BadRecordError
from tests.fixtures import require_shared
from tests.test_data_prep_amazon import META, REVIEWS, write_gz
from tests.test_data_prep_logs import CSV_LINES, write_items

ray = pytest.importorskip("ray")


@pytest.fixture(scope="session")
def local_ray():
    from data_prep.ray_engine import LOCAL_OBJECT_STORE_BYTES, _driver_path

    started = not ray.is_initialized()
    if started:
        ray.init(
            num_cpus=2,
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            include_dashboard=False,
            runtime_env={"env_vars": {"PYTHONPATH": _driver_path()}},
        )
    yield ray
    if started:
        ray.shutdown()


def files_of(out: Path) -> dict[str, str]:
    """relative path -> sha256 of every file of a prepared folder but the manifest."""
    return {
        p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "manifest.json" and "cache" not in p.parts
    }


def assert_same_folder(local: Path, ray_out: Path) -> dict:
    a = json.loads((local / "manifest.json").read_text())
    b = json.loads((ray_out / "manifest.json").read_text())
    for key in sorted((set(a) | set(b)) - {"created_by", "checksum", "inputs"}):
        assert a.get(key) == b.get(key), key
    assert files_of(local) == files_of(ray_out)
    records = b["records"]
    assert records["read"] == records["used"] + sum(records["rejected"].values())
    return b


def amazon(reviews: Path, meta: Path, out: Path, *extra: str) -> None:
    main(["amazon", "--reviews", str(reviews), "--meta", str(meta), "--out", str(out),
          "--encoder", "hashed", "--cache-dir", str(out.parent / "cache"), *extra])  # fmt: skip


def test_amazon_format_with_bad_lines_equals_the_local_engine(local_ray, tmp_path):
    reviews = write_gz(tmp_path / "reviews.json.gz", REVIEWS)
    meta = write_gz(tmp_path / "meta.json.gz", META)
    amazon(reviews, meta, tmp_path / "local", "--partitions", "3")
    amazon(reviews, meta, tmp_path / "ray", "--partitions", "3", "--engine", "ray")
    manifest = assert_same_folder(tmp_path / "local", tmp_path / "ray")
    assert manifest["records"]["read"] == 16 + 12 and len(manifest["records"]["rejected"]) == 8
    logged = (tmp_path / "ray" / "rejects.jsonl").read_text().splitlines()
    assert len(logged) == sum(manifest["records"]["rejected"].values())


def test_logs_with_bad_rows_equals_the_local_engine(local_ray, tmp_path):
    logs = tmp_path / "logs.csv"
    logs.write_bytes(b"\n".join(CSV_LINES) + b"\n")
    items = write_items(tmp_path / "items.parquet")
    for name, extra in (("local", []), ("ray", ["--engine", "ray"])):
        main(["logs", "--interactions", str(logs), "--items", str(items),
              "--out", str(tmp_path / name), "--partitions", "2", *extra])  # fmt: skip
    manifest = assert_same_folder(tmp_path / "local", tmp_path / "ray")
    assert manifest["records"]["rejected"] == {
        "unknown_item": 1, "duplicate_event": 1, "too_few_events": 1, "missing_field": 1,
        "malformed": 2, "not_utf8": 1,
    }  # fmt: skip


def test_a_bad_record_in_a_ray_task_is_reported_as_itself(local_ray, tmp_path):
    reviews = write_gz(tmp_path / "reviews.json.gz", REVIEWS)
    meta = write_gz(tmp_path / "meta.json.gz", META[:7])  # the item side is clean
    with pytest.raises(BadRecordError, match=r"reviews\.json\.gz:10: malformed"):
        amazon(reviews, meta, tmp_path / "out", "--engine", "ray", "--strict")
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


def test_default_data_equals_the_local_engine(local_ray, tmp_path):
    from data_prep.default_job import logs_config
    from data_prep.logs_job import run_logs
    from data_prep.synthetic import SyntheticConfig, write_raw

    generator = SyntheticConfig(users=400, items=500, days=6)
    outs = {}
    for engine in ("local", "ray"):
        outs[engine] = tmp_path / engine
        write_raw(generator, outs[engine] / "raw")
        config = logs_config(outs[engine], generator)
        config.engine, config.partitions = engine, 3
        run_logs(config, extra_protocol={"generator": generator.as_dict()})
    assert_same_folder(outs["local"], outs["ray"])


def test_shared_amazon_files_equal_the_local_engine(local_ray, tmp_path):
    folder = require_shared("data", "amazon-electronics-2014")
    reviews, meta = folder / "reviews_Electronics_5.json.gz", folder / "meta_Electronics.json.gz"
    amazon(reviews, meta, tmp_path / "local", "--partitions", "2")
    amazon(reviews, meta, tmp_path / "ray", "--partitions", "2", "--engine", "ray")
    manifest = assert_same_folder(tmp_path / "local", tmp_path / "ray")
    assert manifest["counts"] == {"train": 368132, "test": 57132}
