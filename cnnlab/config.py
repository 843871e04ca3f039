"""Structured-config schema behind the YAML in ``conf/``.

Every config group option in ``conf/<group>/<name>.yaml`` starts from one of these dataclasses (stored
in Hydra's ConfigStore under ``schema/<group>``), so a misspelt key or a wrong type fails when the
config is composed, before any work starts. Checks that a type cannot express (positive learning
rate, a split inside (0, 1), choices) live in :func:`validate`; :func:`cnnlab.build.check` runs it with
every other option check before any data is read.
"""

from __future__ import annotations

import importlib.util
import math
import re
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from cnnlab.errors import ConfigError

HYDRA_FLAGS = ("--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc",
               "--resolve", "--package", "-p")  # fmt: skip


def hydra_prints(args: list[str]) -> bool:
    """Whether Hydra only prints something and exits (help, the composed config, completion): the
    commands then skip their checks, and ``cnnlab train --help`` answers without importing torch."""
    return any(a.split("=")[0] in HYDRA_FLAGS for a in args)


@dataclass
class SubmissionConfig:
    """How ``cnnlab predict`` writes a Kaggle submission for this dataset."""

    id_column: str = "id"
    label_column: str = "label"
    # stem: the image's file name without extension (1-based position when images have no file names,
    # e.g. IDX, CIFAR binary, test.csv); index1 / index0: the row's 1- or 0-based position.
    id_source: str = "stem"
    label_as: str = "name"  # name: the class name; index: the class index


@dataclass
class DatasetConfig:
    name: str = MISSING
    format: str = MISSING  # one of cnnlab.data.registry.FORMATS
    root: str | None = None  # explicit location; when set, nothing else is searched
    dirnames: list[str] = field(default_factory=list)  # names tried under $CNNLAB_DATA
    system_dirs: list[str] = field(default_factory=list)  # e.g. Debian's /usr/share/datasets/...
    apt_package: str | None = None  # named in the "not found" message
    torchvision_name: str | None = None  # torchvision.datasets class used to download when online
    download: bool = True
    channels: int = 1
    image_size: int = 28
    num_classes: int | None = 10  # None: as many as the data has (imagefolder: its class folders)
    classes: list[str] = field(default_factory=list)
    # one value per channel, or auto: computed over the training split (after the validation split)
    mean: Any = field(default_factory=lambda: [0.5])
    std: Any = field(default_factory=lambda: [0.5])
    val_split: float = 0.1
    stratified: bool = True
    split_seed: int = 0  # fixed, so the validation set does not move when `seed` changes
    folds: int | None = None  # k-fold cross-validation: validate on fold `fold` of `folds` (stratified)
    fold: int = 0
    cache_dir: str | None = None  # default $CNNLAB_CACHE or ~/.cache/cnnlab
    cache: bool = False
    num_workers: int | None = None
    on_bad_image: str = "error"
    sampler: str = "random"  # random | balanced: each class drawn equally often (with replacement)
    in_memory: Any = "auto"  # auto | true | false: false keeps the images on the host (see README)
    submission: SubmissionConfig = field(default_factory=SubmissionConfig)


@dataclass
class ModelConfig:
    _target_: str = MISSING
    name: str = MISSING


@dataclass
class MLPConfig(ModelConfig):
    _target_: str = "cnnlab.models.mlp.MLP"
    name: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [256, 64])
    dropout: float = 0.2
    activation: str = "relu"  # relu | leaky_relu | elu | silu | gelu | sigmoid | tanh
    init: str = "default"  # default (PyTorch's) | kaiming | xavier | orthogonal | normal
    init_std: float = 0.01  # the standard deviation of init=normal
    weights: str | None = None  # a local file to start from (e.g. an earlier run's best.pt)


