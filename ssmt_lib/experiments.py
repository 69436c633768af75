"""Experiment sweeps: a notebook run over a parameter grid, result tables, stored long runs.

A *sweep file* (YAML, see ``params/``) names a notebook, fixed parameters, a grid and a name::

    name: ablation                      # results go to runs/ablation/<point>/
    notebook: experiment_point.ipynb    # relative to notebooks/
    parameters: {epochs: 3}             # the same for every point
    grid:                               # cartesian product; each combination is one point
      variant: [1_baseline, 2_rec, 3_rec_gland, 4_rec_size, 5_all]
      seed: [0, 1, 2]

A grid entry may also be a mapping that sets several parameters together (for values that must
change jointly, e.g. eq. 12's loss weights, which have to sum to 1)::

    grid:
      weights:                          # a label for the group, not a notebook parameter
        - {alpha: 0.8, beta: 0.1, gamma: 0.05, eta: 0.05}
        - {alpha: 0.6, beta: 0.2, gamma: 0.1, eta: 0.1}
      seed: [0, 1]

Every point runs the notebook with papermill (:func:`ssmt_lib.notebook_runner.run_notebook`: the
executed copy and the notebook's ``metrics.json`` land in ``runs/<name>/<point>/``; the notebook
receives that folder as its ``run_dir`` parameter). Finished points (with a ``metrics.json``) are skipped, so a sweep
resumes. Every point is checked before the first one runs: its parameters against the notebook's
``parameters`` cell (papermill itself only warns about unknown names, here they are errors), its
training config with ``make_config`` (:func:`check_point_config`: eq. 12 weights, types), and its
folder name for uniqueness (values whose spelling had to be changed for a folder name, ``a/b`` or
``a b``, get a hash of the values appended). The summary of the finished points is written even
when points fail. :func:`aggregate` collects all ``metrics.json`` into one pandas table, mean +- std
over seeds; :func:`store_results` copies a finished long sweep's tables into ``results/`` for the
notebooks (:func:`load_results`).
"""
from __future__ import annotations

import ast
import hashlib
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ssmt_lib.notebook_runner import (ROOT, RUNS, SweepError, check_parameters, notebook_parameters, notebook_path,
                                      run_notebook)
from ssmt_lib.stats import FLOOR, SCORE  # the score every sweep table reports, and its floor

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # sweep names: one safe folder name


@dataclass
class Sweep:
    """A parsed sweep file."""

    name: str  # output folder under runs/
    notebook: str  # notebook to execute per point
    grid: dict[str, list[Any]]  # parameter -> values (cartesian product)
    parameters: dict[str, Any] = field(default_factory=dict)  # fixed parameters
    root: Path = RUNS  # parent of the sweep folder

    @property
    def out_dir(self) -> Path:
        return self.root / self.name

    def _linked(self, key: str) -> bool:
        """Whether grid entry ``key`` lists mappings (several parameters set together)."""
        return isinstance(self.grid[key][0], dict)

    def points(self) -> list[dict[str, Any]]:
        """Every grid combination merged into the fixed parameters (mapping entries are merged in)."""
        points = []
        for values in itertools.product(*self.grid.values()):
            point = dict(self.parameters)
            for key, value in zip(self.grid, values):
                point.update(value if isinstance(value, dict) else {key: value})
            points.append(point)
        return points

    def columns(self) -> list[str]:
        """The parameters the grid varies, in grid order (the names inside a mapping entry)."""
        return [c for k in self.grid for c in (self.grid[k][0] if self._linked(k) else [k])]

    def point_name(self, point: dict[str, Any]) -> str:
        """Folder name of a point from its grid values, e.g. ``variant-2_rec__seed-1``."""
        parts = []
        for k in self.grid:
            value = "_".join(f"{c}={point[c]}" for c in self.grid[k][0]) if self._linked(k) else point[k]
            parts.append(f"{k}-{value}")  # e.g. weights-alpha=0.8_beta=0.1_gamma=0.05_eta=0.05
        raw = "__".join(parts)
        name = re.sub(r"[^A-Za-z0-9_.=-]+", "_", raw)[:150]
        if name != raw:  # characters replaced (a/b, a b -> a_b) or cut: a hash of the values keeps names apart
            name = f"{name}-{hashlib.sha1(raw.encode()).hexdigest()[:8]}"
        return name


