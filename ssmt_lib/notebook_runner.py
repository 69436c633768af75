"""Running notebooks with papermill: parameter checks, kernel restarts, and the whole workbook.

:func:`run_notebook` executes one notebook with parameters into a run folder (``cwd`` = the
notebook's folder, the kernel started from this interpreter). Before it runs, every parameter is
checked against the notebook's ``parameters`` cell (:func:`check_parameters`: papermill itself only
warns about unknown names, here they are errors, and a wrong type is one too). A failing cell raises
:class:`SweepError` naming the executed copy; a kernel that dies or a cell that runs past its
timeout raises :class:`KernelLostError` naming the cell, and a kernel that dies while starting (no
cell run yet) is started again. :func:`run_workbook` runs the numbered walkthrough notebooks
(``make workbook``). Sweeps over parameter grids build on this in :mod:`ssmt_lib.experiments`.
"""
from __future__ import annotations

import ast
import functools
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"  # the workbook's notebooks (papermill runs them from here)
RUNS = ROOT / "runs"  # default parent of run folders
_TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool, "list": list, "dict": dict}


class SweepError(RuntimeError):
    """A notebook run (a sweep point, a workbook notebook) failed; the message names the executed notebook and the error."""


class KernelLostError(SweepError):
    """A notebook's kernel did not answer: a cell ran past its timeout, or the kernel died or went
    silent. The message names the notebook and the cell; the notebook may be run again."""


def notebook_path(notebook: str | Path) -> Path:
    """Resolve a notebook name ("03_two_phase_training" or a path) to an existing file."""
    path = Path(notebook)
    for candidate in (path, NOTEBOOKS / path, NOTEBOOKS / f"{path}.ipynb", path.with_suffix(".ipynb")):
        if candidate.is_file():
            return candidate.resolve()
    raise FileNotFoundError(f"notebook {notebook!r} not found (looked in {NOTEBOOKS})")


def notebook_parameters(notebook: str | Path) -> dict[str, dict[str, Any]]:
    """The names, types and defaults of a notebook's ``parameters`` cell (papermill's inspection).

    Raises ``ValueError`` naming the notebook when it has no ``parameters`` cell or when the cell
    assigns a name that papermill cannot parse (papermill only logs those and drops them).
    """
    path = notebook_path(notebook)
    return dict(_inspect(str(path), path.stat().st_mtime_ns))


@functools.lru_cache(maxsize=32)
def _inspect(path: str, mtime_ns: int) -> dict[str, dict[str, Any]]:
    """papermill's inspection, cached per file version (a sweep checks every point)."""
    import nbformat
    import papermill

    params = papermill.inspect_notebook(path)
    if not params:
        raise ValueError(f"{path} has no cell tagged 'parameters'")
    cell = next(c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    try:
        body = ast.parse(cell.source).body
    except SyntaxError as err:
        raise ValueError(f"{path}: the parameters cell is not plain Python ({err.msg}, line {err.lineno})") from err
    assigned = {t.id for node in body if isinstance(node, (ast.Assign, ast.AnnAssign))
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)}
    missed = sorted(assigned - set(params))
    if missed:
        raise ValueError(f"{path}: papermill cannot parse the parameters {missed}; write each as "
                         f"`name: type = value  # comment` with no '=' inside the comment")
    return params


def check_parameters(notebook: str | Path, parameters: dict[str, Any]) -> None:
    """Raise if a parameter is not in the notebook's ``parameters`` cell or has the wrong type."""
    declared = notebook_parameters(notebook)
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise ValueError(f"unknown parameters {unknown} for {notebook_path(notebook).name}; "
                         f"it declares {sorted(declared)}")
    for name, value in parameters.items():
        type_name = (declared[name].get("inferred_type_name") or "None").split("[")[0]
        default = declared[name].get("default")
        expected = _TYPES.get(type_name)
        if expected is None or value is None or default == "None":
            continue  # untyped or optional: nothing to check
        if isinstance(value, bool) and expected is not bool or not isinstance(value, expected):
            raise TypeError(f"parameter {name}={value!r} for {notebook_path(notebook).name} must be {type_name}")


KERNEL_START_ATTEMPTS = 3  # tries when the kernel dies before it answers (no cell has run yet)