@dataclass
class LeNetConfig(ModelConfig):
    _target_: str = "cnnlab.models.lenet.LeNet"
    name: str = "lenet"
    activation: str = "relu"
    pool: str = "max"
    channels: list[int] = field(default_factory=lambda: [6, 16])
    fc: list[int] = field(default_factory=lambda: [120, 84])
    init: str = "default"  # default (PyTorch's) | kaiming | xavier | orthogonal | normal
    init_std: float = 0.01  # the standard deviation of init=normal
    weights: str | None = None  # a local file to start from (e.g. an earlier run's best.pt)


@dataclass
class SimpleCNNConfig(ModelConfig):
    _target_: str = "cnnlab.models.simplecnn.SimpleCNN"
    name: str = "simplecnn"
    channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    batch_norm: bool = True
    dropout: float = 0.0
    fc: list[int] = field(default_factory=list)
    pool_first: bool = True
    convs: int = 1  # 3x3 convolutions per stage
    whiten: int = 0  # patch size of a whitening first layer fitted to the training data; 0: none
    activation: str = "relu"  # relu | leaky_relu | elu | silu | gelu | sigmoid | tanh
    init: str = "default"  # default (PyTorch's) | kaiming | xavier | orthogonal | normal
    init_std: float = 0.01  # the standard deviation of init=normal
    whiten_bias_epochs: int | None = None  # train the whitening layer's bias this many epochs; null: all
    bn_momentum: float = 0.1  # BatchNorm running statistics: new = (1 - m) * old + m * batch (torch's m)
    logit_scale: float = 1.0  # multiply the logits by this (airbench: 1/9)
    weights: str | None = None  # a local file to start from (e.g. an earlier run's best.pt)


@dataclass
class ResNet18Config(ModelConfig):
    _target_: str = "cnnlab.models.resnet.ResNet18"
    name: str = "resnet18"
    stem: str = "auto"  # auto | imagenet | cifar
    weights: str | None = None  # a local file; nothing is downloaded


@dataclass
class TorchvisionConfig(ModelConfig):
    _target_: str = "cnnlab.models.tv.TorchvisionNet"
    name: str = "torchvision"
    arch: str = "resnet18"  # any name of torchvision.models.list_models(module=torchvision.models)
    stem: str = "auto"  # auto | imagenet | cifar (ResNet families only)
    weights: str | None = None  # a local file, or a name of torchvision's weights (DEFAULT, IMAGENET1K_V1)
    input_size: int | None = None  # the size the network sees; null: the images', raised to its minimum


@dataclass
class TimmConfig(ModelConfig):
    _target_: str = "cnnlab.models.timm_net.TimmNet"
    name: str = "timm"
    arch: str = "resnet18"  # any name of timm.list_models()
    weights: str | None = None  # a local file, or a pretrained tag (DEFAULT, a1_in1k, ...)
    input_size: int | None = None  # the size the network sees; null: the images'


@dataclass
class LossConfig:
    name: str = MISSING
    label_smoothing: float = 0.0
    class_weights: Any = None  # null | auto (inverse class frequency of the training split) | [w1, ...]


@dataclass
class CrossEntropyConfig(LossConfig):
    name: str = "cross_entropy"


@dataclass
class FocalConfig(LossConfig):
    name: str = "focal"
    gamma: float = 2.0  # focusing: (1 - p)^gamma down-weights easy examples; 0 is cross-entropy


@dataclass
class QuantizedConfig(ModelConfig):
    """An int8 model written by ``cnnlab compress method=quantize`` (not trained directly)."""

    _target_: str = "cnnlab.models.quantized.QuantizedModel"
    name: str = "quantized"
    base: str = "simplecnn"  # the float architecture, a model name
    base_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimizerConfig:
    _target_: str = MISSING
    name: str = MISSING
    lr: float = 1e-3
    weight_decay: float = 0.0
    decay_bias_norm: bool = False  # also decay biases and normalisation weights (off, as is usual)
    backbone_lr_mult: float = 1.0  # learning rate of the pretrained part (model.weights) x this
    bias_lr_mult: float = 1.0  # lr of biases and normalisation weights, as a multiple of lr
    implementation: str = "auto"  # auto (fused where torch has it, else foreach) | fused | foreach | for_loop


