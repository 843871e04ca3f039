"""Run every known fault against the CLI and print what happened.

    python scripts/fault_drill.py [--keep DIR] [--jobs N] [--only WORD]

Each case runs ``cnnlab ...`` in a subprocess on tiny data it writes (with the test suite's writers)
and holds when: the exit code is the expected one, the output holds the expected fragment of the
message, no traceback and no Hydra "Error executing job" line was printed, every file that must survive
did, nothing that must not exist does (a marker a hostile file would have written, a half-written file),
and no temp file (``*.tmp``) is left in the case's folder. Cases share two trained runs (copied where a
case changes one). Prints a table; a case that cannot be tried on this machine (a chmod 000 folder when
running as root) is reported and counted as skipped, not as held. Exits 1 if any case tried does not hold.
"""

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import drill_firstday as first
import drill_hostile as hostile
import drill_inputs as inputs
import drill_runs as runs
import drill_scale
from drill_kit import Case, Drill, Result, judge

DRILLS: list[tuple[str, Callable[[Drill, str], Case]]] = [
    # the command line and the config: one line, exit 2, nothing written
    (
        "unknown config key",
        inputs.config_error("model=mlp", "model.dropuot=0.1", expect="Did you mean 'dropout'?"),
    ),
    ("unknown choice", inputs.config_error("model=lenett", expect="Did you mean 'lenet'?")),
    (
        "+key the schema lacks: +optimiser=sgd",
        inputs.config_error("+optimiser=sgd", expect="Did you mean 'optimizer'?"),
    ),
    (
        "+trainer.max_epoch=3",
        inputs.config_error("+trainer.max_epoch=3", expect="Did you mean 'max_epochs'?"),
    ),
    (
        "optimizer.learning_rate",
        inputs.config_error("optimizer.learning_rate=0.1", expect="Did you mean 'lr'?"),
    ),
    (
        "momentum 2",
        inputs.config_error("optimizer=sgd", "optimizer.momentum=2", expect="momentum must be in [0, 1]"),
    ),
    (
        "dampening -1",
        inputs.config_error("optimizer=sgd", "optimizer.dampening=-1", expect="dampening must be in [0, 1]"),
    ),
    (
        "betas [0.9, 1.0]",
        inputs.config_error("optimizer.betas=[0.9,1.0]", expect="betas must be two numbers in [0, 1)"),
    ),
    (
        "rmsprop alpha 1",
        inputs.config_error("optimizer=rmsprop", "optimizer.alpha=1", expect="alpha must be in [0, 1)"),
    ),
    ("eps 0", inputs.config_error("optimizer.eps=0", expect="eps must be greater than 0")),
    (
        "weight_decay -1",
        inputs.config_error("optimizer.weight_decay=-1", expect="weight_decay must be 0 or more"),
    ),
    ("lr nan", inputs.config_error("optimizer.lr=nan", expect="optimizer.lr=nan is not a finite number")),
    (
        "threads many",
        inputs.config_error("trainer.threads=many", expect="trainer.threads=many is not a thread"),
    ),
    ("seed of 20 digits", inputs.config_error("seed=99999999999999999999", expect="is too large")),
    (
        "max_epochs of 5,000 digits",
        inputs.config_error("trainer.max_epochs=" + "9" * 5000, expect="5,000 digits"),
    ),
    (
        "${oc.env:UNSET}",
        inputs.config_error("dataset.root=${oc.env:CNNLAB_DRILL_UNSET}", expect="could not be resolved"),
    ),
    ("experiment= without +", inputs.config_error("experiment=fast_mnist", expect="+experiment=<name>")),
    ("-m with --cfg", inputs.sweep_with_cfg),
    ("unknown command", inputs.config_error(expect="unknown command 'trian'", command="trian")),
    ("cnnlab without a command", inputs.no_arguments),
    # data: broken and hostile files
    ("truncated JPEG in food11 train/", inputs.food_with(inputs.truncated_jpeg, "not a readable image")),
    (
        "PNG that is not an image",
        inputs.food_with(lambda t: (t / "1_78.png").write_text("text"), "not a readable image"),
    ),
    (
        "zero-byte image",
        inputs.food_with(lambda t: (t / "1_79.jpg").write_bytes(b""), "not a readable image"),
    ),
    ("huge image (decompression bomb)", inputs.food_with(inputs.huge_png, "decompression-bomb")),
    ("on_bad_image=skip: a warning, no advice to set it", inputs.skip_warning),
    (
        "IDX with a wrong magic number",
        inputs.idx_damaged(lambda r: r[:2] + b"\x0d" + r[3:], "t10k-images-idx3-ubyte.gz", "not an IDX file"),
    ),
    (
        "IDX with short data",
        inputs.idx_damaged(lambda r: r[:-100], "train-images-idx3-ubyte.gz", "truncated"),
    ),
    (
        "IDX gzip bomb",
        inputs.idx_damaged(inputs.gzip_bomb, "train-images-idx3-ubyte.gz", "more data than its header"),
    ),
    ("CIFAR batch of the wrong size", inputs.cifar_wrong_size),
    ("CIFAR pickle that runs code", inputs.cifar_pickle_exploit),
    ("data folder that cannot be read", inputs.unreadable_folder),
    ("food11 root without train/ valid/ test/", inputs.food11_wrong_root),
    ("food11 as training/ validation/ evaluation/", inputs.food11_course_layout),
    ("imagefolder: classes from the folders", inputs.imagefolder_classes),
    ("data verify: bad file once, folder named", inputs.verify_bad_files),
    (
        "image_size too small for the model",
        inputs.config_error("dataset.image_size=3", expect="at least 12 pixels", before_data=False),
    ),
    ("temp folder of a killed unpack", inputs.stale_cache_temp),
    # run folders: damaged, forged and hostile files
    ("checkpoint of another model", runs.predict_with(runs.other_models_weights, "do not fit the model")),
    (
        "checkpoint pickle that runs code",
        runs.predict_with(runs.hostile_pickle, "can be loaded safely", "PWNED"),
    ),
    ("safetensors epoch='abc'", runs.predict_with(runs.metadata("epoch", "abc"), "not a number of epochs")),
    ("safetensors mean=[]", runs.predict_with(runs.metadata("mean", []), "one per channel")),
    (
        "safetensors config='[1,2]'",
        runs.predict_with(runs.metadata("config", "[1,2]"), "not a cnnlab config"),
    ),
    ("safetensors std=[0]", runs.predict_with(runs.metadata("std", [0]), "must be greater than 0")),
    ("resume: last.pt without rng", runs.resume_with(runs.edit_last(lambda s: s.pop("rng")), "lacks rng")),
    ("resume: weights of the wrong shape", runs.resume_with(runs.edit_last(runs.wrong_shape), "last.pt")),
    (
        "resume: metrics.csv garbage",
        runs.resume_with(lambda r: (r / "metrics.csv").write_text("garbage,xx\n1,2,3\n"), "metrics.csv"),
    ),
    # a run folder and a study are data: nothing stored reaches Hydra's grammar, resolvers or imports
    ("resume: hostile overrides.yaml is never replayed", runs.resume_ignores_stored_overrides),
    ("predict: oc.create in a stored option", runs.hostile_stored_config("predict", "interpolation")),
    ("evaluate: oc.create in a stored option", runs.hostile_stored_config("evaluate", "interpolation")),
    ("export: oc.create in a stored option", runs.hostile_stored_config("export", "interpolation")),
    ("viz: oc.create in a stored option", runs.hostile_stored_config("viz filters", "interpolation")),
    (
        "compress: oc.create in a stored option",
        runs.hostile_stored_config("compress method=quantize", "interpolation"),
    ),
    (
        "predict: stored model._target_=os.system",
        runs.hostile_stored_config("predict", "does not build", key="_target_", value="os.system"),
    ),
    (
        "resume: oc.create in last.pt's config",
        runs.resume_with(runs.stored_option("${oc.env:HOME}", ("last.pt",)), "interpolation"),
    ),
    ("tune: a crafted study.db", runs.crafted_study),
    (
        "resume: a finished run, no more epochs",
        runs.resume_refused(lambda r: None, "has finished", "trainer.max_epochs=2"),
    ),
    (
        "resume: a folder killed before its first last.pt",
        runs.resume_refused(runs.no_last_checkpoint, "stopped before its first epoch"),
    ),
    ("resume=auto past a truncated status.json", runs.resume_auto_skips_truncated_status),
    ("viz curves: binary metrics.csv", runs.curves_of_binary_metrics),
    (
        "runs: truncated summary.json",
        runs.runs_lists_broken(lambda r: (r / "summary.json").write_text('{"best')),
    ),
    (
        "runs: summary.json holding a list",
        runs.runs_lists_broken(lambda r: (r / "summary.json").write_text("[1, 2]")),
    ),
    (
        "runs: unparsable .hydra/config.yaml",
        runs.runs_lists_broken(lambda r: (r / ".hydra" / "config.yaml").write_text("model: [\n")),
    ),
    ("runs of two datasets: grouped", runs.runs_group_datasets),
    ("temp file of a killed checkpoint write", runs.stale_run_temp),
    ("evaluate scored otherwise keeps training's report", runs.evaluate_keeps_the_report),
    # the machine
    ("output dir not writable", runs.unwritable_output),
    ("disk fills while checkpointing", runs.disk_full),
    ("trainer.compile without a C++ compiler", runs.compile_without_a_compiler),
    # signals
    ("Ctrl-C during training", runs.signal_in_epoch(signal.SIGINT)),
    ("SIGTERM during training (preemption)", runs.signal_in_epoch(signal.SIGTERM)),
    ("SIGHUP during training (terminal closed)", runs.signal_in_epoch(signal.SIGHUP)),
    ("resume after Ctrl-C", runs.signal_in_epoch(signal.SIGINT, resume=True)),
    (
        "SIGTERM while loading data",
        runs.signal_at("cnnlab.train.assemble.build_data", signal.SIGTERM, "loading data"),
    ),
    (
        "SIGTERM while unpacking the CIFAR zip",
        runs.signal_at(
            "cnnlab.data.cifar._extract", signal.SIGTERM, "loading data", when="after", data="zip"
        ),
    ),
    (
        "SIGTERM from outside while workers decode",
        runs.signal_at(
            "cnnlab.data.images.open_image", signal.SIGTERM, "loading data", when="worker", data="food"
        ),
    ),
    (
        "SIGHUP while building the model",
        runs.signal_at("cnnlab.train.assemble.build_model", signal.SIGHUP, "building"),
    ),
    ("SIGINT while testing, then resume", runs.testing_then_resume),
    (
        "SIGTERM while writing the report",
        runs.signal_at("cnnlab.report.evaluate.write_curves", signal.SIGTERM, "report"),
    ),
    # the run itself
    ("loss becomes NaN", runs.divergence),
    ("train: no grad_norm column unclipped, no tables", runs.quiet_run),
    ("export: no warnings or exporter notes", runs.export_quiet),
    # a newcomer's first day
    ("imagefolder as root/<class>/*.png", first.flat_image_folder),
    ("dataset.root holding no dataset", first.root_without_a_dataset),
    ("IDX with 0 images and 0 labels", first.idx_without_images),
    ("hydra.run.dir with rün 數據 r①", first.non_ascii_run_dir),
    ("MNIST offline: one line", first.offline_download),
    ("output to a file: paths not wrapped", first.unwrapped_output),
    ("train --help without schema/ groups", first.help_without_schema),
    ("submission ids of a labeled test split", first.labeled_test_ids),
    ("run page: precision and threads used", first.page_shows_precision),
    ("trainer.min_delta=nan", inputs.config_error("trainer.min_delta=nan", expect="is not a finite number")),
    (
        "scheduler gamma nan",
        inputs.config_error("scheduler=step", "scheduler.options.gamma=nan", expect="is not a finite number"),
    ),
    ("image_size 100000", inputs.config_error("dataset.image_size=100000", expect="between 1 and 4096")),
    (
        "model.dropout with LeNet",
        inputs.config_error("model.dropout=0.1", expect="mlp and simplecnn have it"),
    ),
    ("trainer.max_epochs=abc", inputs.config_error("trainer.max_epochs=abc", expect="is not a whole number")),
    ("cnnlab evalute", inputs.config_error(expect="Did you mean 'evaluate'?", command="evalute")),
    ("viz gradcm", inputs.config_error("gradcm", "run=x", expect="Did you mean 'gradcam'?", command="viz")),
    ("export: error prefix", inputs.config_error("run=missing", expect="cnnlab: error: ", command="export")),
    # hostile files: links below the run, FIFOs, names that are markup or formulas, orphaned workers
    ("evaluate: report/evaluate_<...>/ linked out", hostile.evaluate_into_linked_subfolder),
    ("export: export/sub/ linked out", hostile.export_into_linked_subfolder),
    ("runs html=true: report/ linked to a page", hostile.runs_html_through_linked_report),
    ("predict input=: a FIFO named b.png", hostile.predict_fifo),
    ("data verify: a FIFO named b.png", hostile.verify_fifo),
    ("pseudo_label.data: a FIFO named b.png", hostile.pseudo_label_fifo),
    ("class and run named $\\foo$: end-of-run report", hostile.dollar_class_report),
    ("run named $\\foo$: viz and runs html=true", hostile.dollar_names_viz_runs),
    ("class named =1+2: submission cell", hostile.formula_class_submission),
    ("kill -9 of tune n_jobs=2: workers and lock", hostile.orphaned_workers),
    # beyond one machine: weights by name, a shared study's storage
    *drill_scale.CASES,
]


