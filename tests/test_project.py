"""Project-level checks: packaging agrees with conda, notebooks follow the workbook's conventions."""
import json
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_lists_the_pyproject_dependencies():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_side = sorted(_name(p) for p in pip if not p.startswith("-e"))
    assert conda_side == sorted(_name(d) for d in deps)
    assert dict((_name(d), d) for d in deps) == dict((_name(p), p) for p in pip if not p.startswith("-e"))


def test_torch_has_no_upper_pin():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_req = next(d for d in deps if _name(d) == "torch")
    assert "<" not in torch_req and "==" not in torch_req


def test_ci_calls_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make workbook" in readme


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_notebooks_exist():
    names = {p.stem[:2] for p in NOTEBOOKS}
    assert {"00", "01", "02", "03", "04", "05", "06"} <= names, names


def test_notebook_conventions():
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        assert nb["metadata"]["kernelspec"]["name"] == "python3", path
        cells = nb["cells"]
        params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(params) == 1, f"{path}: needs exactly one 'parameters' cell"
        code = [c for c in cells if c["cell_type"] == "code"]
        assert all(c.get("outputs") is not None for c in code)
        assert any(c.get("outputs") for c in code), f"{path} is stored without outputs"
        for c in code:
            for out in c.get("outputs", []):
                assert out.get("output_type") != "error", f"{path} is stored with an error output"
        if path.stem[:2].isdigit():
            text = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
            assert "Summary" in text and "Exercise" in text, f"{path}: needs a summary and exercises"


NUMBERED_ITEM = re.compile(r"^(\d+)\. \S", re.MULTILINE)  # "1. ..." at the start of a line


def test_every_exercise_has_a_worked_solution():
    """Exercises keep their questions; a collapsed <details> block answers each of them."""
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text())["cells"]
        text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        if "## Exercises" not in text:
            continue
        questions, details, rest = text.split("## Exercises", 1)[1].partition("<details>")
        assert details, f"{path.name}: exercises without a <details> block of solutions"
        summary, _, body = rest.partition("</summary>")
        assert "solution" in summary.lower(), f"{path.name}: the summary must name solutions"
        assert "</details>" in body, f"{path.name}: the solutions block is not closed"
        solutions = body.split("</details>", 1)[0]
        asked, answered = NUMBERED_ITEM.findall(questions), NUMBERED_ITEM.findall(solutions)
        assert asked, f"{path.name}: no numbered exercise found"
        assert asked == answered, f"{path.name}: exercises {asked} but solutions {answered}"
        for answer in re.split(r"^\d+\. ", solutions, flags=re.MULTILINE)[1:]:
            assert len(answer.strip()) > 40, f"{path.name}: a solution is only {answer.strip()!r}"


def test_notebook_code_lines_are_at_most_100_characters():
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text())["cells"]
        long = [(i, line) for i, c in enumerate(cells) if c["cell_type"] == "code"
                for line in "".join(c["source"]).split("\n") if len(line) > 100]
        assert not long, f"{path.name}: code lines over 100 characters (cell, line): {long[:3]}"


def test_readme_equation_table_names_existing_code():
    """Every `module.name` of the README's equation table exists, so the table cannot go stale."""
    import importlib

    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Equations in the code", 1)[1].split("\n## ", 1)[0]
    refs = re.findall(r"`([a-z_]+)\.([A-Za-z_][\w.]*)`", table)
    assert len(refs) > 20, refs
    for module, attr in refs:
        obj = importlib.import_module(f"ssmt_lib.{module}")
        for part in attr.split("."):
            assert hasattr(obj, part), f"README equation table: ssmt_lib.{module}.{attr} is gone"
            obj = getattr(obj, part)
    numbers = set()
    for first, last in re.findall(r"^\| (\d+)(?:-(\d+))? \|", table, flags=re.MULTILINE):
        numbers |= set(range(int(first), int(last or first) + 1))
    assert numbers == set(range(1, 14)), sorted(numbers)  # SSMT-Net's eq. 1-13, each in a row
