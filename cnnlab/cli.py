"""``cnnlab <subcommand> [overrides]``: dispatch to Hydra apps, turning user errors into one sentence."""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.resources
import io
import logging
import os
import re
import sys

from cnnlab import __version__
from cnnlab.errors import CnnlabError, ConfigError, did_you_mean

USAGE = """usage: cnnlab <command> [key=value ...]

commands:
  train     train a model: cnnlab train model=lenet dataset=fashion_mnist trainer.max_epochs=3
            (Hydra: --cfg job shows the composed config, -m runs a sweep, --help lists the groups)
            continue a stopped run: cnnlab train resume=<run dir>  (or resume=auto)
            grid sweeps: cnnlab train -m optimizer=sgd,adam optimizer.lr=0.01,0.1
                    add hydra/launcher=joblib to run the jobs in parallel
            data parallel: torchrun --nproc_per_node=N -m cnnlab train ...  (trainer.batch_size is global)
            on SLURM: cnnlab train -m hydra/launcher=slurm hydra.launcher.partition=<name> ...
  tune      search hyperparameters with Optuna, pruning weak trials: cnnlab tune tune=fashion_mnist
            cnnlab tune 'optimizer.lr=tag(log, interval(1e-4, 0.1))' 'trainer.batch_size=choice(64,128)'
            (tune.n_trials, tune.pruner=median|hyperband|none, tune.n_jobs, tune.report=true;
             cnnlab tune tune.dir=<study folder> continues a study)
  lr_find   the learning-rate range test of a train setup: cnnlab lr_find model=lenet [train overrides]
            [lr_find.steps=200] [lr_find.out=lr_find.png] (plots loss against lr, prints a suggested lr)
  predict   write a Kaggle submission CSV from a run: cnnlab predict run=outputs/<date>/<time>
            [ckpt=<file>] [input=<folder or test.csv>] [out=<path>] [probs=true] [tta=flip|<n>]
            (run=[dirA,dirB] averages an ensemble; --cfg job lists every option)
  export    share a run's best weights: cnnlab export run=<run dir> format=safetensors|torchscript|onnx
  data      check a dataset's files: cnnlab data verify dataset=food11 dataset.root=<dir>
            or describe it: cnnlab data stats dataset=... (class counts, image sizes, mean/std)
  runs      compare runs: cnnlab runs multirun/<date>/<time>   or   cnnlab runs outputs
            (a table sorted by the metric; writes <dir>/summary.csv; html=true also <dir>/runs.html)
  evaluate  score a run on its labeled test split: per-class table, confusion matrix, calibration
            cnnlab evaluate run=outputs/2026-11-22/12-00-00        (writes <run>/report/)
  compress  a smaller or faster copy of a run, as a new run folder with a size/speed/accuracy table:
            cnnlab compress run=<dir> method=prune amount=0.5 [structured=true] [finetune_epochs=1]
            cnnlab compress run=<dir> method=quantize        (int8, PT2E; pip install 'cnnlab[quantize]')
            cnnlab compress run=<dir> method=distill student.model=lenet
  viz       pictures of a run: cnnlab viz <what> run=<dir>, <what> one of curves, filters,
            feature_maps, kernels, predictions, embeddings, augment, gradcam, saliency, page
            (cnnlab viz augment dataset=cifar10 augmentation=strong works without a run)

Run `cnnlab train --help` for the config groups and their options.
"""


class JobFailed(BaseException):
    """Carries a command's error out of Hydra. Hydra's job runner catches every ``Exception`` and prints
    "Error executing job with overrides: [...]" before raising it again; a ``BaseException`` passes it
    unseen (a signal's :class:`~cnnlab.engine.interrupt.Interrupted` also stops the rest of a sweep).
    Sweep jobs that fail return None instead (``cnnlab.commands.train.train_job``), so a sweep goes on.
    """

    def __init__(self, error: Exception):
        super().__init__(error)
        self.error = error