def run_notebook(notebook: str | Path, run_dir: str | Path, parameters: dict[str, Any] | None = None,
                 timeout: int | None = None, log_output: bool = False) -> Path:
    """Execute ``notebook`` with papermill into ``run_dir`` (cwd = the notebook's folder).

    ``run_dir`` is passed as the ``run_dir`` parameter when the notebook declares one. Returns the
    executed notebook's path. Raises :class:`SweepError` (with that path) when a cell fails.

    Args:
        notebook: a notebook name or path (:func:`notebook_path`).
        run_dir: the folder of the executed copy and of what the notebook writes.
        parameters: values for the notebook's ``parameters`` cell (checked first).
        timeout: seconds one cell may run; None is no limit.
        log_output: echo the cells' output.
    """
    import papermill

    path = notebook_path(notebook)
    run_dir = Path(run_dir).resolve()
    parameters = dict(parameters or {})
    if "run_dir" in notebook_parameters(path):
        parameters.setdefault("run_dir", str(run_dir))
    check_parameters(path, parameters)
    run_dir.mkdir(parents=True, exist_ok=True)
    output = run_dir / path.name
    _kernel_uses_this_python()
    attempt = 1
    while True:
        try:
            papermill.execute_notebook(str(path), str(output), parameters=parameters, cwd=str(path.parent),
                                       kernel_name="python3", progress_bar=False, log_output=log_output,
                                       execution_timeout=timeout,
                                       # the kernel's own log (TCP notice, shutdown interrupt) is noise here;
                                       # failures still surface as cell errors / SweepError
                                       extra_arguments=["--log-level=CRITICAL"])
            return output
        except papermill.PapermillExecutionError as err:
            raise SweepError(f"{output} failed in cell {err.exec_count}: {err.ename}: {err.evalue}") from err
        except Exception as err:  # dead kernel (e.g. out of memory), cell timeout, ...: still name the notebook
            # a kernel that dies while starting (seen on busy machines) ran no cell: start it again
            if "before replying to kernel_info" not in str(err) or attempt == KERNEL_START_ATTEMPTS:
                what = f"timed out after {timeout} s" if isinstance(err, TimeoutError) else "lost its kernel"
                first = (str(err).strip().splitlines() or [""])[0]
                raise KernelLostError(f"{output} {what} in {_last_started_cell(output)}: "
                                      f"{type(err).__name__}: {first}") from err
            attempt += 1


def _last_started_cell(executed: Path) -> str:
    """'cell 7 (`first line of its source`)' for the last cell papermill started in ``executed``."""
    import nbformat

    try:
        cells = nbformat.read(executed, as_version=4).cells
    except Exception:  # not written yet (the kernel never started) or unreadable
        return "no cell (the kernel did not start)"
    started = [(k, c) for k, c in enumerate(cells) if c.get("metadata", {}).get("papermill", {}).get("start_time")]
    if not started:
        return "no cell (the kernel did not start)"
    k, cell = started[-1]
    line = next((ln for ln in cell.source.splitlines() if ln.strip()), "")
    return f"cell {k} of {len(cells)} (`{line[:80]}`)"


def _kernel_uses_this_python() -> None:
    """The "python3" kernelspec starts ``python`` from PATH; make that this interpreter (a venv may not be on PATH)."""
    here = str(Path(sys.executable).parent)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != here:
        os.environ["PATH"] = here + os.pathsep + os.environ.get("PATH", "")


def workbook_notebooks() -> list[Path]:
    """The numbered walkthrough notebooks, in order."""
    return sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


CELL_TIMEOUT = 600  # seconds one workbook cell may run (the notebooks' longest take ~2 min; nbval allows 300)


def run_workbook(names: list[str] | None = None, runs: Path = RUNS, cell_timeout: int = CELL_TIMEOUT) -> list[Path]:
    """Execute the walkthrough notebooks with their default (CPU) parameters into ``runs/<name>/``.

    The notebooks save their figures into ``figures/``, so this also refreshes them. Every cell
    has ``cell_timeout`` seconds. When a cell times out or the kernel is lost (dies, or stops
    answering), the message names the notebook and the cell, the kernel is restarted and the
    notebook runs once more from the top; a second such failure raises :class:`SweepError`. A cell
    that raises an error is not retried.

    Args:
        names: notebook names (default: all numbered notebooks).
        runs: parent of the output folders.
        cell_timeout: seconds per cell.
    """
    selected = workbook_notebooks()
    if names:
        wanted = {Path(n).stem for n in names}
        missing = wanted - {p.stem for p in selected}
        if missing:
            raise FileNotFoundError(f"no notebooks named {sorted(missing)} in {NOTEBOOKS}")
        selected = [p for p in selected if p.stem in wanted]
    done = []
    for path in selected:
        start = time.perf_counter()
        out_dir = runs / path.stem
        for attempt in (1, 2):
            if out_dir.exists():
                shutil.rmtree(out_dir)
            try:
                done.append(run_notebook(path, out_dir, timeout=cell_timeout))
                break
            except KernelLostError as err:
                if attempt == 2:
                    raise SweepError(f"{path.name} failed again after a kernel restart: {err}") from err
                print(f"{path.name}: {err}\n{path.name}: restarting the kernel and running it again")
        print(f"{path.name}: {time.perf_counter() - start:.0f} s -> {done[-1]}")
    return done
