"""Install hints install from the checkout: the name ``ablator`` on the package index belongs to
another project, so no message, docstring or doc may tell a user to ``pip install ablator`` (with
or without an extra, quoted or not, with ``-U``), and every hint for a missing extra comes from
:func:`ablator.errors.extra_hint`."""

from __future__ import annotations

import re
from pathlib import Path

from ablator.errors import extra_hint

ROOT = Path(__file__).resolve().parent.parent
# `pip install` followed by options, then ablator as the requirement (bare, quoted, with an extra or
# a version): the index's project, not this one. `pip install -e .` or a path is fine.
INDEX_ABLATOR = re.compile(r"""pip install(?:\s+-{1,2}[\w-]+)*\s+["']?ablator(?![\w./-])""")


def _texts() -> list[Path]:
    files = [ROOT / "README.md"]
    for folder in ("ablator", "docs", "examples"):
        files += [
            p
            for p in (ROOT / folder).rglob("*")
            if p.is_file()
            and p.suffix in {".py", ".md", ".sh", ".yaml", ".yml", ".txt", ".toml", ".js", ".html"}
        ]
    return files


def test_the_pattern_catches_every_spelling_of_the_index_package() -> None:
    bad = [
        "pip install ablator",
        "pip install 'ablator[serve]'",
        'pip install "ablator[tpe]"',
        "pip install ablator[s3]",
        "pip install -U 'ablator[s3]'",
        "python -m pip install --upgrade ablator==0.1",
    ]
    good = [
        "pip install -e '.[serve]'",
        'pip install -e "<checkout>[s3]"',
        "pip install /opt/ablator/<wheel>[s3]",
    ]
    assert [b for b in bad if not INDEX_ABLATOR.search(b)] == []
    assert [g for g in good if INDEX_ABLATOR.search(g)] == []


def test_no_message_or_doc_installs_ablator_from_the_package_index() -> None:
    found = []
    for path in _texts():
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if INDEX_ABLATOR.search(line):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert found == []


def test_the_hint_installs_the_extra_from_the_checkout_or_the_packages_by_name() -> None:
    hint = extra_hint("s3", ["s3fs>=2025.7"])
    assert "python -m pip install -e '.[s3]'" in hint
    assert "checkout" in hint
    assert "python -m pip install 's3fs>=2025.7'" in hint
    assert not INDEX_ABLATOR.search(hint)


def test_every_missing_extra_message_uses_the_one_hint() -> None:
    # the places that tell a user to install an extra build the text with extra_hint, not by hand
    for rel in ("ablator/tpe.py", "ablator/serve/app.py", "ablator/store/s3.py"):
        source = (ROOT / rel).read_text()
        assert "extra_hint(" in source, rel
        assert not re.search(r"""pip install[^\n]*\[(?:s3|tpe|serve)\]""", source.split('"""', 2)[-1]), rel