def _hydra_app(config_name: str, target: str):
    """The Hydra app of a command: ``conf/<config_name>.yaml`` composed, then ``target`` called with it.

    ``target`` is ``"module:function"``. Commands that read runs instead of creating one set
    ``hydra.run.dir: .`` and ``hydra.output_subdir: null`` in their config, so nothing is written
    beside the user's files.
    """
    import hydra

    from cnnlab.config import check_all_numbers, register_configs

    register_configs()

    @hydra.main(version_base="1.3", config_path="pkg://cnnlab.conf", config_name=config_name)
    def app(cfg):
        module, func = target.split(":")
        try:
            if config_name != "train":  # a train job checks its own (a sweep's failed job returns None)
                check_all_numbers(cfg)
            return getattr(importlib.import_module(module), func)(cfg)
        except Exception as exc:
            raise JobFailed(exc) from None  # past Hydra's job runner, which would print its own line

    def run():
        try:
            app()
        except JobFailed as failed:
            raise failed.error from None

    return run


def positional_overrides(rest: list[str], names: list[str]) -> list[str]:
    """``cnnlab viz augment run=x`` -> ``what=augment run=x``: leading bare words fill ``names`` in order."""
    out, names = [], list(names)
    for arg in rest:
        if names and "=" not in arg and not arg.startswith("-"):
            out.append(f"{names.pop(0)}={arg}")
        else:
            out.append(arg)
    return out


# command -> (config name, "module:function", names of leading positional arguments)
TOOLS: dict[str, tuple[str, str, list[str]]] = {
    "train": ("train", "cnnlab.commands.train:train_job", []),  # returns the metric a sweeper optimises
    "tune": ("tune", "cnnlab.commands.tune:main", []),
    "predict": ("predict", "cnnlab.commands.predict:main", []),
    "lr_find": ("lr_find", "cnnlab.commands.lr_find:main", []),
    "runs": ("runs", "cnnlab.commands.runs:main", ["dir"]),
    "export": ("export", "cnnlab.commands.export:main", []),
    "data": ("data", "cnnlab.commands.data:main", ["action"]),
    "evaluate": ("evaluate", "cnnlab.commands.evaluate:main", []),
    "viz": ("viz", "cnnlab.commands.viz:main", ["what"]),
    "compress": ("compress", "cnnlab.commands.compress:main", []),
}


def group_options(group: str) -> list[str]:
    """The options of a config group in ``conf/`` (Hydra names none when one of a list is missing)."""
    folder = importlib.resources.files("cnnlab.conf").joinpath(group)
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def train_help() -> str:
    """``cnnlab train --help``: the config groups and their options, read from ``conf/``.

    Hydra's own help copies the whole config store once per group (seconds); this reads file names.
    """
    root = importlib.resources.files("cnnlab.conf")
    skip = ("hydra", "tune")  # Hydra's own groups; the search spaces of cnnlab tune
    groups = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in skip and p.name[0] != "_")
    lines = [f"  {g}: {', '.join(group_options(g))}" for g in groups if group_options(g)]
    return (
        "usage: cnnlab train [group=option ...] [key=value ...]    (-m sweeps: optimizer.lr=1e-3,1e-2)\n\n"
        "config groups (group=option; the presets: +experiment=<name>):\n"
        + "\n".join(lines)
        + "\n\nevery option with its value: cnnlab train [overrides] --cfg job\n"
        "Hydra's flags and launchers: cnnlab train --hydra-help; every command: cnnlab --help\n"
    )


