"""Every tutorial also runs as a notebook, shows its figures inline, and checks its exercises.

``tools/build_notebooks.py --fast`` converts each script with jupytext and executes it in a
Jupyter kernel (nbclient), the way a reader's Jupyter would. torch is blocked in that kernel
(tests/no_torch.py) for every tutorial that reaches PyTorch only through ``optional_torch()``,
which is the tutorials' promise that everything but the comparison cells runs without it; the
script run in test_tutorials.py keeps torch, so the comparisons run there.

NPVIT_EXERCISES=solutions (set by ``tutorial_env``, as in CI) makes each exercise's checker
pass on the solution in tutorials/solutions/ and fail on the tutorial's blank and on a
deliberately wrong answer; the notebook must report that for every exercise it defines.
"""
from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from no_torch import no_torch_env
from test_tutorials import TUTORIALS, TUTORIALS_DIR, tutorial_env

BUILD = TUTORIALS_DIR.parent / "tools" / "build_notebooks.py"
pytest.importorskip("jupytext")
pytest.importorskip("nbclient")


def needs_torch(source: str) -> bool:
    """True when the tutorial imports torch at top level instead of through optional_torch()
    (an import inside the branch that optional_torch() guards does not count)."""
    return re.search(r"^(import|from)\s+(torch|timm|torchvision)\b", source, re.M) is not None


def outputs(notebook: dict):
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            yield from cell.get("outputs", [])


def text_of(output: dict) -> str:
    if output["output_type"] == "stream":
        return output["text"] if isinstance(output["text"], str) else "".join(output["text"])
    data = output.get("data", {}).get("text/plain", "")
    return data if isinstance(data, str) else "".join(data)


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs_as_notebook_with_inline_figures(path, tmp_path):
    source = path.read_text()
    env = tutorial_env(tmp_path)
    if not needs_torch(source):
        env = no_torch_env(tmp_path / "hook", env)
    run = subprocess.run([sys.executable, str(BUILD), "--fast", "--out", str(tmp_path / "nb"),
                          path.name], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, f"{path.name} failed as a notebook:\n{run.stderr[-3000:]}"
    notebook = json.loads((tmp_path / "nb" / f"{path.stem}.ipynb").read_text())

    code_cells = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert code_cells and all(c["execution_count"] for c in code_cells)
    assert not [o for o in outputs(notebook) if o["output_type"] == "error"]
    texts = "\n".join(text_of(o) for o in outputs(notebook))    # one output per line
    assert "PosixPath(" not in texts, "a cell echoes a path instead of showing its figure"

    # every figure the tutorial wrote is displayed inline, byte for byte
    inline = [base64.b64decode(o["data"]["image/png"]) for o in outputs(notebook)
              if "image/png" in o.get("data", {})]
    written = sorted((tmp_path / "out").glob(f"{path.name[:2]}_*.png"))
    assert written and inline
    missing = [f.name for f in written if f.read_bytes() not in inline]
    assert not missing, f"figures written but not shown inline: {missing}"

    exercises = re.findall(r"^exercises\.check\((\w+),", source, re.M)
    passed = re.findall(r"^exercise (\w+): the solution passes; the blank and the wrong answer fail$",
                        texts, re.M)
    assert passed == exercises


def test_exercise_checks_solution_blank_and_wrong_answer(tmp_path, monkeypatch, capsys):
    """The mechanism itself, on a toy exercise: what a reader sees and what CI enforces."""
    monkeypatch.syspath_prepend(str(TUTORIALS_DIR))
    import tutorial_setup

    (tmp_path / "99_toy.py").write_text(
        "def double(x):\n    return 2 * x\n\n"
        "def double_wrong(x):\n    return x + 2\n\n"
        "WRONG_ANSWERS = {'double': double_wrong}\n")
    monkeypatch.setattr(tutorial_setup, "SOLUTIONS_DIR", tmp_path)

    def double(x):
        raise NotImplementedError

    def checker(f):
        for x in (0, 1, 5):
            assert f(x) == 2 * x, f"double({x}) should be {2 * x}, got {f(x)}"

    def lax_checker(f):
        assert f(2) == 4            # x + 2 also gives 4: cannot tell the wrong answer apart

    def named_double(f):
        f.__name__ = "double"
        return f

    exercises = tutorial_setup.Exercises("99")
    monkeypatch.setattr(tutorial_setup, "CHECK_SOLUTIONS", False)
    exercises.check(double, checker)
    exercises.check(named_double(lambda x: x + 2), checker)
    exercises.check(named_double(lambda x: x * 2), checker)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("exercise double: not attempted yet") and "99_toy.py" in lines[0]
    assert lines[1] == "exercise double: not right yet: double(0) should be 0, got 2"
    assert lines[2] == "exercise double: correct"

    monkeypatch.setattr(tutorial_setup, "CHECK_SOLUTIONS", True)
    exercises.check(double, checker)
    assert "the solution passes" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="accepted the wrong answer"):
        exercises.check(double, lax_checker)
    with pytest.raises(AssertionError, match="accepted the blank"):
        exercises.check(named_double(lambda x: 2 * x), checker)   # a "blank" already solved
    with pytest.raises(AssertionError, match="should be"):
        exercises.check(double, lambda f: checker(lambda x: f(x) + 1))   # solution rejected


def test_relative_error_is_cs231n_elementwise():
    sys.path.insert(0, str(TUTORIALS_DIR))
    try:
        from tutorial_setup import relative_error
    finally:
        sys.path.remove(str(TUTORIALS_DIR))
    assert relative_error([1.0, 100.0], [1.0, 100.0]) == 0
    # elementwise: the small entry's 10% error counts although the big entry dominates the scale
    assert relative_error([0.1, 100.0], [0.11, 100.0]) == pytest.approx(0.01 / 0.21)
    assert relative_error([0.0], [0.0]) == 0 and relative_error([1e-9], [0.0]) == pytest.approx(0.1)


def test_readme_course_lists_every_tutorial_with_a_thumbnail():
    """The README's course table has a row per tutorial, each with a small committed figure."""
    root = TUTORIALS_DIR.parent
    rows = [line for line in (root / "README.md").read_text().splitlines()
            if line.startswith("| ![](")]
    for path in TUTORIALS:
        row = next((r for r in rows if f"| `{path.name}` |" in r), None)
        assert row, f"the README's course table has no row for {path.name}"
        thumbnail = root / re.match(r"\| !\[\]\(([^)]+)\)", row)[1]
        assert thumbnail.is_file(), f"{path.name}: thumbnail {thumbnail.name} is missing"
        assert thumbnail.stat().st_size < 100_000