def load_sweep(file: str | Path | dict[str, Any], root: str | Path | None = None) -> Sweep:
    """Read and validate a sweep YAML file (or an equivalent dict) before anything runs."""
    if isinstance(file, dict):
        spec, where = dict(file), "sweep spec"
    else:
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f"sweep file {path} does not exist")
        spec, where = yaml.safe_load(path.read_text()) or {}, str(path)
    allowed = {"name", "notebook", "grid", "parameters"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; allowed {sorted(allowed)}")
    for key in ("name", "notebook", "grid"):
        if key not in spec:
            raise ValueError(f"{where}: missing key {key!r}")
    grid = spec["grid"]
    if not isinstance(grid, dict) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
        raise ValueError(f"{where}: grid must map each parameter to a non-empty list of values")
    for key, values in grid.items():
        kinds = {isinstance(v, dict) for v in values}
        if kinds == {True} and any(not v or set(v) != set(values[0]) for v in values):
            raise ValueError(f"{where}: grid.{key} entries must be non-empty mappings with the same keys")
        if len(kinds) > 1:
            raise ValueError(f"{where}: grid.{key} mixes mappings and plain values")
    name = str(spec["name"])
    if not _NAME.fullmatch(name):
        raise ValueError(f"{where}: name {name!r} must be one folder name (letters, digits, _ . -)")
    sweep = Sweep(name=name, notebook=str(spec["notebook"]), grid=grid,
                  parameters=dict(spec.get("parameters") or {}), root=Path(root) if root else RUNS)
    columns = sweep.columns()
    overlap = sorted(set(sweep.parameters) & set(columns) | {c for c in columns if columns.count(c) > 1})
    if overlap:
        raise ValueError(f"{where}: {overlap} are set twice (fixed parameters and/or grid entries)")
    names: dict[str, dict[str, Any]] = {}
    for point in sweep.points():
        check_parameters(sweep.notebook, point)
        try:
            check_point_config(sweep.notebook, point)
        except (ValueError, TypeError, KeyError) as err:
            raise ValueError(f"{where}: point {sweep.point_name(point)} is not a valid configuration: "
                             f"{err}") from err
        name = sweep.point_name(point)
        if name in names:
            raise ValueError(f"{where}: points {names[name]} and {point} share the folder name {name!r}; "
                             f"give their grid values distinct spellings")
        names[name] = point
    return sweep


def check_point_config(notebook: str | Path, point: dict[str, Any]) -> None:
    """For a notebook that builds a training config (it declares a ``preset`` parameter): build it
    with ``make_config`` from the point's values (the notebook's defaults for the rest), so that,
    e.g., eq. 12 loss weights that break the constraints fail before the first point runs.

    Parameters named like a config field (a field name unique to one config section: ``alpha``,
    ``epochs``, ``image_size`` ...) are passed as that field; ``preset`` and ``variant`` as such.
    """
    import dataclasses

    from ssmt_lib.config import Config, make_config

    declared = notebook_parameters(notebook)
    if "preset" not in declared:
        return
    values = {}
    for name, spec in declared.items():
        try:
            values[name] = ast.literal_eval(str(spec.get("default")))
        except (ValueError, SyntaxError):
            continue  # a default papermill cannot show as a literal: not checked
    values.update(point)
    owners: dict[str, list[str]] = {}
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(getattr(Config(), section.name)):
            owners.setdefault(f.name, []).append(section.name)
    overrides = {f"{owners[k][0]}__{k}": v for k, v in values.items() if len(owners.get(k, [])) == 1}
    make_config(values["preset"], variant=values.get("variant") or None, **overrides)


def run_sweep(file: str | Path | dict[str, Any] | Sweep, keep_going: bool = False, root: str | Path | None = None,
              progress: bool = True, workers: int = 1) -> pd.DataFrame:
    """Run every unfinished point of a sweep, then return :func:`aggregate`'s table.

    Args:
        file: sweep YAML path, dict or :class:`Sweep`.
        keep_going: continue after a failed point and raise one :class:`SweepError` listing all
            failures at the end (default: stop at the first; points already running finish).
            Either way ``summary.csv`` / ``summary.md`` are written for the points that finished
            before the error is raised.
        root: parent folder of the sweep output (default ``runs/``).
        progress: print one line per point.
        workers: points executed at the same time (each in its own kernel). On a CPU, give each
            point ``threads = cores // workers`` so that the kernels do not oversubscribe the cores.
    """
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    sweep = file if isinstance(file, Sweep) else load_sweep(file, root)
    todo = []
    for point in sweep.points():
        point_dir = sweep.out_dir / sweep.point_name(point)
        if (point_dir / "metrics.json").is_file():
            if progress:
                print(f"[skip] {point_dir.name} (finished)")
        else:
            todo.append((point, point_dir))

    def run(point: dict[str, Any], point_dir: Path) -> float:
        start = time.perf_counter()
        run_notebook(sweep.notebook, point_dir, point)
        if not (point_dir / "metrics.json").is_file():
            raise SweepError(f"{point_dir / notebook_path(sweep.notebook).name} ran but wrote no metrics.json")
        return time.perf_counter() - start

    failures = []
    try:
        # Threads only wait on kernels (separate processes), so they do not compete for the GIL.
        with ThreadPoolExecutor(max_workers=workers) as pool:
            queue, running = list(todo), {}
            while queue or running:
                while queue and len(running) < workers and (keep_going or not failures):
                    point, point_dir = queue.pop(0)
                    running[pool.submit(run, point, point_dir)] = point_dir
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    point_dir = running.pop(future)
                    try:
                        seconds = future.result()
                    except SweepError as err:
                        failures.append(str(err))
                        if progress:
                            print(f"[FAIL] {point_dir.name}: {err}")
                        continue
                    if progress:
                        print(f"[done] {point_dir.name} in {seconds:.1f} s")
    finally:  # failed, interrupted or not: the summary holds every point that finished
        table, summary_note = _write_summary(sweep)
    if failures and not keep_going:
        raise SweepError((failures[0] if len(failures) == 1 else "\n".join(failures)) + summary_note)
    if failures:
        raise SweepError(f"{len(failures)} sweep point(s) failed:\n" + "\n".join(failures) + summary_note)
    return table


def _write_summary(sweep: Sweep) -> tuple[pd.DataFrame, str]:
    """:func:`aggregate` of the finished points (writes summary.csv/.md), and a sentence saying so.
    Never raises: it runs while another error may be on its way out."""
    try:
        table = aggregate(sweep)
    except Exception as err:  # a broken metrics.json must not hide the sweep's own error
        return pd.DataFrame(), f"\n(no summary written: {type(err).__name__}: {err})"
    if table.empty:
        return table, "\n(no point finished, so no summary was written)"
    finished = int(table["n"].sum()) if "n" in table else len(table)
    return table, f"\nsummary of the {finished} finished point(s): {sweep.out_dir / 'summary.md'}"


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            flat[name] = value
    return flat


def collect(sweep: Sweep) -> pd.DataFrame:
    """One row per finished point: its grid values and every scalar of its ``metrics.json``."""
    rows = []
    for point in sweep.points():
        file = sweep.out_dir / sweep.point_name(point) / "metrics.json"
        if file.is_file():
            rows.append({**{c: point[c] for c in sweep.columns()}, **_flatten(json.loads(file.read_text()))})
    return pd.DataFrame(rows)


def trivial_flag(row: pd.Series | dict[str, Any], metric: str = "dice_mean") -> str:
    """:func:`~ssmt_lib.metrics.flag_trivial` for one collected run (a row of :func:`collect`)."""
    from ssmt_lib.metrics import REFERENCE_PREDICTORS, flag_trivial

    refs = {name: {metric: row[f"{FLOOR}.{name}.{metric}"]} for name in REFERENCE_PREDICTORS
            if f"{FLOOR}.{name}.{metric}" in row and row[f"{FLOOR}.{name}.{metric}"] is not None}
    return flag_trivial(row[f"test.nodule.{metric}"], refs, metric) if refs else "no references"


def aggregate(sweep: Sweep, over: str = "seed", write: bool = True) -> pd.DataFrame:
    """Mean and std of every numeric metric over ``over`` (seeds), grouped by the other grid keys.

    Writes ``summary.csv`` and ``summary.md`` (columns ``<metric> mean`` / ``<metric> std`` and a
    ``n`` count) into the sweep folder when ``write``. The run's settings (``config.*`` in
    ``metrics.json``) are not metrics and are left out. When the runs carry trivial references,
    ``runs near trivial`` counts the runs whose test Dice does not clear them by
    ``metrics.REFERENCE_MARGIN`` (:func:`trivial_flag`); the references' own means are columns too.
    """
    table = collect(sweep)
    if table.empty:
        return table
    columns = sweep.columns()
    keys = [k for k in columns if k != over]
    metrics = [c for c in table.columns if c not in columns and not c.startswith("config.")
               and pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c])]
    if {SCORE, f"{FLOOR}.all_foreground.dice_mean"} <= set(table.columns):
        # every table carries its floor: runs that do not clear the trivial predictors are counted
        table = table.assign(**{"runs near trivial": table.apply(trivial_flag, axis=1).ne("")})
    grouped = table.groupby(keys, sort=False) if keys else table.assign(_all="all").groupby("_all")
    summary = grouped[metrics].agg(["mean", "std"])
    summary.columns = [f"{m} {stat}" for m, stat in summary.columns]
    summary.insert(0, "n", grouped.size())
    if "runs near trivial" in table:
        summary.insert(1, "runs near trivial", grouped["runs near trivial"].sum().astype(int))
    if write:
        sweep.out_dir.mkdir(parents=True, exist_ok=True)
        summary.to_csv(sweep.out_dir / "summary.csv")
        (sweep.out_dir / "summary.md").write_text(summary.to_markdown(floatfmt=".4f"))
    return summary


