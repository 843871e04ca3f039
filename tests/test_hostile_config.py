"""Hostile run folders and studies: nothing read from disk reaches Hydra's override grammar, its config
search path, OmegaConf's resolvers or a class import. Each attack carries a payload that would create a
marker file; the marker must never appear, and the command refuses in one line or ignores the data.

The generated set runs the loaders in-process (fast); a few CLI runs, over 4 s each, are marked slow.
"""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import optuna
import pytest
import yaml
from omegaconf import OmegaConf

from cnnlab.commands.tune.design import BASE, OVERRIDES, PINNED, SPACE, read_design
from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.run.checkpoints import read_state as load_checkpoint
from cnnlab.run.checkpoints import write_state as save_checkpoint
from cnnlab.run.layout import RunDir
from cnnlab.run.record import RunRecord
from cnnlab.run.resume import find_auto
from cnnlab.run.stored import stored_config
from tests.conftest import run_cli, write_tiny_idx
from tests.test_run_folder import snapshot

FAST = ["trainer.device=cpu", "trainer.tensorboard=false", "trainer.progress=plain", "trainer.batch_size=32",
        "trainer.precision=32", "trainer.threads=1", "trainer.max_epochs=1"]  # fmt: skip


def composed(*overrides: str) -> dict:
    from cnnlab.commands.train import _compose, _task

    return OmegaConf.to_container(_task(_compose(list(overrides))), resolve=True)


@pytest.fixture(scope="module")
def base() -> dict:
    return composed()


# ------------------------------------------------------------------------------- the generated payloads
def payloads(marker: Path) -> dict[str, object]:
    """Values that run code (or read the environment) if anything resolves or instantiates them."""
    touch = {"_target_": "os.system", "command": f"touch {marker}"}
    return {
        "oc.create": "${oc.create:{_target_: os.system, command: 'touch " + str(marker) + "'}}",
        "oc.create in a list": ["${oc.create:{_target_: os.system, command: 'touch " + str(marker) + "'}}"],
        "oc.env": "${oc.env:HOME}",
        "oc.decode": "${oc.decode:'{_target_: os.system}'}",
        "nested interpolation": "${model.${oc.env:USER}}",
        "escaped interpolation": "\\${model.name}",
        "missing": "???",
        "_target_": touch,
        "_target_ in a list": [touch],
        "_args_": {"_target_": "os.system", "_args_": [f"touch {marker}"]},
        "_partial_": {"_partial_": True},
        "_recursive_": {"_recursive_": True},
        "_convert_": {"_convert_": "all"},
    }


NODES = ("", "dataset", "dataset.submission", "model", "optimizer", "loss", "scheduler",
         "scheduler.options", "augmentation", "augmentation.adversarial", "trainer", "trainer.lookahead",
         "logger", "logger.csv")  # fmt: skip


def at(config: dict, node: str) -> dict:
    for part in filter(None, node.split(".")):
        config = config[part]
    return config


def hostile_configs(base: dict, marker: Path):
    """(what, config) for every payload at every node: replacing an existing option's value, as a new
    key, and as the name of a key."""
    for node in NODES:
        for name, payload in payloads(marker).items():
            existing = next((k for k, v in at(base, node).items() if not isinstance(v, dict)), None)
            places = {"new key": "evil"} if existing is None else {"value": existing, "new key": "evil"}
            for place, key in places.items():
                config = copy.deepcopy(base)
                at(config, node)[key] = copy.deepcopy(payload)
                yield f"{name} as {place} of {node or 'the top'}", config
        config = copy.deepcopy(base)
        at(config, node)["${oc.create:{_target_: os.system, command: 'touch " + str(marker) + "'}}"] = 1
        yield f"a key named with ${{...}} in {node or 'the top'}", config
    for group in ("model", "optimizer"):  # the _target_ cnnlab writes: compared with its registry only
        for target in ("os.system", "torch.hub.load", "builtins.exec", "cnnlab.models.lenet.LeNet.__init__"):
            config = copy.deepcopy(base)
            config[group]["_target_"] = target
            yield f"{group}._target_={target}", config
    for name in ("../../evil", "lenet/../../x", "os.system"):
        config = copy.deepcopy(base)
        config["model"]["name"] = name
        yield f"model.name={name}", config


