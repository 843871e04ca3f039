"""A config read from disk is plain data: the one loader for every stored config.

A run folder's ``.hydra/config.yaml``, a checkpoint's record, a ``best.safetensors`` header and a
study's base config may come from anyone. Each is read here, and only here, in three steps:

1. ``yaml.safe_load`` (or JSON) into plain Python values: no resolver, no interpolation, no tag;
2. :func:`check_plain`: only mappings with string keys, lists, strings, numbers, booleans and null;
   a ``${`` anywhere (a key or a value) is refused, and so is every Hydra instantiation key
   (``_target_``, ``_args_``, ``_partial_``, ``_recursive_``, ``_convert_``) except the two
   ``_target_`` entries cnnlab writes itself (``model`` and ``optimizer``), which must name a class of
   cnnlab's registries (:mod:`cnnlab.models.registry`) and are then replaced by the registry's own value;
3. :func:`typed`: merged onto the structured schema (:mod:`cnnlab.config`), so an unknown key or a value
   of the wrong type is refused with one line naming the key and the file.

Only then is a ``DictConfig`` made, from values in which no ``${`` can stand, so no resolver can run
when code reads it. Nothing here imports a class a config names.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from cnnlab.config import SCHEMAS, ModelConfig, TrainConfig
from cnnlab.errors import ConfigError
from cnnlab.models.registry import model_target, optimizer_target

HYDRA_KEYS = ("_target_", "_args_", "_partial_", "_recursive_", "_convert_")
BUILT = ("model", "optimizer")  # the nodes whose _target_ cnnlab itself writes (and maps by registry)
MAX_DEPTH = 32  # a cnnlab config is 4 levels deep; far deeper is not a config
MAX_NODES = 100_000  # YAML aliases can make a small file a huge tree ("billion laughs")
PLAIN = (str, int, float, bool, type(None))
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's when built: the same values, faster


def read_yaml(text: str, source: Path | str) -> dict:
    """The mapping a stored YAML text holds, as plain values (a ``ConfigError`` naming ``source``)."""
    try:
        data = yaml.load(text, Loader=SAFE_LOADER)  # noqa: S506 - a safe loader: plain values only
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"The config in {source} is not valid YAML{at}; it is damaged.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"The config in {source} is not a cnnlab config (not a mapping of options).")
    return data


def check_plain(node, source: Path | str, path: str = "", *, _count: list | None = None) -> None:
    """Refuse anything but plain values, any ``${``, and Hydra's instantiation keys (one line)."""
    count = _count if _count is not None else [0]
    count[0] += 1
    if count[0] > MAX_NODES or path.count(".") + path.count("[") > MAX_DEPTH:
        raise ConfigError(f"The config in {source} is far larger or deeper than a cnnlab config; refused.")
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if not isinstance(key, str):
                raise ConfigError(f"{source}: the key {where!r} is not a name; the config is damaged.")
            if "${" in key:
                raise _refused(source, where, "a key with ${")
            if key in HYDRA_KEYS and not (key == "_target_" and path in BUILT):
                raise _refused(source, where, f"Hydra's {key}")
            check_plain(value, source, where, _count=count)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_plain(value, source, f"{path}[{i}]", _count=count)
    elif not isinstance(node, PLAIN):
        raise ConfigError(f"{source}: {path} is a {type(node).__name__}, not a plain value; refused.")
    elif isinstance(node, str) and ("${" in node or node == "???"):
        raise _refused(source, path, "an interpolation (${...})" if "${" in node else "'???'")


def _refused(source: Path | str, where: str, what: str) -> ConfigError:
    return ConfigError(
        f"The config in {source} holds {what} at {where}; a stored config is data, and cnnlab reads "
        "no interpolation, resolver or class name from it. Use the files cnnlab wrote."
    )


def plain_config(data: dict, source: Path | str, *, trust: bool = False) -> dict:
    """``data`` checked (:func:`check_plain`), with ``model._target_`` and ``optimizer._target_`` set
    from cnnlab's registries by name (a stored one must agree unless ``trust``: then it is ignored)."""
    check_plain(data, source)
    out = dict(data)
    for group, target_of in (("model", model_target), ("optimizer", optimizer_target)):
        node = out.get(group)
        if not isinstance(node, dict):
            raise ConfigError(f"The config in {source} has no {group} section; it is not a cnnlab config.")
        out[group] = {**node, "_target_": target_of(node, source, trust=trust)}
    return out


def typed(data: dict, source: Path | str) -> DictConfig:
    """Plain, checked ``data`` merged onto the train schema: unknown keys and wrong types refused.

    A key the stored config lacks takes its default (an option added to cnnlab after the run); a run
    from before the logger list logged to CSV and TensorBoard. A model from an installed plugin (no
    schema of cnnlab's) keeps its own options, checked plain.
    """
    data = data if "logger" in data else {**data, "logger": {"csv": {}, "tensorboard": {}}}
    cfg = OmegaConf.structured(TrainConfig)
    try:
        cfg.model = _model_node(data["model"])
        for group in ("optimizer", "loss"):
            node = data.get(group) or {}
            schema = SCHEMAS[group].get(str(node.get("name", "cross_entropy" if group == "loss" else "")))
            if schema is not None:
                setattr(cfg, group, OmegaConf.structured(schema))
        return OmegaConf.merge(cfg, data)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        reason = str(exc).splitlines()[0]
        raise ConfigError(
            f"The config in {source} does not fit cnnlab's schema at {key} ({reason}); it is damaged."
        ) from None


def _model_node(node: dict) -> DictConfig:
    """The schema of a stored ``model`` node: its name's, or for a class an installed plugin registers
    (its ``_target_`` is not the name's own), the base schema with the plugin's own options."""
    schema = SCHEMAS["model"].get(str(node.get("name")))
    if schema is not None and node.get("_target_") == schema._target_:
        return OmegaConf.structured(schema)
    plugin = OmegaConf.structured(ModelConfig)
    with open_dict(plugin):
        plugin.merge_with(node)
    return plugin


def stored_config(text: str | dict, source: Path | str, *, trust: bool = False) -> DictConfig:
    """The one way to turn a stored config (YAML text, or plain data from JSON) into a ``DictConfig``."""
    data = read_yaml(text, source) if isinstance(text, str) else text
    return typed(plain_config(data, source, trust=trust), source)


def stored_json(text: str, source: Path | str) -> object:
    """A JSON value from a stored attribute (a study's), refused in one line when it is not JSON."""
    try:
        return json.loads(text)
    except (TypeError, json.JSONDecodeError):
        raise ConfigError(f"{source} holds a value that is not JSON; it is damaged.") from None