def mean_std(summary: pd.DataFrame, metric: str, digits: int = 3) -> pd.Series:
    """Format ``<metric> mean`` and ``<metric> std`` columns as "0.812 +- 0.010" strings."""
    mean, std = summary[f"{metric} mean"], summary[f"{metric} std"].fillna(0.0)
    return mean.map(lambda v: f"{v:.{digits}f}") + " +- " + std.map(lambda v: f"{v:.{digits}f}")


# ----------------------------------------------------------------------------------------------
# stored long runs

RESULTS = ROOT / "results"  # committed tables and figures of the long CPU runs


def store_results(sweep: Sweep, command: str, wall_minutes: float, dest: Path | None = None) -> Path:
    """Copy a finished sweep's tables into ``results/<sweep name>/`` for the notebooks to show.

    Writes ``runs.csv`` (one row per point: grid values and every scalar of its ``metrics.json``,
    settings left out), ``summary.csv`` / ``summary.md`` (:func:`aggregate`) and ``meta.json``:
    the command that made them, the date, the points, the wall-clock minutes of the sweep and the
    CPU minutes its points report (``probes.cpu_minutes``). Nothing here is edited by hand: the
    notebooks load these files and say where they came from.

    Args:
        sweep: a sweep whose points have finished.
        command: the shell command that ran it (stored verbatim).
        wall_minutes: wall-clock minutes the sweep took.
        dest: parent folder (default ``results/``).
    """
    table = collect(sweep)
    if table.empty:
        raise ValueError(f"sweep {sweep.name} has no finished point in {sweep.out_dir}; nothing to store")
    folder = (dest or RESULTS) / sweep.name
    folder.mkdir(parents=True, exist_ok=True)
    keep = [c for c in table.columns if not c.startswith(("config.", "history.", "best.history"))]
    table[keep].to_csv(folder / "runs.csv", index=False)
    summary = aggregate(sweep, write=False)
    summary.to_csv(folder / "summary.csv")
    (folder / "summary.md").write_text(summary.to_markdown(floatfmt=".4f"))
    cpu = table["probes.cpu_minutes"].sum() if "probes.cpu_minutes" in table else None
    meta = {"command": command, "date": time.strftime("%Y-%m-%d"), "points": len(table),
            "planned_points": len(sweep.points()), "wall_minutes": round(wall_minutes, 1),
            "cpu_minutes": None if cpu is None else round(float(cpu), 1), "notebook": sweep.notebook,
            "parameters": sweep.parameters, "grid": sweep.grid}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    return folder


def load_results(name: str, dest: Path | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The stored ``runs.csv`` and ``meta.json`` of a long run (see :func:`store_results`)."""
    folder = (dest or RESULTS) / name
    for file in ("runs.csv", "meta.json"):
        if not (folder / file).is_file():
            raise FileNotFoundError(f"{folder / file} does not exist: run `{_long_command(name)}` first")
    return pd.read_csv(folder / "runs.csv"), json.loads((folder / "meta.json").read_text())


def _long_command(name: str) -> str:
    return f"python -m ssmt_lib sweep params/{name}.yaml --workers 2 --store"
