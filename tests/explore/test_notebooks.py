"""Every notebook in notebooks/ runs top to bottom in smoke mode, as CI runs it (jupytext percent
files executed by nbclient, ``ELM_SMOKE=1``, ``MPLBACKEND=Agg``), and draws its figures."""

import jupytext
import nbformat
import pytest
from cli_helpers import ROOT
from nbclient import NotebookClient

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))


def test_the_three_notebooks_are_there():
    assert {p.stem for p in NOTEBOOKS} >= {"schedule_shapes", "layerwise_vs_uniform", "scaling_fit"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_mode(path, monkeypatch):
    for key, value in {"ELM_SMOKE": "1", "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT),
                       "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}.items():
        monkeypatch.setenv(key, value)
    notebook = jupytext.read(path)
    assert any("parameters" in cell.metadata.get("tags", []) for cell in notebook.cells), \
        "a papermill-style parameters cell"
    notebook.cells.append(nbformat.v4.new_code_cell(
        "import matplotlib.pyplot as plt\nprint('figures:', len(plt.get_fignums()))"))
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT)}}).execute()  # raises on any error
    figures = int(notebook.cells[-1].outputs[0]["text"].split()[-1])
    assert figures >= 1, f"{path.name} drew no figure"
