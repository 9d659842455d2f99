"""English text that ships with every Python: the language reference's topics (``pydoc_data``), the
standard library's docstrings (read from its source files, nothing imported) and the licence texts
of ``/usr/share/common-licenses`` where the system has them. About 2.6 M characters, 1.1 M
WordPiece tokens: enough for a store of a million token activations with no download."""

from __future__ import annotations

import ast
import sysconfig
from pathlib import Path

LICENCES = Path("/usr/share/common-licenses")
SKIP_PARTS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "idlelib", "turtledemo"}
SOURCE = "pydoc_data.topics, the standard library's docstrings, /usr/share/common-licenses"
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
    return texts


def english_text() -> str:
    """``english_texts`` joined into one text, each part after a blank line."""
    return "\n\n".join(text for _, text in english_texts())