def loaders(config: dict, tmp_path: Path):
    """Every way a stored config is read: a run folder's YAML, a checkpoint's record (torch.save), a
    safetensors header (JSON strings), a study's base config."""
    text = yaml.dump(config, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper))
    record = {"model_name": "lenet", "classes": ["a", "b"], "mean": [0.5], "std": [0.5], "image_size": 28,
              "in_channels": 1, "config": text}  # fmt: skip
    space = {
        "optimizer.lr": optuna.distributions.distribution_to_json(
            optuna.distributions.FloatDistribution(0.1, 1)
        )
    }
    return {
        ".hydra/config.yaml": lambda: stored_config(text, tmp_path / "config.yaml"),
        "checkpoint record": lambda: RunRecord.from_state(record, tmp_path / "best.pt"),
        "safetensors header": lambda: RunRecord.from_metadata(
            {k: json.dumps(v) for k, v in record.items()}, tmp_path / "best.safetensors"
        ),
        "study": lambda: read_design(
            {BASE: {**config, "tune": config.get("tune") or {"dir": "x"}}, SPACE: space, PINNED: {}},
            tmp_path / "study.db",
        ),
    }


def test_every_hostile_stored_config_is_refused_in_one_line_by_every_loader(base, tmp_path):
    marker = tmp_path / "pwned"
    cases = 0
    for what, config in hostile_configs(base, marker):
        for loader, load in loaders(config, tmp_path).items():
            with pytest.raises(CnnlabError) as info:
                load()
            message = str(info.value)
            assert "\n" not in message and str(tmp_path) in message, (what, loader, message)
            assert not isinstance(info.value, ValueError)
            cases += 1
    assert cases > 1000 and not marker.exists()


def test_an_ordinary_stored_config_loads_with_no_interpolation_left(base, tmp_path):
    for loader, load in loaders(base, tmp_path).items():
        loaded = load()
        cfg = loaded.cfg if isinstance(loaded, RunRecord) else getattr(loaded, "base", loaded)
        text = yaml.safe_dump(cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg), sort_keys=True)
        assert "${" not in text, loader


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["trainer"].update(max_epochs="many"), "trainer.max_epochs"),
        (lambda c: c["trainer"].update(max_epohcs=3), "trainer.max_epohcs"),
        (lambda c: c.update(evil={"a": 1}), "evil"),
        (lambda c: c["model"].update(channels="six"), "model.channels"),
        (lambda c: c.pop("model"), "no model section"),
    ],
)
def test_unknown_keys_and_wrong_types_are_refused_naming_the_key_and_file(base, tmp_path, change, message):
    config = copy.deepcopy(base)
    change(config)
    with pytest.raises(ConfigError) as info:
        stored_config(yaml.safe_dump(config), tmp_path / "config.yaml")
    assert message in str(info.value) and str(tmp_path / "config.yaml") in str(info.value)


def test_old_runs_load_by_name(tmp_path):
    from cnnlab.run.load import load_run

    run = load_run(Path(__file__).parent / "fixtures" / "run_v0")  # its config holds _target_ values
    assert type(run.model).__name__ == "LeNet" and run.cfg.model.name == "lenet"


def test_a_billion_laughs_config_is_refused(tmp_path):
    text = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, 7):
        text += f"{'abcdefg'[i]}: &{'abcdefg'[i]} [{', '.join(['*' + 'abcdefg'[i - 1]] * 10)}]\n"
    with pytest.raises(ConfigError, match="far larger or deeper"):
        stored_config(text, tmp_path / "config.yaml")


# ------------------------------------------------------------------------------------ resume replays none
HOSTILE_OVERRIDES = (
    "+experiment=../../../../{evil}", "-m", "--experimental-rerun={pickle}",
    "+model@hydra.callbacks.pwn=lenet",
    "trust_config=true", "++hydra.callbacks.x._target_=os.system", "~model", "hydra/launcher=basic",
    "model=../../../../{evil}", "--config-dir={dir}", "+model._target_=os.system", "seed=${{oc.env:HOME}}",
)  # fmt: skip