@dataclass
class SGDConfig(OptimizerConfig):
    _target_: str = "torch.optim.SGD"
    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    dampening: float = 0.0


@dataclass
class AdamConfig(OptimizerConfig):
    _target_: str = "torch.optim.Adam"
    name: str = "adam"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class AdamWConfig(AdamConfig):
    _target_: str = "torch.optim.AdamW"
    name: str = "adamw"
    weight_decay: float = 0.01


@dataclass
class AdagradConfig(OptimizerConfig):
    _target_: str = "torch.optim.Adagrad"
    name: str = "adagrad"
    lr: float = 0.01
    lr_decay: float = 0.0
    eps: float = 1e-10


@dataclass
class RMSpropConfig(OptimizerConfig):
    _target_: str = "torch.optim.RMSprop"
    name: str = "rmsprop"
    lr: float = 0.001
    alpha: float = 0.99
    momentum: float = 0.0
    eps: float = 1e-8


@dataclass
class SchedulerConfig:
    name: str = "none"
    warmup_epochs: float = 0.0
    warmup_steps: int = 0
    warmup_start_factor: float = 0.1
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class AdversarialConfig:
    """Adversarial training: a share of every batch replaced by FGSM or PGD examples of the model."""

    method: str = "none"  # none | fgsm | pgd
    eps: float = 0.03  # L-infinity budget in pixel units of [0, 1] images (8/255 = 0.031)
    steps: int = 7  # pgd: signed-gradient steps after a random start in the ball
    step_size: float | None = None  # pgd, pixel units; null: 2.5 * eps / steps
    fraction: float = 0.5  # share of each batch replaced by its adversarial examples


@dataclass
class AugmentationConfig:
    name: str = "none"  # none | basic | standard | strong
    flip: bool | None = None  # None: flip RGB images only (digits and letters must not be mirrored)
    crop_padding: int = 4
    rotation: float = 15.0
    translate: float = 0.1
    scale: list[float] = field(default_factory=lambda: [0.9, 1.1])
    shear: float = 10.0
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    gaussian_noise: float = 0.0
    salt_pepper: float = 0.0
    erasing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)


@dataclass
class PseudoLabelConfig:
    """Pseudo-labelling: unlabeled images the model labels confidently join the training split."""

    data: str | None = None  # null: off | test (the dataset's test split, labels unused) | <image folder>
    threshold: float = 0.9  # least softmax confidence for an image to join
    start_epoch: int = 3  # the first round runs after this epoch
    rounds: int = 1  # rounds after epochs start_epoch, start_epoch + 1, ...: each labels the pool anew


@dataclass
class LookaheadConfig:
    """Every ``every`` optimizer steps pull the weights to a slow copy: ``slow += a * (weights - slow)``,
    weights = slow, with ``a = 1 - (1 - alpha) * progress ** power`` (see cnnlab.engine.lookahead)."""

    every: int = 0  # optimizer steps between updates; 0: off
    alpha: float = 0.5  # the slow copy's step towards the weights at the end of the run
    power: float = 0.0  # 0: alpha throughout; 3: from 1 down to alpha, cubically (airbench)
    start_epoch: int = 0  # epochs before the slow copy starts