def run_case(drill: Drill, index: int, name: str, make: Callable) -> Result:
    slug = f"{index:02d}"
    if make is inputs.unreadable_folder and os.geteuid() == 0:  # root reads every folder: nothing to refuse
        return Result(0, "running as root, which can read a chmod 000 folder", "-", False, skipped=True)
    try:
        return judge(make(drill, slug), drill.work / slug)
    except Exception as exc:  # a case that could not even run does not hold
        return Result(-1, f"drill error: {type(exc).__name__}: {exc}"[:150], "-", False)


def report(chosen: list[tuple[int, str, Callable]], results: list[Result], seconds: float) -> str:
    """The table, one row per case (holds: yes, NO or skipped), and the count of each."""
    width = max(len(name) for _, name, _ in chosen)
    rows = [f"{'#':>2}  {'fault':<{width}}  exit  holds    message  [survived on disk]"]
    for (i, name, _), r in zip(chosen, results, strict=True):
        verdict = "skipped" if r.skipped else "yes" if r.holds else "NO"
        rows.append(f"{i:>2}  {name:<{width}}  {r.code:>4}  {verdict:>7}  {r.message}  [{r.survived}]")
    held = sum(r.holds and not r.skipped for r in results)
    skipped = sum(r.skipped for r in results)
    tried = len(results) - skipped
    rows.append(f"{held} of {tried} hold, {skipped} skipped ({seconds:.0f} s)")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temp dir)")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2)")
    parser.add_argument("--only", default="", help="run the cases whose name contains one of these words "
                        "(comma-separated)")  # fmt: skip
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="cnnlab-drill-"))
    work.mkdir(parents=True, exist_ok=True)
    drill = Drill(work)
    started = time.perf_counter()
    drill.base_run()
    drill.base_run("mlp-run", "model=mlp", "trainer.max_epochs=1")
    words = args.only.split(",")
    chosen = [(i, name, make) for i, (name, make) in enumerate(DRILLS, 1) if any(w in name for w in words)]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda c: run_case(drill, *c), chosen))
    print(report(chosen, results, time.perf_counter() - started))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if all(r.holds or r.skipped for r in results) else 1)


if __name__ == "__main__":
    main()
