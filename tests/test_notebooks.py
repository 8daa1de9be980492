"""experiments/notebooks/*.ipynb: stored without outputs, and they run headlessly on real tables.

The notebook runs under nbclient in a kernel of this interpreter (a kernelspec written to a temp
JUPYTER_PATH points at sys.executable), so it sees the same llmjax and packages as the tests.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from test_report import make_sweep, write_sweep  # noqa: E402  (tests/ is on sys.path)

NOTEBOOKS = Path(__file__).resolve().parent.parent / "experiments" / "notebooks"
ANALYZE = NOTEBOOKS / "analyze_scaling.ipynb"
KERNEL = "llmjax-test-python"


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebooks_are_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, path.name


@pytest.fixture
def this_python_kernel(tmp_path, monkeypatch):
    """A kernelspec running ipykernel with sys.executable, found through JUPYTER_PATH."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "llmjax test python",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return KERNEL


def _inject_parameters(nb, **params) -> None:
    """papermill's convention: a cell after the one tagged 'parameters' overrides its values."""
    index = next(
        i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])
    )
    source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(index + 1, cell)


def test_analyze_scaling_notebook_runs_on_a_sweep(tmp_path, this_python_kernel):
    rows, curve_rows = make_sweep(sizes=6, curve_points=12)
    sweep = write_sweep(tmp_path / "sweep", rows, curve_rows)
    nb = nbformat.read(ANALYZE, as_version=4)
    params = nb.cells[
        next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    ]
    assert "SWEEP_DIR" in params.source
    _inject_parameters(nb, SWEEP_DIR=sweep, N_BOOT=50)
    client = nbclient.NotebookClient(
        nb,
        kernel_name=this_python_kernel,
        timeout=600,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    # loss vs compute, loss vs N, N_opt vs C, the bootstrap histogram (no budgets: no isoflop)
    assert len(images) >= 4
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "6 runs" in text and "alpha_N = " in text
    assert not os.path.exists(os.path.join(sweep, "report"))  # the notebook writes nothing


def test_probe_emergence_notebook_runs_on_a_sweep(tmp_path, this_python_kernel):
    from test_emergence import make_rows

    from llmjax.sweep.results import PROBE_COLUMNS

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    with open(sweep / "probes.csv", "w", newline="") as f:
        import csv

        writer = csv.DictWriter(f, fieldnames=PROBE_COLUMNS)
        writer.writeheader()
        writer.writerows(make_rows())
    nb = nbformat.read(NOTEBOOKS / "probe_emergence.ipynb", as_version=4)
    _inject_parameters(nb, SWEEP_DIR=str(sweep), N_BOOT=30)
    client = nbclient.NotebookClient(nb, kernel_name=this_python_kernel, timeout=600,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 5  # recall, copy, facts, ICL/induction vs scale, through training
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "7 runs probed; transitions in" in text
    assert "copy k=4 exact match: no transition" in text  # the hand-made test of a flat series
    assert os.listdir(sweep) == ["probes.csv"]  # the notebook writes nothing