@dataclass
class TrainerConfig:
    max_epochs: int = 10
    max_steps: int | None = None  # stop after this many optimizer steps (ends the last epoch early)
    batch_size: int = 128
    eval_batch_size: int = 1000
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto | 32 | bf16 | 16
    channels_last: bool | None = None  # None: on for models with convolutions
    # torch.compile the model in place: false | true (= default) | default | reduce-overhead (CUDA graphs)
    # | max-autotune | max-autotune-no-cudagraphs (no gain measured on CPUs, 5-40 s compile)
    compile: Any = False
    # auto: time the candidate counts (up to the CPUs this process may use) on the first steps, keep the
    # fastest, time again when the step time drifts (cnnlab.engine.threads) | a whole number: that many
    threads: Any = "auto"
    backend: str = "auto"  # under torchrun: auto (nccl on CUDA, gloo on CPU) | nccl | gloo
    sync_batchnorm: bool = False  # under torchrun on CUDA: BatchNorm statistics over the global batch
    monitor: str = "val_acc"  # val_acc | val_loss | val_macro_f1 | val_balanced_acc
    mode: str = "max"  # max | min
    patience: int | None = 3  # epochs without improvement before stopping; null disables
    min_delta: float = 0.0
    grad_clip: float | None = None  # clip the gradient norm to this (the norm is logged)
    label_smoothing: float = 0.0  # deprecated: loss.label_smoothing
    freeze_epochs: int = 0  # with model.weights: train only the new head for this many epochs, then all
    accumulate: int = 1  # micro-batches per optimizer step: an effective batch of accumulate*batch_size
    ema: float | None = None  # decay of an exponential moving average of the weights, e.g. 0.999
    lookahead: LookaheadConfig = field(default_factory=LookaheadConfig)
    tta: str | None = (
        None  # test-time augmentation in validation and test: null | flip | flip_translate | <n>
    )
    limit_train_batches: int | None = None
    limit_eval_batches: int | None = None
    overfit_batches: int | None = None  # train on this many fixed batches and validate on them
    detect_anomaly: bool = False
    deterministic: bool = False
    tensorboard: bool = True
    progress: str = "auto"  # auto | rich | plain
    evaluate: bool = True  # evaluate the best weights on the test split at the end
    report: bool = True  # with evaluate: also write report/ (curves, confusion matrix; seconds of plotting)
    summary: bool = False  # print a layer table with output shapes and parameter counts
    swa_start: int | None = None  # average the weights of the epochs from this one on (SWA); null: off
    epoch_checkpoints: bool = False  # also keep each epoch's weights: checkpoints/epoch_<n>.safetensors
    pseudo_label: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)


@dataclass
class CsvLoggerConfig:
    """metrics.csv, one row per epoch: the run folder's own record (resume, runs, curves read it)."""


@dataclass
class TensorBoardLoggerConfig:
    """Event files in ``<run>/tb`` (also off with ``trainer.tensorboard=false``)."""


@dataclass
class MlflowLoggerConfig:
    tracking_uri: str | None = None  # null: sqlite:///<the folder holding the run>/mlflow.db
    experiment: str = "cnnlab"
    checkpoint: bool = True  # log checkpoints/best.safetensors as an artifact at the end


@dataclass
class WandbLoggerConfig:
    project: str = "cnnlab"
    entity: str | None = None
    mode: str | None = None  # null: $WANDB_MODE if set, else offline | online | offline | disabled
    checkpoint: bool = True  # log checkpoints/best.safetensors as a model artifact at the end


@dataclass
class LoggerConfig:
    """Where a run's numbers go: ``logger=[csv,tensorboard]`` by default; a node is there when chosen."""

    csv: CsvLoggerConfig | None = None
    tensorboard: TensorBoardLoggerConfig | None = None
    mlflow: MlflowLoggerConfig | None = None
    wandb: WandbLoggerConfig | None = None


SLURM_DEFAULTS = {"partition": None, "time": 240, "cpus_per_task": None, "gpus_per_node": None, "mem": None}


