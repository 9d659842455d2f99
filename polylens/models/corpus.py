"""English text that ships with every Python: the language reference's topics (``pydoc_data``), the
standard library's docstrings (read from its source files, nothing imported), the licence texts of
``/usr/share/common-licenses`` where the system has them, then the standard library's comment lines
(its test suite's too) that read as prose. On Python 3.11 with Debian's licences: 4.8 M characters,
about 1.2 M WordPiece tokens (MiniLM's tokenizer), enough for a store of a million token
activations with no download; the docstrings and licences alone are 2.4 M characters, 0.6 M tokens."""

from __future__ import annotations

import ast
import re
import sysconfig
from pathlib import Path

LICENCES = Path("/usr/share/common-licenses")
SKIP_PARTS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "idlelib", "turtledemo"}
SOURCE = (
    "pydoc_data.topics, the standard library's docstrings, /usr/share/common-licenses, "
    "the standard library's prose comment lines"
)
_COMMENT = re.compile(r"^[ \t]*#[ ]?(.*)$", re.M)  # a whole-line comment
_PROSE = re.compile(r"[A-Za-z]{3,} [A-Za-z]{2,}")  # two words in a row: prose, not commented-out code or rules
NAME = "corpus:english"  # how a command's --input names this text


def _docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return []
    nodes = (
        n for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
    )
    return [doc for doc in map(ast.get_docstring, nodes) if doc and doc.strip()]


def english_texts() -> list[tuple[str, str]]:
    """``[(name, text)]`` in a fixed order: each pydoc topic, each stdlib module's docstrings joined
    (module, classes, functions, as they appear), then each licence file."""
    from pydoc_data.topics import topics

    texts = [(f"pydoc:{name}", topics[name]) for name in sorted(topics)]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        if SKIP_PARTS.isdisjoint(path.relative_to(stdlib).parts):
            docs = _docstrings(path)
            if docs:
                texts.append((f"stdlib:{path.relative_to(stdlib).as_posix()}", "\n\n".join(docs)))
    if LICENCES.is_dir():
        for path in sorted(p for p in LICENCES.iterdir() if p.is_file()):
            texts.append((f"licence:{path.name}", path.read_text(encoding="utf-8", errors="replace")))
    for path in sorted(stdlib.rglob("*.py")):  # last, so the text before stays as it was without them
        if {"site-packages", "dist-packages"}.isdisjoint(path.relative_to(stdlib).parts):
            lines = _comments(path)
            if lines:
                texts.append((f"comments:{path.relative_to(stdlib).as_posix()}", "\n".join(lines)))
    return texts


def _comments(path: Path) -> list[str]:
    """The whole-line comments of a source file that hold two words in a row (the ``#`` dropped)."""
    try:
        source = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return []
    return [line.rstrip() for line in _COMMENT.findall(source) if _PROSE.search(line)]


def english_text() -> str:
    """``english_texts`` joined into one text, each part after a blank line."""
    return "\n\n".join(text for _, text in english_texts())
