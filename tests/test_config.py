"""Trainer settings: one dataclass, presets as data, --config FILE, and their precedence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import (
    FIELDS,
    PRESETS,
    ConfigError,
    TrainConfig,
    build_parser,
    load_config_file,
    per_rank,
    resolve,
    save_config,
)


@pytest.fixture(autouse=True)
def _no_torchrun_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def test_no_flags_gives_the_dataclass_defaults():
    assert resolve([]) == TrainConfig()
    assert PRESETS["default"] == {}, "the default preset is the dataclass defaults"


def test_every_field_has_a_flag_and_help():
    options = {a.dest: a for a in build_parser()._actions}
    for name, f in FIELDS.items():
        assert name in options, name
        assert f.metadata["help"] and options[name].help


def test_to_dict_from_dict_round_trip():
    config = resolve(["--preset", "amazon", "--model-arg", "alpha=0.3", "--grad-clip", "1.5"])
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert json.loads(json.dumps(config.to_dict())) == config.to_dict()


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_config_file_and_flags_describe_the_same_run(tmp_path: Path, suffix: str):
    flags = [
        "--model", "ta", "--preset", "amazon", "--epochs", "3", "--seed", "5",
        "--batch-size", "64", "--lr-schedule", "cosine", "--warmup-steps", "10",
        "--grad-clip", "1.0", "--resume", "--model-arg", "hidden_dim=16",
        "--model-arg", "mlp_dims=[32,16]", "--eval-every", "100",
    ]  # fmt: skip
    settings = {
        "model": "ta", "preset": "amazon", "epochs": 3, "seed": 5, "batch_size": 64,
        "lr_schedule": "cosine", "warmup_steps": 10, "grad_clip": 1.0, "resume": True,
        "model_args": {"hidden_dim": 16, "mlp_dims": [32, 16]}, "eval_every": 100,
    }  # fmt: skip
    path = tmp_path / f"run{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(settings))
    else:
        import yaml

        path.write_text(yaml.safe_dump(settings))
    assert resolve(["--config", str(path)]).to_dict() == resolve(flags).to_dict()


def test_saved_config_resolves_to_itself(tmp_path: Path):
    config = resolve(["--preset", "industrial", "--model", "din", "--max-steps", "9"])
    save_config(config, tmp_path / "run.json")
    assert resolve(["--config", str(tmp_path / "run.json")]) == config


def test_yaml_exponent_floats_are_read_as_floats(tmp_path: Path):
    (tmp_path / "run.yaml").write_text("lr: 1e-3\nembedding_lr: 5e-2\n")  # YAML 1.1 strings
    config = resolve(["--config", str(tmp_path / "run.yaml")])
    assert config.lr == 1e-3 and config.embedding_lr == 5e-2


def test_a_preset_key_is_not_overridden_by_a_flag_the_user_did_not_type():
    amazon = resolve(["--preset", "amazon"])
    assert amazon.batch_size == PRESETS["amazon"]["batch_size"] != TrainConfig.batch_size
    assert amazon.lr == PRESETS["amazon"]["lr"] != TrainConfig.lr
    assert amazon.model_args["embedding_dim"] == PRESETS["amazon"]["model_args"]["embedding_dim"]
    paper = resolve(["--preset", "amazon-paper"])  # the paper's settings (Sec. V-D)
    assert (paper.batch_size, paper.lr, paper.model_args["embedding_dim"]) == (128, 1e-3, 32)
    # Settings the preset does not name keep the defaults.
    assert amazon.seed == TrainConfig.seed and amazon.eval_batch_size == TrainConfig.eval_batch_size


def test_a_typed_flag_wins_over_the_preset():
    config = resolve(["--preset", "amazon", "--batch-size", "256", "--model-arg", "hidden_dim=8"])
    assert config.batch_size == 256
    # model_args merge key by key: the preset's other model settings stay.
    assert config.model_args == {**PRESETS["amazon"]["model_args"], "hidden_dim": 8}


def test_precedence_defaults_preset_file_flags(tmp_path: Path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"preset": "amazon", "lr": 0.01, "seed": 3}))
    from_file = resolve(["--config", str(path)])
    assert (from_file.preset, from_file.batch_size) == ("amazon", 1024)  # preset named by file
    assert (from_file.lr, from_file.seed) == (0.01, 3)  # file over preset
    flags = resolve(["--config", str(path), "--seed", "4", "--preset", "industrial"])
    assert (flags.seed, flags.lr) == (4, 0.01)  # typed flag over file
    assert (flags.preset, flags.batch_size) == ("industrial", 1024)  # --preset over the file's


def test_optional_setting_unset_from_the_command_line(tmp_path: Path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"grad_clip": 2.0, "max_steps": 5}))
    config = resolve(["--config", str(path), "--grad-clip", "none", "--max-steps", "None"])
    assert config.grad_clip is None and config.max_steps is None


def test_bool_flags_both_ways(tmp_path: Path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"resume": True}))
    assert resolve(["--config", str(path)]).resume is True
    assert resolve(["--config", str(path), "--no-resume"]).resume is False


def test_unknown_key_in_a_file_is_an_error_naming_key_and_file(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 1\nbatch-size: 64\n")
    with pytest.raises(ConfigError) as error:
        load_config_file(path)
    assert str(path) in str(error.value) and "batch-size" in str(error.value)
    assert "batch_size" in str(error.value), "suggests the field name"


def test_unknown_key_in_a_file_fails_the_command_line(tmp_path: Path, capsys):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"learning_rate": 0.1}))
    with pytest.raises(SystemExit):
        resolve(["--config", str(path)])
    err = capsys.readouterr().err
    assert "learning_rate" in err and str(path) in err


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"epochs": "two"}, "epochs"),
        ({"resume": "yes"}, "resume"),
        ({"lr_schedule": "step"}, "lr_schedule"),
        ({"batch_size": 1.5}, "batch_size"),
        ({"model_args": [1, 2]}, "model_args"),
    ],
)
def test_bad_values_in_a_file_are_errors(tmp_path: Path, settings: dict, message: str):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(settings))
    with pytest.raises(ConfigError, match=message):
        load_config_file(path)


def test_unknown_model_setting_is_rejected_at_parse_time(capsys):
    with pytest.raises(SystemExit):
        resolve(["--model", "ta", "--model-arg", "alpha=0.3"])
    assert "has no settings ['alpha']" in capsys.readouterr().err


def test_global_batch_is_split_per_rank():
    config = resolve(["--batch-size", "128", "--eval-batch-size", "1024"])
    assert config.per_rank_batch_size(1) == 128
    assert config.per_rank_batch_size(2) == 64
    assert config.per_rank_batch_size(8) == 16
    assert config.per_rank_eval_batch_size(8) == 128
    with pytest.raises(ConfigError, match="global batch.*world size 3"):
        config.per_rank_batch_size(3)
    with pytest.raises(ConfigError, match="eval_batch_size"):
        per_rank(1000, 16, "eval_batch_size")


def test_undivisible_batch_fails_at_parse_time_under_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(SystemExit):
        resolve(["--batch-size", "128"])
    assert "world size 3" in capsys.readouterr().err


def test_parse_args_is_an_alias_of_resolve():
    from pipeline.train import parse_args

    assert parse_args is resolve


# ------------------------------------------------------------- per-model preset entries
@pytest.fixture
def tuned_amazon(monkeypatch: pytest.MonkeyPatch) -> dict:
    entry = {"lr": 5e-3, "embedding_l2": 1e-4, "model_args": {"dropout": 0.2}}
    amazon = {**PRESETS["amazon"], "models": {"ta": entry}}
    monkeypatch.setitem(PRESETS, "amazon", amazon)
    return entry


def test_a_preset_entry_applies_to_its_model_only(tuned_amazon: dict):
    ta = resolve(["--preset", "amazon", "--model", "ta"])
    assert (ta.lr, ta.embedding_l2) == (5e-3, 1e-4)
    # The entry's model_args merge over the preset's, key by key.
    assert ta.model_args == {**PRESETS["amazon"]["model_args"], "dropout": 0.2}
    assert ta.batch_size == PRESETS["amazon"]["batch_size"]  # the preset's shared setting stays
    din = resolve(["--preset", "amazon", "--model", "din"])
    assert (din.lr, din.embedding_l2) == (PRESETS["amazon"]["lr"], 0.0)
    assert "dropout" not in din.model_args


def test_precedence_defaults_preset_entry_file_flags(tuned_amazon: dict, tmp_path: Path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"preset": "amazon", "model": "ta", "embedding_l2": 0.5}))
    from_file = resolve(["--config", str(path)])
    assert from_file.lr == 5e-3, "the file names the model: its entry applies"
    assert from_file.embedding_l2 == 0.5, "the file wins over the entry"
    typed = resolve(["--config", str(path), "--embedding-l2", "0.25", "--lr", "0.01"])
    assert (typed.embedding_l2, typed.lr) == (0.25, 0.01), "typed flags win over everything"
    other = resolve(["--config", str(path), "--model", "din"])
    assert other.lr == PRESETS["amazon"]["lr"], "--model picks the entry (here: none)"


def test_presets_and_their_entries_are_valid(tuned_amazon: dict, monkeypatch):
    from pipeline.config import check_presets, merge

    check_presets()
    # `models` is not a setting: merge leaves it out (the study, pipeline.plan use merge).
    assert "models" not in merge(TrainConfig().to_dict(), PRESETS["amazon"])
    TrainConfig.from_dict(merge(TrainConfig().to_dict(), PRESETS["amazon"]))
    monkeypatch.setitem(PRESETS["amazon"]["models"], "din", {"learning_rate": 1})
    with pytest.raises(ConfigError, match="models.din"):
        check_presets()
    monkeypatch.setitem(PRESETS["amazon"]["models"], "din", {"model_args": {"alpha": 0.3}})
    with pytest.raises(ValueError, match="alpha"):
        check_presets()


def test_recipe_settings_have_flags(tmp_path: Path):
    config = resolve([
        "--embedding-l2", "1e-4", "--weight-decay", "0.01", "--no-restore-best",
        "--no-evaluate-test", "--embedding-optimizer", "adam_dense",
    ])  # fmt: skip
    assert (config.embedding_l2, config.weight_decay) == (1e-4, 0.01)
    assert not config.restore_best and not config.evaluate_test
    assert config.embedding_optimizer == "adam_dense"
    assert TrainConfig().restore_best and TrainConfig().evaluate_test