@dataclass
class TuneConfig:
    """``cnnlab tune``: an Optuna study whose trials are cnnlab runs (see conf/tune.yaml)."""

    # override key -> search space in Hydra's sweep syntax: choice(..), interval(..), range(..), tag(log, ..)
    params: dict[str, str] = field(default_factory=dict)
    n_trials: int = 20  # trials this command runs (a continued study runs as many more)
    timeout: float | None = None  # seconds after which no new trial starts
    sampler: str = "tpe"  # tpe | random | gp | qmc
    seed: int = 0  # the sampler's seed
    pruner: str = "median"  # median | hyperband | none
    startup_trials: int = 5  # trials sampled at random before the sampler models them, and before pruning
    warmup_epochs: int = 0  # epochs of a trial the median pruner waits before judging it
    direction: str = "auto"  # auto (maximize if trainer.mode is max) | maximize | minimize
    n_jobs: int = 1  # trials at once, each in its own process
    # the study folder; a folder that holds a study continues it
    dir: str = "multirun/${now:%Y-%m-%d}/${now:%H-%M-%S-%f}"
    report: bool = False  # write the optimisation history, parameter importances and intermediate values
    # where the study lives: null (SQLite in tune.dir), an SQLAlchemy URL (postgresql://user@host/db) or a
    # journal file (journal:<path>, <path>.log) that workers on several machines share
    storage: str | None = None
    study: str = "cnnlab"  # the study's name in tune.storage: workers given the same one join it
    launcher: str = "local"  # local (tune.n_jobs processes here) | slurm (one Slurm job per worker)
    # launcher=slurm: each worker job's parameters (submitit's SlurmExecutor ones; null: Slurm's default;
    # others with +tune.slurm.<name>=..., e.g. +tune.slurm.account=lab)
    slurm: dict[str, Any] = field(default_factory=lambda: dict(SLURM_DEFAULTS))


@dataclass
class TrainConfig:
    dataset: DatasetConfig = MISSING
    model: ModelConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    loss: LossConfig = MISSING
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    tune: TuneConfig | None = None  # cnnlab tune's study settings (conf/tune/ presets); a run ignores them
    seed: int = 42
    resume: str | None = None  # a run directory (or auto) to continue from its checkpoints/last.pt
    trust_config: bool = False  # resume: replay stored overrides / a config that name code off the allow-list


@dataclass
class LrFindConfig:
    """``cnnlab lr_find``'s own options (the learning-rate range test); the rest of its config is train's."""

    start_lr: float = 1e-7
    end_lr: float = 10.0
    steps: int = 200  # optimizer steps from start_lr to end_lr (exponentially spaced)
    diverge: float = 4.0  # stop once the smoothed loss exceeds this times its minimum
    smoothing: float = 0.98  # of the loss's exponential moving average (debiased); 0: the raw loss
    rule: str = "steepest"  # how the suggestion is read off the smoothed curve: steepest | valley | minimum
    out: str = "lr_find.png"


@dataclass
class DataCommandConfig:
    """``cnnlab data <action> dataset=...``."""

    dataset: DatasetConfig = MISSING
    action: str = "verify"


@dataclass
class VizKernelsConfig:
    custom: Any = None  # a 3x3 or 5x5 list of lists of numbers


@dataclass
class VizConfig:
    """``cnnlab viz <what> run=<dir>``; dataset and augmentation are for ``viz augment`` without a run."""

    dataset: DatasetConfig = MISSING
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    what: str | None = None
    run: str | None = None
    ckpt: str | None = None
    data_root: str | None = None
    device: str = "auto"
    trust_config: bool = False
    image: Any = None  # an index into the test split, an image file, or a list of them
    only: str = "all"  # all | wrong
    count: int | None = None
    n: int = 1000
    perplexity: float = 30.0
    seed: int = 0
    augment: bool = False  # embeddings: clean and augmented views of the same images together
    layer: str | None = None  # gradcam: the module whose output is explained (default: the last conv)
    smoothgrad: int = 0  # saliency: noisy copies averaged (SmoothGrad); 0 for plain gradients
    noise: float = 0.15  # saliency with smoothgrad: noise std as a fraction of each image's value range
    kernels: VizKernelsConfig = field(default_factory=VizKernelsConfig)
    out: str | None = None
    tensorboard: bool = True


@dataclass
class RunsConfig:
    """``cnnlab runs DIR``."""

    dir: str = MISSING
    csv: bool = True
    html: bool = False  # DIR/runs.html: the table, overlaid curves, links to each run's page