def plant(run: Path, tmp_path: Path) -> Path:
    """Every override form that ran code when resume replayed overrides.yaml, in the run's overrides.yaml,
    with the files they point at; returns the marker they would create."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil"
    evil.mkdir(exist_ok=True)
    callback = {"_target_": "os.system", "command": f"touch {marker}"}
    (evil / "evil.yaml").write_text(yaml.safe_dump({"hydra": {"callbacks": {"pwn": callback}}}))
    (tmp_path / "rerun.pickle").write_bytes(pickle.dumps(callback))
    forms = [
        o.format(evil=evil / "evil", pickle=tmp_path / "rerun.pickle", dir=evil) for o in HOSTILE_OVERRIDES
    ]
    (run / ".hydra").mkdir(exist_ok=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(forms))
    return marker


def test_resume_reads_no_stored_override_and_trust_comes_from_the_command_line(
    trained_run, tmp_path, monkeypatch
):
    from hydra.core.global_hydra import GlobalHydra

    from cnnlab.commands import train as train_command

    GlobalHydra.instance().clear()  # trained_run's composition: prepare composes on its own
    monkeypatch.chdir(tmp_path)
    (trained_run / "summary.json").unlink()  # unfinished: a resume goes ahead
    marker = plant(trained_run, tmp_path)
    args, _claim = train_command.prepare([f"resume={trained_run}", "trainer.max_epochs=3"])
    assert not any("experiment" in a or "callbacks" in a or a.startswith("-") for a in args)
    cfg, state = train_command._resumed.pop()
    saved = load_checkpoint(trained_run / "checkpoints" / "last.pt")
    assert cfg.trainer.max_epochs == 3 and cfg.trust_config is False and state["epoch"] == saved["epoch"]
    assert cfg.model == OmegaConf.create(yaml.safe_load(saved["config"])["model"])
    assert not marker.exists()

    # A stored config that names code is refused, whatever overrides.yaml says about trust.
    hostile = copy.deepcopy(saved)
    config = yaml.safe_load(hostile["config"])
    config["model"]["_target_"] = "os.system"
    hostile["config"] = yaml.safe_dump(config)
    save_checkpoint(hostile, trained_run / "checkpoints" / "last.pt")
    with pytest.raises(CnnlabError, match=r"model._target_=os.system.*trust_config=true"):
        train_command.prepare([f"resume={trained_run}"])
    # trust_config typed now builds lenet by its name: the stored _target_ is never imported.
    train_command.prepare([f"resume={trained_run}", "trust_config=true"])
    cfg, _ = train_command._resumed.pop()
    assert cfg.model._target_ == "cnnlab.models.lenet.LeNet" and not marker.exists()


def test_resume_auto_compares_configs_and_skips_hostile_ones(base, tmp_path):
    marker = tmp_path / "pwned"
    for name, config in (
        ("good", base),
        ("evil", next(c for w, c in hostile_configs(base, marker) if "oc.create" in w)),
    ):
        run = tmp_path / "runs" / name
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "last.pt").write_bytes(b"x")
        (run / ".hydra").mkdir()
        (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
        plant(run, tmp_path)
    assert find_auto(OmegaConf.create(base), tmp_path / "runs") == tmp_path / "runs" / "good"
    assert not marker.exists()


@pytest.mark.parametrize(
    "name", ["with space", "naïve-日本", "quote'd", "$\\foo$", "back\\", "a\\'b", "x\\\\"]
)
def test_a_resume_folder_name_is_one_value_of_hydras_grammar(name):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from cnnlab.config import override_quoted as hydra_quoted

    for folder in (f"/tmp/{name}/run", f"/tmp/{name}"):  # a backslash inside, and at the end
        parsed = OverridesParser.create().parse_override(f"hydra.run.dir={hydra_quoted(folder)}")
        assert parsed.value() == folder
    folder = "/tmp/${oc.env:HOME}"  # left as text, never resolved
    value = OverridesParser.create().parse_override(f"k={hydra_quoted(folder)}").value()
    assert OmegaConf.create({"k": value}).k == folder  # the escaped ${ reads back as text


# ------------------------------------------------------------------------------------ a study is data
def crafted_study(folder: Path, attrs: dict) -> None:
    folder.mkdir(parents=True)
    study = optuna.create_study(study_name="cnnlab", storage=f"sqlite:///{folder / 'study.db'}")
    for key, value in attrs.items():
        study.set_user_attr(key, value)


def study_attrs(base: dict) -> dict:
    tuned = composed("optimizer.lr=0.01")  # what cnnlab tune composes (tune node included)
    tuned["tune"] = {**composed_tune()["tune"], "params": {}}
    lr = optuna.distributions.FloatDistribution(1e-3, 0.1, log=True)
    return {BASE: tuned, SPACE: {"optimizer.lr": optuna.distributions.distribution_to_json(lr)}, PINNED: {}}


@pytest.fixture(scope="module")
def attrs(base) -> dict:
    return study_attrs(base)


def composed_tune() -> dict:
    from cnnlab.commands.tune import compose_tune

    return OmegaConf.to_container(compose_tune(["tune.dir=x"]), resolve=True)


def space_of(key: str, choices) -> dict:
    return {
        key: optuna.distributions.distribution_to_json(optuna.distributions.CategoricalDistribution(choices))
    }


def hostile_studies(a: dict, marker: Path) -> dict[str, dict]:
    """Crafted study attributes, by what each tries."""
    b, m = a[BASE], a[BASE]["model"]
    bad_choice = {"name": "CategoricalDistribution", "attributes": {"choices": [{"_target_": "os.system"}]}}
    return {
        "the old format: stored overrides only": {OVERRIDES: [f"+experiment=../../{marker}"]},
        "model._target_=choice(torch.hub.load)": {**a, SPACE: space_of("model._target_", ["torch.hub.load"])},
        "a package override as a key": {**a, SPACE: space_of("+model@hydra.callbacks.pwn", ["lenet"])},
        "hydra.callbacks as a search key": {**a, SPACE: space_of("hydra.callbacks.x", ["y"])},
        "a group choice that leaves conf/": {**a, SPACE: space_of("model", ["../../../evil"])},
        "a group choice with a path": {**a, SPACE: space_of("optimizer", ["sgd/../adam"])},
        "an interpolation as a choice": {**a, SPACE: space_of("trainer.progress", ["${oc.env:HOME}"])},
        "a dict as a choice": {**a, SPACE: {"seed": json.dumps(bad_choice)}},
        "not a distribution": {**a, SPACE: {"seed": "__import__('os')"}},
        "oc.create in the base config": {**a, BASE: {**b, "seed": "${oc.create:{_target_: os.system}}"}},
        "a pinned _target_": {**a, PINNED: {"model._target_": "os.system"}},
        "a pinned hydra key": {**a, PINNED: {"hydra.callbacks": "x"}},
        "trust in the base config": {**a, BASE: {**b, "trust_config": True,
                                                  "model": {**m, "_target_": "torch.hub.load"}}},
    }  # fmt: skip


@pytest.mark.parametrize("what", list(hostile_studies({BASE: {"model": {}}}, Path("m"))))
def test_a_crafted_study_is_refused_in_one_line_and_nothing_runs(attrs, tmp_path, what):
    marker = tmp_path / "pwned"
    with pytest.raises(CnnlabError) as info:
        read_design(hostile_studies(attrs, marker)[what], tmp_path / "study.db")
    assert "\n" not in str(info.value) and str(tmp_path) in str(info.value) and not marker.exists()


@pytest.mark.slow  # an Optuna database and four compositions: over 4 s on 2 cores
def test_tune_continue_refuses_a_crafted_study_before_anything_runs(base, tmp_path, monkeypatch):
    from cnnlab.commands.tune import prepare

    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    for n, what in enumerate(
        ("the old format: stored overrides only", "model._target_=choice(torch.hub.load)")
    ):
        folder = tmp_path / f"study{n}"
        crafted_study(folder, hostile_studies(study_attrs(base), marker)[what])
        with pytest.raises(CnnlabError) as info:
            prepare([f"tune.dir={folder}", "tune.n_trials=1"])
        assert "\n" not in str(info.value) and not marker.exists(), what
        assert sorted(p.name for p in folder.iterdir()) == ["study.db"]


@pytest.mark.slow  # an Optuna database and four compositions: over 4 s on 2 cores
def test_a_study_continues_from_its_stored_design(base, tmp_path, monkeypatch):
    from cnnlab.commands import tune

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "study"
    attrs = study_attrs(base)
    crafted_study(folder, {**attrs, OVERRIDES: ["+experiment=../../evil", "-m"]})  # a record, never replayed
    args, _ = tune.prepare([f"tune.dir={folder}", "tune.n_trials=3"])
    design = tune._designs.pop()
    assert design.base["tune"]["n_trials"] == 3 and design.base["optimizer"]["lr"] == 0.01
    assert not any("experiment" in a for a in args)
    with pytest.raises(ConfigError, match="was started with another optimizer"):
        tune.prepare([f"tune.dir={folder}", "optimizer=sgd"])


# ------------------------------------------------------------------------- every command, through the CLI
@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("hostile")
    data = write_tiny_idx(base / "data")
    proc = run_cli("train", f"dataset.root={data}", *FAST, "hydra.run.dir=run", cwd=base)
    assert proc.returncode == 0, proc.stderr
    return base / "run"


def hub_payload(tmp_path: Path) -> tuple[str, Path]:
    marker = tmp_path / "pwned"
    hub = tmp_path / "hub"
    hub.mkdir(exist_ok=True)
    (hub / "hubconf.py").write_text(
        f"open({str(marker)!r}, 'w').write('hub')\ndef evil(**kw):\n    return 'relu'\n"
    )
    value = ("${oc.create:{_target_: torch.hub.load, repo_or_dir: '" + str(hub) + "', model: evil, "
             "source: local, trust_repo: true}}")  # fmt: skip
    return value, marker


@pytest.mark.parametrize(
    "command", ["predict", "evaluate", "export", "viz filters", "compress method=quantize"]
)
@pytest.mark.slow  # a CLI run each, over 4 s on 2 cores
def test_oc_create_in_a_stored_option_is_refused_by_every_command(cli_run, tmp_path, command):
    import shutil

    run = Path(shutil.copytree(cli_run, tmp_path / "run"))
    value, marker = hub_payload(tmp_path)
    for name in ("best.pt", "last.pt"):
        state = load_checkpoint(run / "checkpoints" / name)
        config = yaml.safe_load(state["config"])
        config["model"]["activation"] = value
        state["config"] = yaml.safe_dump(config)
        save_checkpoint(state, run / "checkpoints" / name)
    (run / "checkpoints" / "best.safetensors").unlink()
    before = snapshot(run)
    proc = run_cli(*command.split(), f"run={run}", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "interpolation" in proc.stderr.strip().splitlines()[-1]
    assert not marker.exists() and snapshot(run) == before


@pytest.mark.slow  # a CLI run, over 4 s on 2 cores
def test_cli_resume_ignores_every_hostile_stored_override(cli_run, tmp_path):
    import shutil

    run = Path(shutil.copytree(cli_run, tmp_path / "a folder, naïve 日本" / "run"))  # a space, any script
    (run / "summary.json").unlink()
    marker = plant(run, tmp_path)
    proc = run_cli("train", f"resume={run}", "trainer.max_epochs=2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not marker.exists() and RunDir(run).read_summary()["epochs_run"] == 2


class TinyNet(__import__("torch").nn.Module):
    """A model an installed plugin would register under the cnnlab.models entry point group."""

    def __init__(self, *, in_channels: int, num_classes: int, image_size: int, width: int = 2):
        super().__init__()
        self.classifier = __import__("torch").nn.Linear(in_channels * image_size**2, num_classes)
        self.width = width


def test_an_installed_plugins_model_is_built_by_its_entry_point_and_nothing_else(base, tmp_path, monkeypatch):
    import importlib.metadata as md

    import cnnlab.models.registry as registry
    from cnnlab.build import build_model

    ep = md.EntryPoint(name="tiny", value=f"{__name__}:TinyNet", group=registry.ENTRY_POINTS)
    monkeypatch.setattr(registry, "plugins", lambda: {f"{__name__}.TinyNet": ep, "tiny": ep})
    config = {**copy.deepcopy(base), "model": {"name": "tiny", "width": 5}}  # found by its name
    cfg = stored_config(yaml.safe_dump(config), tmp_path / "config.yaml")
    model = build_model(cfg.model, in_channels=1, num_classes=3, image_size=4)
    assert isinstance(model, TinyNet) and model.width == 5
    config["model"]["_target_"] = f"{__name__}.copy"  # importable, but no plugin registers it
    with pytest.raises(ConfigError, match="names a model cnnlab does not build"):
        stored_config(yaml.safe_dump(config), tmp_path / "config.yaml")
