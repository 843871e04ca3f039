"""Code-map figures for docs/layout.md: modules over 400 lines, functions over 60 lines, and the files
of the training story (cnnlab/train, engine, run, data) whose code names each training feature (names
and short string literals; comments and docstrings do not count).

    python scripts/layout_stats.py [root]      # root: a checkout (default: this one)
"""

from __future__ import annotations

import ast
import io
import re
import sys
import tokenize
from pathlib import Path

FEATURES = {  # what a feature's code is called
    "swa": r"swa|WeightAverage",
    "ema": r"\bema\b|ModelEMA|EmaPart",
    "pseudo-labels": r"pseudo",
    "lookahead": r"lookahead|Lookahead",
    "freezing": r"freeze|Freezer",
    "adversarial": r"adversar",
}
STORY = ("train", "engine", "run", "data")


def code_words(text: str) -> str:
    """The names and short string literals of a module, without comments and docstrings."""
    words = []
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.NAME or (tok.type == tokenize.STRING and len(tok.string) < 40):
            words.append(tok.string)
    return " ".join(words)


def main(root: Path) -> None:
    files = sorted((root / "cnnlab").rglob("*.py"))
    long_modules = [(len(f.read_text().splitlines()), f.relative_to(root)) for f in files]
    long_modules = sorted((n, f) for n, f in long_modules if n > 400)
    long_functions = []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > 60:
                    long_functions.append((n, f"{f.relative_to(root)}:{node.lineno} {node.name}"))
    story = [f for f in files if f.relative_to(root / "cnnlab").parts[0] in STORY]
    print(f"modules: {len(files)}, over 400 lines: {len(long_modules)}")
    for n, f in long_modules:
        print(f"  {n:5d} {f}")
    print(f"functions over 60 lines: {len(long_functions)}")
    for n, name in sorted(long_functions, reverse=True):
        print(f"  {n:5d} {name}")
    print("files of cnnlab/{train,engine,run,data} naming each feature:")
    for feature, pattern in FEATURES.items():
        named = [f for f in story if re.search(pattern, code_words(f.read_text()))]
        hits = [str(f.relative_to(root / "cnnlab")) for f in named]
        print(f"  {feature:14s} {len(hits):2d}  {' '.join(hits)}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]))