@dataclass
class StudentConfig:
    model: str | None = None  # a model name (lenet, mlp, simplecnn, resnet18); null: the teacher's
    options: dict[str, Any] = field(default_factory=dict)  # its options: +student.options.channels=[8,16]


@dataclass
class CompressConfig:
    """``cnnlab compress run=<dir> method=prune|quantize|distill``."""

    run: str | None = None
    method: str | None = None  # prune | quantize | distill
    out: str | None = None  # the new run folder; null: <run>-<method> beside the run (-2, -3, ... if taken)
    amount: float = 0.5  # prune: the share of weights (structured: of each convolution's filters) removed
    structured: bool = False  # prune: false: global magnitude over all weights; true: L1 channel pruning
    finetune_epochs: int = 1  # prune: epochs of training afterwards (0: none), at constant lr
    lr: float | None = None  # prune: null: a tenth of the run's optimizer.lr; distill: null: the run's
    calibration: int = 512  # quantize: training images that set the activation ranges
    student: StudentConfig = field(default_factory=StudentConfig)  # distill
    temperature: float = 4.0  # distill: softmax temperature of the soft targets
    alpha: float = 0.9  # distill: weight of the soft-target loss (1 - alpha: cross-entropy with the labels)
    epochs: int | None = None  # distill: null: the teacher's trainer.max_epochs
    repeats: int = 50  # latency: timed single-image forward passes per model (the median is reported)
    threads: int = 1  # latency: CPU threads
    compile: bool = False  # latency: torch.compile both models first (int8 kernels need it)
    data_root: str | None = None
    trust_config: bool = False


SCHEMAS: dict[str, dict[str, type]] = {
    "dataset": {"base": DatasetConfig},
    "model": {
        "mlp": MLPConfig,
        "lenet": LeNetConfig,
        "simplecnn": SimpleCNNConfig,
        "resnet18": ResNet18Config,
        "torchvision": TorchvisionConfig,
        "timm": TimmConfig,
        "quantized": QuantizedConfig,
    },
    "optimizer": {
        "sgd": SGDConfig,
        "adam": AdamConfig,
        "adamw": AdamWConfig,
        "adagrad": AdagradConfig,
        "rmsprop": RMSpropConfig,
    },
    "loss": {"cross_entropy": CrossEntropyConfig, "focal": FocalConfig},
    "scheduler": {"base": SchedulerConfig},
    "augmentation": {"base": AugmentationConfig},
    "trainer": {"base": TrainerConfig},
}


def register_configs() -> None:
    """Store the schemas so YAML files can extend them (``defaults: [/schema/model/lenet@_here_]``)."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="data_schema", node=DataCommandConfig)
    cs.store(name="lr_find_schema", node=LrFindConfig)
    cs.store(name="viz_schema", node=VizConfig)
    cs.store(name="runs_schema", node=RunsConfig)
    cs.store(name="compress_schema", node=CompressConfig)
    for group, options in SCHEMAS.items():
        for name, node in options.items():
            cs.store(group=f"schema/{group}", name=name, node=node)


CHOICES = {
    ("trainer", "precision"): ("auto", "32", "bf16", "16"),
    ("optimizer", "implementation"): ("auto", "fused", "foreach", "for_loop"),
    ("trainer", "monitor"): ("val_acc", "val_loss", "val_macro_f1", "val_balanced_acc"),
    ("trainer", "mode"): ("max", "min"),
    ("trainer", "progress"): ("auto", "rich", "plain"),
    ("dataset", "on_bad_image"): ("error", "skip"),
}

SUBMISSION_CHOICES = {"id_source": ("stem", "index1", "index0"), "label_as": ("name", "index")}

POSITIVE = {
    "optimizer": ("lr", "bias_lr_mult"),
    "trainer": ("max_epochs", "batch_size", "eval_batch_size", "accumulate"),
    "dataset": ("channels", "image_size"),
}


def validate(cfg: DictConfig) -> None:
    """Check what the schema's types cannot; raise ConfigError with one clear sentence."""
    check_all_numbers(cfg)
    for group, keys in POSITIVE.items():
        for key in keys:
            value = cfg[group][key]
            if value is None or not 0 < value < math.inf:
                raise ConfigError(f"{group}.{key} must be greater than 0, got {value}.")
    check_optimizer(cfg.optimizer)
    for (group, key), allowed in CHOICES.items():
        value = str(cfg[group][key])
        if value not in allowed:
            raise ConfigError(f"Unknown {group}.{key} '{value}'; choose one of: {', '.join(allowed)}.")
    check_submission(cfg.dataset.submission)
    check_loggers(cfg.logger)
    split = cfg.dataset.val_split
    if not 0 < split < 1:
        raise ConfigError(f"dataset.val_split must be between 0 and 1 (exclusive), got {split}.")
    for key in (
        "patience",
        "limit_train_batches",
        "limit_eval_batches",
        "overfit_batches",
        "max_steps",
    ):
        value = cfg.trainer[key]
        if value is not None and value < (0 if key == "patience" else 1):
            raise ConfigError(f"trainer.{key} must be a positive number or null, got {value}.")
    if cfg.trainer.min_delta < 0:
        raise ConfigError(f"trainer.min_delta must be 0 or more, got {cfg.trainer.min_delta}.")
    if not 0 <= cfg.trainer.label_smoothing < 1:
        raise ConfigError(f"trainer.label_smoothing must be in [0, 1), got {cfg.trainer.label_smoothing}.")


