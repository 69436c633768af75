"""Sweep runner (ssmt_lib.experiments): validation before any run, papermill execution, resume, failures, tables.

A tiny dummy notebook (no torch) stands in for experiment_point.ipynb, so every kernel starts in about a second.
"""
import json
import statistics
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_notebook

from ssmt_lib.experiments import (
    aggregate,
    trivial_flag,
    collect,
    load_sweep,
    mean_std,
    run_sweep,
)
from ssmt_lib.notebook_runner import SweepError, notebook_parameters

PARAMS = """x: int = 1  # the number a point reports
seed: int = 0  # seed
fail_above: int = 99  # raise when x is larger
write: bool = True  # write metrics.json
run_dir: str = ""  # output folder, set by the runner"""

BODY = """import json
from pathlib import Path

if x > fail_above:
    raise RuntimeError(f"failing on purpose at x={x}")
out = Path(run_dir)
if write:
    metrics = {"test": {"score": 10 * x + seed, "half": x / 2}, "config": {"x": x}, "note": "text"}
    (out / "metrics.json").write_text(json.dumps(metrics))
with open(out.parent / "executions.txt", "a") as f:  # one line per execution, to count kernels
    f.write(f"{x},{seed}\\n")"""


def write_notebook(path: Path, params: str = PARAMS, body: str = BODY) -> Path:
    nb = new_notebook(cells=[new_code_cell(params, metadata={"tags": ["parameters"]}), new_code_cell(body)],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def dummy(tmp_path_factory) -> Path:
    return write_notebook(tmp_path_factory.mktemp("nb") / "dummy.ipynb")


def spec(nb: Path, **changes) -> dict:
    return {"name": "demo", "notebook": str(nb), "parameters": {}, "grid": {"x": [1, 2], "seed": [0, 1, 2]}, **changes}


def executions(sweep_dir: Path) -> list[str]:
    file = sweep_dir / "executions.txt"
    return sorted(file.read_text().split()) if file.is_file() else []


# ------------------------------------------------------------------------- validation before running


def test_notebook_parameters_reads_names_and_types(dummy):
    params = notebook_parameters(dummy)
    assert list(params) == ["x", "seed", "fail_above", "write", "run_dir"]
    assert params["x"]["inferred_type_name"] == "int" and params["write"]["inferred_type_name"] == "bool"


def test_unparsable_parameter_line_is_an_error(tmp_path):
    nb = write_notebook(tmp_path / "bad.ipynb", params='x: int = 1  # fine\nroot: str = ""  # "" = none')
    with pytest.raises(ValueError, match=r"bad\.ipynb.*\['root'\]"):
        notebook_parameters(nb)


@pytest.mark.parametrize("change, error, match", [
    ({"grids": {"x": [1]}}, ValueError, r"unknown keys \['grids'\]"),
    ({"parameters": {"y": 3}}, ValueError, r"unknown parameters \['y'\] for dummy\.ipynb"),
    ({"grid": {"x": [1, "2"]}}, TypeError, r"x='2'.*must be int"),
    ({"grid": {"write": [1]}}, TypeError, r"write=1.*must be bool"),
    ({"parameters": {"x": 3}}, ValueError, r"\['x'\] are set twice"),
    ({"grid": {"x": []}}, ValueError, "non-empty list"),
    ({"name": "../elsewhere"}, ValueError, "one folder name"),
    ({"notebook": "no_such_notebook"}, FileNotFoundError, "no_such_notebook"),
])
def test_load_sweep_rejects_bad_specs_before_running(dummy, tmp_path, change, error, match):
    with pytest.raises(error, match=match):
        load_sweep(spec(dummy, **change), root=tmp_path)
    assert not any(tmp_path.iterdir()), "nothing may be created before the sweep is valid"


def test_load_sweep_names_the_yaml_file(dummy, tmp_path):
    file = tmp_path / "sweep.yaml"
    file.write_text(yaml.safe_dump({**spec(dummy), "extra": 1}))
    with pytest.raises(ValueError, match=r"sweep\.yaml: unknown keys \['extra'\]"):
        load_sweep(file)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_sweep(tmp_path / "missing.yaml")


def test_linked_grid_entries_set_several_parameters(dummy, tmp_path):
    pairs = [{"x": 1, "fail_above": 5}, {"x": 2, "fail_above": 7}]
    sweep = load_sweep(spec(dummy, grid={"pair": pairs, "seed": [0, 1]}), root=tmp_path)
    points = sweep.points()
    assert points[0] == {"x": 1, "fail_above": 5, "seed": 0} and points[3] == {"x": 2, "fail_above": 7, "seed": 1}
    assert sweep.columns() == ["x", "fail_above", "seed"]
    assert sweep.point_name(points[3]) == "pair-x=2_fail_above=7__seed-1"
    with pytest.raises(ValueError, match="same keys"):
        load_sweep(spec(dummy, grid={"pair": [{"x": 1}, {"seed": 1}]}), root=tmp_path)
    with pytest.raises(ValueError, match="mixes mappings"):
        load_sweep(spec(dummy, grid={"pair": [{"x": 1}, 2]}), root=tmp_path)
    with pytest.raises(ValueError, match=r"\['seed'\] are set twice"):
        load_sweep(spec(dummy, grid={"pair": [{"x": 1, "seed": 0}], "seed": [1]}), root=tmp_path)
    with pytest.raises(TypeError, match="must be int"):
        load_sweep(spec(dummy, grid={"pair": [{"x": 1.5}]}), root=tmp_path)


# ------------------------------------------------------------------------- running, resuming, aggregating


@pytest.fixture(scope="module")
def finished(dummy, tmp_path_factory):
    """The 2 x 3 demo sweep run once, two points at a time."""
    root = tmp_path_factory.mktemp("runs")
    summary = run_sweep(spec(dummy), root=root, progress=False, workers=2)
    return root, summary


def test_run_sweep_runs_every_point_once(finished, dummy):
    root, _ = finished
    sweep_dir = root / "demo"
    assert executions(sweep_dir) == sorted(f"{x},{s}" for x in (1, 2) for s in (0, 1, 2))
    for x in (1, 2):
        for s in (0, 1, 2):
            point = sweep_dir / f"x-{x}__seed-{s}"
            assert json.loads((point / "metrics.json").read_text())["test"]["score"] == 10 * x + s
            executed = nbformat.read(point / "dummy.ipynb", as_version=4)
            assert f"run_dir = \"{point}\"" in "".join(c.source for c in executed.cells)  # papermill's injected cell


def test_second_run_skips_finished_points(finished, dummy, capsys):
    root, first = finished
    stamps = {p: p.stat().st_mtime_ns for p in (root / "demo").glob("*/metrics.json")}
    again = run_sweep(spec(dummy), root=root)
    assert executions(root / "demo") == sorted(f"{x},{s}" for x in (1, 2) for s in (0, 1, 2)), "a point reran"
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert capsys.readouterr().out.count("[skip]") == 6
    pd.testing.assert_frame_equal(again, first)


def test_aggregate_matches_hand_computed_mean_and_std(finished, dummy):
    root, summary = finished
    assert list(summary.index) == [1, 2] and summary.index.name == "x"
    assert "config.x mean" not in summary.columns and not any("note" in c for c in summary.columns)
    for x in (1, 2):
        scores = [10 * x + s for s in (0, 1, 2)]
        assert summary.loc[x, "n"] == 3
        assert summary.loc[x, "test.score mean"] == pytest.approx(statistics.mean(scores))
        assert summary.loc[x, "test.score std"] == pytest.approx(statistics.stdev(scores))
        assert summary.loc[x, "test.half mean"] == pytest.approx(x / 2)
        assert summary.loc[x, "test.half std"] == pytest.approx(0.0)
    table = collect(load_sweep(spec(dummy), root=root))
    assert len(table) == 6 and set(table.columns) >= {"x", "seed", "test.score", "config.x"}
    written = pd.read_csv(root / "demo" / "summary.csv", index_col="x")
    assert written["test.score mean"].tolist() == pytest.approx([11.0, 21.0])
    assert (root / "demo" / "summary.md").read_text().count("|") > 10


def test_aggregate_of_missing_points_and_over_another_key(finished, dummy):
    root, _ = finished
    sweep = load_sweep(spec(dummy, grid={"seed": [0, 1, 2]}, parameters={"x": 1}), root=root)
    assert aggregate(sweep).empty  # these point folders (seed-0 ...) do not exist
    sweep = load_sweep(spec(dummy), root=root)
    whole = aggregate(sweep, over="x", write=False)  # group by seed, statistics over x
    assert whole.loc[0, "test.score mean"] == pytest.approx(15.0)
    assert whole.loc[0, "test.score std"] == pytest.approx(statistics.stdev([10, 20]))


# ------------------------------------------------------------------------- failures


def test_stops_at_the_first_failure_naming_the_notebook(dummy, tmp_path):
    bad = spec(dummy, parameters={"fail_above": 1}, grid={"x": [1, 2, 3]})
    with pytest.raises(SweepError) as info:
        run_sweep(bad, root=tmp_path, progress=False)
    failed = tmp_path / "demo" / "x-2" / "dummy.ipynb"
    assert str(failed) in str(info.value) and "failing on purpose at x=2" in str(info.value)
    assert failed.is_file() and not (tmp_path / "demo" / "x-3").exists(), "the sweep went on after a failure"
    assert executions(tmp_path / "demo") == ["1,0"]


def test_keep_going_runs_everything_and_reports_all_failures(dummy, tmp_path):
    bad = spec(dummy, parameters={"fail_above": 1}, grid={"x": [3, 1, 2]})
    with pytest.raises(SweepError, match="2 sweep point") as info:
        run_sweep(bad, root=tmp_path, keep_going=True, progress=False)
    for x in (3, 2):
        assert str(tmp_path / "demo" / f"x-{x}" / "dummy.ipynb") in str(info.value)
    assert (tmp_path / "demo" / "x-1" / "metrics.json").is_file()  # the good point after a failure still ran


def test_a_point_without_metrics_is_a_failure(dummy, tmp_path):
    with pytest.raises(SweepError, match=r"x-1.*wrote no metrics\.json"):
        run_sweep(spec(dummy, parameters={"write": False}, grid={"x": [1]}), root=tmp_path, progress=False)
    with pytest.raises(ValueError, match="workers"):
        run_sweep(spec(dummy), root=tmp_path, workers=0)


# ------------------------------------------------------------------------- formatting


def test_mean_std_formatting():
    summary = pd.DataFrame({"dice mean": [0.81234, 0.5], "dice std": [0.01049, float("nan")]}, index=["a", "b"])
    assert mean_std(summary, "dice").tolist() == ["0.812 +- 0.010", "0.500 +- 0.000"]
    assert mean_std(summary, "dice", digits=1).tolist() == ["0.8 +- 0.0", "0.5 +- 0.0"]
    with pytest.raises(KeyError):
        mean_std(summary, "iou")


@pytest.mark.parametrize("message, failures, calls_expected, succeeds", [
    ("Kernel died before replying to kernel_info", 2, 3, True),  # started again, third start works
    ("Kernel died before replying to kernel_info", 99, 3, False),  # gives up after KERNEL_START_ATTEMPTS
    ("Kernel died while running a cell", 1, 1, False),  # a cell may have run: never retried
])
def test_only_a_kernel_that_dies_while_starting_is_started_again(dummy, tmp_path, monkeypatch, message, failures,
                                                                 calls_expected, succeeds):
    import papermill

    from ssmt_lib import notebook_runner

    real, calls = papermill.execute_notebook, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) <= failures:
            raise RuntimeError(message)
        return real(*args, **kwargs)

    monkeypatch.setattr(papermill, "execute_notebook", flaky)
    assert notebook_runner.KERNEL_START_ATTEMPTS == 3
    if succeeds:
        out = notebook_runner.run_notebook(dummy, tmp_path / "run", {"x": 1})
        assert out.exists() and (tmp_path / "run" / "metrics.json").exists()
    else:
        with pytest.raises(SweepError, match=message):
            notebook_runner.run_notebook(dummy, tmp_path / "run", {"x": 1})
    assert len(calls) == calls_expected