def hydra_error_message(exc: Exception) -> str | None:
    """One sentence for Hydra's composition errors, with a suggestion for a misspelt key or choice."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    if isinstance(exc, MissingConfigException) and "/" in (exc.missing_cfg_file or ""):
        group, _, choice = exc.missing_cfg_file.rpartition("/")
        options = exc.options if exc.options is not None else group_options(group)  # a list: logger=[a,b]
        hint = did_you_mean(choice, options)
        return f"Unknown {group} '{choice}'; choose one of: {', '.join(options)}.{hint}"
    if isinstance(exc, ConfigCompositionException):
        cause = exc.__cause__
        key = getattr(cause, "key", None)
        parent = getattr(cause, "parent_node", None)
        if key is not None and parent is not None and "not in" in str(cause):
            return unknown_key_message(cause.full_key, str(key), parent)
        if key is not None and type(cause).__name__ == "ValidationError":
            message = wrong_type_message(cause.full_key, str(key), getattr(cause, "object_type", None))
            if message:
                return message
        text = str(exc).splitlines()[0]
        unlisted = re.match(r"Could not override '([^']+)'\. No match in the defaults list", text)
        if unlisted:  # e.g. experiment=..., a group the defaults list leaves out: it must be added
            group = unlisted[1]
            return (f"Could not override '{group}': no {group} is in the defaults list to replace; add one "
                    f"with +{group}=<name> instead of {group}=<name>.")  # fmt: skip
        detail = str(cause).splitlines()[0] if cause is not None else ""
        return f"{text.rstrip('.')}{': ' + detail if detail else ''}."
    if isinstance(exc, OverrideParseException):  # Hydra's grammar: a symbol or a space it cannot read
        return f"{str(exc).splitlines()[0]} (quote such a value: key='...')"
    if isinstance(exc, MissingConfigException):
        return str(exc).splitlines()[0]
    if isinstance(exc, ValueError) and str(exc).startswith("Only one of --run, --multirun, --cfg"):
        return f"{exc}: use one of them at a time (e.g. drop -m to print one job's config with --cfg job)."
    return None


def given_value(full_key: str) -> str:
    """The value the command line gave ``full_key`` ("" when none): Hydra's errors do not carry it."""
    return next((a.partition("=")[2] for a in sys.argv[1:] if a.lstrip("+~").startswith(full_key + "=")), "")


def unknown_key_message(full_key: str, key: str, parent) -> str:
    """ "Unknown config key", and for a key another option of the group has (``model.dropout`` with LeNet)
    the options that have it and the command line that uses one."""
    from cnnlab.config import options_with

    group = full_key.split(".")[0]
    others = options_with(group, key) if full_key == f"{group}.{key}" else []
    if not others or parent.get("name") is None:
        return f"Unknown config key '{full_key}'.{did_you_mean(key, parent)}"
    value = given_value(full_key)
    listed = (
        f"{', '.join(others[:-1])} and {others[-1]} have it" if len(others) > 1 else f"{others[0]} has it"
    )
    return (
        f"{group} {parent.name} has no option '{key}'; {listed}: "
        f"{group}={others[0]} {full_key}={value or '<value>'}."
    )


def wrong_type_message(full_key: str, key: str, schema) -> str | None:
    """``trainer.max_epochs=abc``: what the option takes, with an example, instead of OmegaConf's words."""
    from cnnlab.config import field_kind

    found = field_kind(schema, key)
    if found is None:
        return None
    kind, default = found
    value = given_value(full_key)
    example = f", e.g. {full_key}={str(default).lower() if isinstance(default, bool) else default}"
    return (
        f"{full_key}={value} is not {kind}; give {full_key} {kind}{example if default is not None else ''}."
    )


def check_numbers(args: list[str]) -> None:
    """Refuse a whole number too long for Python to parse (over 4,300 digits), which Hydra's override
    parser reports with a traceback; the value of no option is that large."""
    limit = sys.get_int_max_str_digits()
    for arg in args:
        key, sep, value = arg.partition("=")
        digits = value.strip().lstrip("+-").replace("_", "")
        if sep and limit and len(digits) > limit and digits.isdigit():
            raise ConfigError(
                f"{key.lstrip('+~')} is a number of {len(digits):,} digits; no option takes one that large."
            )