WANDB_MODES = ("online", "offline", "disabled")


def check_loggers(logger: DictConfig) -> None:
    """metrics.csv stays (resume, runs and the curves read it); an extra's package must be installed."""
    if logger.csv is None:
        raise ConfigError(
            "logger must include csv: metrics.csv is the run's own record (resume, cnnlab runs and the "
            "curves read it); e.g. logger=[csv,tensorboard,mlflow]."
        )
    mode = logger.wandb.mode if logger.wandb is not None else None
    if mode is not None and mode not in WANDB_MODES:
        raise ConfigError(f"Unknown logger.wandb.mode '{mode}'; choose one of: {', '.join(WANDB_MODES)}.")
    for name in ("mlflow", "wandb"):
        if logger[name] is not None and importlib.util.find_spec(name) is None:
            raise ConfigError(
                f"logger {name} needs the {name} package, which is not installed: "
                f"pip install 'cnnlab[{name}]' (or drop {name} from logger)."
            )


def check_submission(sub: DictConfig) -> None:
    """``dataset.submission`` choices, checked at train time and again by predict (after overrides)."""
    for key, allowed in SUBMISSION_CHOICES.items():
        if str(sub[key]) not in allowed:
            raise ConfigError(
                f"Unknown dataset.submission.{key} '{sub[key]}'; choose one of: {', '.join(allowed)}."
            )


INT64 = 2**63  # torch and numpy take seeds, counts and sizes as 64-bit integers

# Optimizer options and the values torch accepts or that make sense (a momentum above 1 diverges):
# option -> (test, what the test asks for).
OPTIMIZER_RANGES = {
    "momentum": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "dampening": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "alpha": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "eps": (lambda v: 0 < v < math.inf, "greater than 0"),
    "weight_decay": (lambda v: 0 <= v < math.inf, "0 or more"),
    "lr_decay": (lambda v: 0 <= v < math.inf, "0 or more"),
}


