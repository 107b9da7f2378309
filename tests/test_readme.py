"""Every ```python example of README.md runs as written, each in a fresh namespace and an empty working folder.

A block preceded by `<!-- readme-test: continue -->` runs after the block before it, in its namespace (one test for
the chain); `<!-- readme-test: slow -->` (or `continue slow`) marks a chain slow."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
DIRECTIVE = re.compile(r"<!--\s*readme-test:\s*([a-z ]+?)\s*-->")
WORDS = {"continue", "slow"}


def python_blocks(text):
    """[(line of the opening fence, source, {directive words})] of the README's ```python blocks."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i
            j = i + 1
            while lines[j].strip() != "```":
                j += 1
            prev = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
            m = DIRECTIVE.fullmatch(prev.strip())
            words = set(m.group(1).split()) if m else set()
            if words - WORDS:
                raise ValueError(f"README.md:{start + 1}: unknown readme-test directive {sorted(words - WORDS)}")
            blocks.append((start + 1, "\n".join(lines[start + 1:j]) + "\n", words))
            i = j
        i += 1
    return blocks


def chains(text):
    """Blocks grouped into what runs in one namespace: a block, then the blocks that continue it."""
    out = []
    for line, src, words in python_blocks(text):
        if "continue" in words:
            if not out:
                raise ValueError(f"README.md:{line}: the first python block cannot continue another")
            out[-1].append((line, src, words))
        else:
            out.append([(line, src, words)])
    return out


def _params():
    params = []
    for chain in chains(README.read_text()):
        slow = any("slow" in w for _, _, w in chain)
        params.append(pytest.param(chain, id=f"README.md:{chain[0][0]}", marks=[pytest.mark.slow] if slow else []))
    return params


def test_directives_parse():
    text = "x\n```python\na = 1\n```\n<!-- readme-test: continue slow -->\n```python\nb = a\n```\n```python\nc\n```\n"
    got = chains(text)
    assert [[(line, words) for line, _, words in c] for c in got] == [[(2, set()), (6, {"continue", "slow"})],
                                                                       [(9, set())]]
    with pytest.raises(ValueError, match="unknown readme-test directive"):
        python_blocks("<!-- readme-test: sometimes -->\n```python\npass\n```\n")


@pytest.mark.parametrize("chain", _params())
def test_readme_example(chain, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples may write files (model.save, zarr stores)
    namespace = {"__name__": "__readme__"}
    for line, src, _ in chain:
        exec(compile(src, f"README.md:{line}", "exec"), namespace)  # noqa: S102 - the README is ours