GRAMMAR = re.compile(r"[,\[\]{}()'\"\\$=*?]")  # characters with a meaning in Hydra's override grammar


def quote_letters(arg: str) -> str:
    """``hydra.run.dir=rün`` -> ``hydra.run.dir='rün'``: Hydra's lexer takes only ASCII letters unquoted,
    so a plain value with other letters (``數據``, ``r①``) is quoted as the user meant it."""
    key, sep, value = arg.partition("=")
    if not sep or arg.startswith("-") or value.isascii() or GRAMMAR.search(value):
        return arg
    from cnnlab.config import override_quoted

    return f"{key}={override_quoted(value)}"


@contextlib.contextmanager
def internal_groups_hidden(args: list[str]):
    """``--help`` lists every config group Hydra knows, the ``schema/*`` ones behind the YAML too; they
    are not choices a user makes, so their lines are dropped."""
    if not {"--help", "-h"} & set(args):
        yield
        return
    text = io.StringIO()
    try:
        with contextlib.redirect_stdout(text):
            yield
    finally:
        print(
            "".join(line for line in text.getvalue().splitlines(True) if not line.startswith("schema/")),
            end="",
        )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:  # a command is required: the usage is the error message
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    if argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    if argv[0] == "--version":
        print(f"cnnlab {__version__}")
        return
    command, rest = argv[0], argv[1:]
    if command == "train" and {"--help", "-h"} & set(rest):
        print(train_help())
        return
    apps = {}
    for name, (config_name, target, positional) in TOOLS.items():
        apps[name] = functools.partial(_hydra_app, config_name, target)
        if command == name:
            rest = [quote_letters(a) for a in positional_overrides(rest, positional)]
    if command not in apps:
        hint = did_you_mean(command, apps)
        print(
            f"cnnlab: error: unknown command '{command}'; choose one of: {', '.join(apps)}.{hint}",
            file=sys.stderr,
        )
        sys.exit(2)
    # Let exceptions reach us so user errors print as one sentence, not as Hydra's traceback dump.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        from cnnlab.config import hydra_prints

        check_numbers(rest)
        claim = contextlib.nullcontext()
        # Every check before Hydra starts; train and tune claim a folder. Not for Hydra's own flags
        # (--help, --cfg...), which print and exit: they answer without importing torch.
        if command in ("train", "tune", "lr_find") and not hydra_prints(rest):
            prepare = importlib.import_module(f"cnnlab.commands.{command}").prepare
            rest, claim = prepare(rest)
        sys.argv = [f"cnnlab {command}", *rest]
        with claim, internal_groups_hidden(rest):
            apps[command]()()
        if command == "train":
            from cnnlab.commands.train import take_sweep_failure

            failure = take_sweep_failure()
            if failure is not None:  # printed, not logged: the log now is the last job's train.log
                print(f"cnnlab: error: {failure}", file=sys.stderr)
                sys.exit(failure.exit_code)
    except KeyboardInterrupt:  # a second Ctrl-C during training, or one outside it
        print("cnnlab: aborted.", file=sys.stderr)
        sys.exit(130)
    except CnnlabError as exc:
        if any(getattr(h, "_cnnlab", False) for h in logging.getLogger().handlers):  # train's console and log
            logging.getLogger("cnnlab").error("%s", exc)
        else:  # logging's last-resort handler would print it a second time
            print(f"cnnlab: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Exception as exc:
        message = hydra_error_message(exc)
        if message is None and isinstance(exc, OSError) and exc.filename is not None:
            # an unwritable output dir, a full disk: the environment, not a bug
            message = (
                f"cannot use {exc.filename} ({exc.strerror}); choose a writable place "
                "(e.g. hydra.run.dir=<dir>) or free some disk space."
            )
        if message is None:
            raise
        print(f"cnnlab: error: {message}", file=sys.stderr)
        sys.exit(2)