def test_aggregate_counts_runs_that_do_not_clear_the_trivial_references(dummy, tmp_path):
    sweep = load_sweep(spec(dummy, grid={"x": [1, 2], "seed": [0, 1]}), root=tmp_path)
    floor = {"all_foreground": {"dice_mean": 0.20}, "all_background": {"dice_mean": 0.05}}
    dice = {(1, 0): 0.22, (1, 1): 0.60, (2, 0): 0.70, (2, 1): 0.80}  # one x=1 run sits on the floor
    for point in sweep.points():
        folder = sweep.out_dir / sweep.point_name(point)
        folder.mkdir(parents=True)
        metrics = {"test": {"nodule": {"dice_mean": dice[point["x"], point["seed"]]},
                            "references": {"nodule": floor}}}
        (folder / "metrics.json").write_text(json.dumps(metrics))
    summary = aggregate(sweep, write=False)
    assert summary["runs near trivial"].tolist() == [1, 0]
    assert summary.loc[1, "test.references.nodule.all_foreground.dice_mean mean"] == pytest.approx(0.20)
    row = collect(sweep).iloc[0]
    assert "all_foreground" in trivial_flag(row) and trivial_flag(collect(sweep).iloc[1]) == ""


def test_store_results_writes_runs_summary_and_meta(dummy, tmp_path):
    from ssmt_lib.experiments import load_results, store_results

    sweep = load_sweep(spec(dummy, grid={"x": [1, 2], "seed": [0, 1]}), root=tmp_path / "runs")
    with pytest.raises(ValueError, match="nothing to store"):
        store_results(sweep, "cmd", 0.0, dest=tmp_path / "results")
    for point in sweep.points():
        folder = sweep.out_dir / sweep.point_name(point)
        folder.mkdir(parents=True)
        metrics = {"test": {"score": point["x"]}, "probes": {"cpu_minutes": 1.5}, "config": {"a": 1}}
        (folder / "metrics.json").write_text(json.dumps(metrics))
    folder = store_results(sweep, "python -m ssmt_lib sweep demo.yaml --store", 2.0, dest=tmp_path / "results")
    runs, meta = load_results("demo", dest=tmp_path / "results")
    assert len(runs) == 4 and "config.a" not in runs.columns and set(runs["x"]) == {1, 2}
    assert meta["cpu_minutes"] == 6.0 and meta["points"] == 4 and meta["command"].endswith("--store")
    assert (folder / "summary.md").is_file()
    with pytest.raises(FileNotFoundError, match="sweep params/nope.yaml"):
        load_results("nope", dest=tmp_path / "results")