def resolved(cfg: DictConfig) -> dict:
    """The config as plain data with every ``${...}`` resolved; one that cannot be (an unset
    ``${oc.env:VAR}``, a key that does not exist) is a ConfigError naming the option."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except InterpolationResolutionError as exc:
        reason = str(exc).splitlines()[0].split("resolving interpolation: ")[-1].strip('"')
        raise ConfigError(
            f"{exc.full_key} could not be resolved ({reason}); set what it refers to, or give "
            f"{exc.full_key} a value."
        ) from None


def check_all_numbers(cfg: DictConfig) -> None:
    """:func:`check_numbers` over a whole composed config (any command's), its ``${...}`` resolved; a
    refused value's message offers the schema's default as the way out where there is one."""

    def default_of(where: str):
        parent, _, key = where.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        found = field_kind(OmegaConf.get_type(node), key) if isinstance(node, DictConfig) else None
        return None if found is None else found[1]

    check_numbers(resolved(cfg), default_of=default_of)


def check_numbers(node, path: str = "", *, default_of=lambda where: None) -> None:
    """Every whole number fits in 64 bits (``seed=99999999999999999999`` would fail deep in torch), and
    every float anywhere (free-form nodes such as ``scheduler.options`` too) is finite: a ``nan`` compares
    false with everything, so ``trainer.min_delta=nan`` would silently stop every epoch counting as best."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        where = f"{path}.{key}" if path and isinstance(key, str) else f"{path}[{key}]" if path else str(key)
        if isinstance(value, int) and not isinstance(value, bool) and not -INT64 <= value < INT64:
            raise ConfigError(
                f"{where}={str(value)[:24]}{'...' if len(str(value)) > 24 else ''} is too large; whole "
                f"numbers must lie between -2**63 and 2**63 - 1."
            )
        if isinstance(value, float) and not math.isfinite(value):
            default = default_of(where)
            example = (
                f"e.g. {where}={default} (its default)" if default is not None else "or drop the override"
            )
            raise ConfigError(
                f"{where}={value} is not a finite number; every number option must be finite (not nan or "
                f"inf): give {where} a finite value, {example}."
            )
        check_numbers(value, where, default_of=default_of)


def check_optimizer(opt: DictConfig) -> None:
    """Ranges of the optimizer options present (momentum, dampening, alpha, eps, decays, betas)."""
    for key, (ok, wanted) in OPTIMIZER_RANGES.items():
        value = opt.get(key)
        if value is not None and not (_is_number(value) and ok(value)):
            raise ConfigError(f"optimizer.{key} must be {wanted}, got {value}.")
    betas = opt.get("betas")
    if betas is not None:
        betas = list(betas) if OmegaConf.is_list(betas) else [betas]
        if len(betas) != 2 or not all(_is_number(b) and 0 <= b < 1 for b in betas):
            raise ConfigError(f"optimizer.betas must be two numbers in [0, 1), got {betas}.")


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def override_quoted(text: str) -> str:
    """``text`` as a quoted value of Hydra's override grammar that reads back exactly: any letter (``rün``,
    ``數據``, spaces), quotes, a trailing backslash, and ``${`` (left as text, not interpolated). In Hydra's
    quoted strings a backslash escapes only a quote or the string's end, so only those runs are doubled."""
    escaped = re.sub(r"(\\+)(?='|$)", lambda m: m[1] * 2, text)
    return "'" + escaped.replace("'", "\\'").replace("${", "\\${") + "'"


KINDS = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "text"}


def field_kind(schema: type, key: str) -> tuple[str, Any] | None:
    """What the schema ``schema`` wants for ``key`` in words (``a whole number or null``) and its default
    there (None when it has none); None when ``key`` is not one of its fields."""
    import dataclasses

    found = (
        next((f for f in dataclasses.fields(schema) if f.name == key), None) if is_schema(schema) else None
    )
    if found is None:
        return None
    type_name = str(found.type).replace(" ", "")
    words = [KINDS[t] for t in type_name.split("|") if t in KINDS]
    if not words:
        return None
    kind = " or ".join(words) + (" or null" if "None" in type_name.split("|") else "")
    default = None if found.default is dataclasses.MISSING else found.default
    return kind, default


def is_schema(kind) -> bool:
    import dataclasses

    return isinstance(kind, type) and dataclasses.is_dataclass(kind)


def options_with(group: str, key: str) -> list[str]:
    """The options of config group ``group`` (model, optimizer, loss) whose schema has ``key``."""
    return [name for name, schema in SCHEMAS.get(group, {}).items() if key in schema.__dataclass_fields__]
