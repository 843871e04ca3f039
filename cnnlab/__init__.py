"""cnnlab: a configuration-driven CLI that trains image classifiers."""

__version__ = "0.1.0"
