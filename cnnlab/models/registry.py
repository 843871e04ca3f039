"""The classes cnnlab builds, by name: its own models, installed plugins' models, torch's optimizers.

A config names its model and optimizer with ``name`` (``model.name: lenet``); the ``_target_`` that
Hydra's schemas carry is cnnlab's own string for that name. A stored config's ``_target_`` is only ever
compared with these registries (:mod:`cnnlab.run.stored`), never imported: a class is found here by a
dictionary lookup, or by loading an entry point of the ``cnnlab.models`` group (installing a package is
the user's choice). The one class a string may import is a ``_target_`` typed on the current command line
(``cnnlab train model._target_=mypkg.MyNet``), which :func:`typed_class` does.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import inspect
from functools import cache
from pathlib import Path

from cnnlab.config import SCHEMAS
from cnnlab.errors import ConfigError

ENTRY_POINTS = "cnnlab.models"  # group under which an installed package may register model classes
LEGACY_MODEL_TARGETS = {"cnnlab.models.resnet.ResNet18": "resnet18"}  # runs from before the schemas changed
PLUGIN_HINT = 'register it under the "cnnlab.models" entry point group of an installed package'


@cache
def own_models() -> dict[str, str]:
    """cnnlab's model names and the class each builds (``module.Class``, cnnlab's own strings)."""
    return {name: schema._target_ for name, schema in SCHEMAS["model"].items()}


@cache
def plugins() -> dict[str, md.EntryPoint]:
    """Installed plugins' models by ``module.Class`` (the entry point's value) and by entry point name."""
    found = {}
    for ep in md.entry_points(group=ENTRY_POINTS):
        found[ep.value.replace(":", ".")] = ep
        found.setdefault(ep.name, ep)
    return found


@cache
def optimizers() -> dict[str, type]:
    """``torch.optim.<Class>`` -> the class, for every optimizer class torch.optim has."""
    import torch.optim

    base = torch.optim.Optimizer
    return {
        f"torch.optim.{name}": obj
        for name, obj in vars(torch.optim).items()
        if inspect.isclass(obj) and issubclass(obj, base) and obj is not base
    }


def model_target(node: dict, source: Path | str, *, trust: bool = False) -> str:
    """The ``_target_`` a stored ``model`` node builds, from the registries (never the stored string).

    The stored ``_target_`` must be the class its ``name`` builds, a class an installed plugin
    registers, or (``trust``) it is ignored and the model is built by its name.
    """
    name, stored = str(node.get("name")), node.get("_target_")
    own = own_models().get(name)
    if own is not None and (stored in (None, own) or LEGACY_MODEL_TARGETS.get(str(stored)) == name):
        return own
    plugin = plugins().get(str(stored)) or (plugins().get(name) if stored is None else None)
    if plugin is not None:
        return plugin.value.replace(":", ".")
    if trust and own is not None:
        return own
    what = f"model._target_={stored}" if stored is not None else f"model.name={name}"
    hint = f"pass trust_config=true to build {name} by its name, or " if own is not None else ""
    raise ConfigError(
        f"The config in {source} names a model cnnlab does not build ({what}); {hint}{PLUGIN_HINT}."
    )


def optimizer_target(node: dict, source: Path | str, *, trust: bool = False) -> str:
    """The ``_target_`` a stored ``optimizer`` node builds: a ``torch.optim`` class, by name."""
    name, stored = str(node.get("name")), node.get("_target_")
    schema = SCHEMAS["optimizer"].get(name)
    own = schema._target_ if schema is not None else None
    if stored is None and own is not None:
        return own
    if stored in optimizers():
        return str(stored)
    if trust and own is not None:
        return own
    raise ConfigError(
        f"The config in {source} names an optimizer cnnlab does not build (optimizer._target_={stored}); "
        f"a stored optimizer must be a torch.optim class."
    )


def model_class(target: str):
    """The class a model ``_target_`` builds: cnnlab's, an installed plugin's, or one typed now."""
    if target in own_models().values():
        module, _, cls = target.rpartition(".")
        return getattr(importlib.import_module(module), cls)
    if target in plugins():
        return plugins()[target].load()
    return typed_class(target)


def optimizer_class(target: str):
    """The ``torch.optim`` class of ``target``, or the class typed on the command line."""
    return optimizers().get(target) or typed_class(target)


def typed_class(target: str):
    """A class named by a ``_target_`` typed on the current command line (never one read from disk:
    :mod:`cnnlab.run.stored` replaces every stored ``_target_`` with a registry's value)."""
    module, _, cls = target.rpartition(".")
    if not module:
        raise ConfigError(f"_target_={target} is not a module.Class name.")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"Cannot import {target}: {exc}.") from None
