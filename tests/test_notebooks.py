"""Execute the notebooks in ``notebooks/`` with nbclient and check their key outputs.

The kernel is always THIS interpreter (``sys.executable``): a throw-away kernelspec in a temporary
directory is handed to the kernel manager, so a user-level ``python3`` kernelspec pointing at another
Python (or a fresh CI venv without an installed kernelspec) cannot change what runs. Each notebook takes
one to two minutes on 2 CPU cores.
"""

import json
import os
import re
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import KernelManager  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB_DIR = os.path.join(ROOT, "notebooks")
KERNEL = "jaxunlearn-test"


def _kernel_manager(tmp_path) -> KernelManager:
    spec_dir = tmp_path / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "jaxunlearn test kernel",
        "language": "python",
        "env": {"MPLBACKEND": "Agg", "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    return KernelManager(kernel_name=KERNEL, kernel_spec_manager=ksm)


def _execute(name: str, tmp_path) -> tuple[str, float]:
    path = os.path.join(NB_DIR, name)
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{name} must be saved without outputs"
    km = _kernel_manager(tmp_path)
    client = nbclient.NotebookClient(
        nb, km=km, timeout=180, resources={"metadata": {"path": NB_DIR}}, kernel_name=KERNEL
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    text = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                text.append(out["text"])  # a stream may arrive in several chunks: they carry their own newlines
            elif "data" in out and "text/plain" in out["data"]:
                text.append(out["data"]["text/plain"] + "\n")
    text = "".join(text)
    m = re.search(r"notebook time ([0-9.]+) s", text)
    assert m, f"{name}: the last cell did not print its time\n{text}"
    return text, float(m.group(1))


def _number(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    assert m, f"no match for {pattern!r} in\n{text}"
    return float(m.group(1))


def test_kernel_is_this_interpreter(tmp_path):
    km = _kernel_manager(tmp_path)
    assert km.kernel_spec.argv[0] == sys.executable


@pytest.mark.slow
def test_quickstart_notebook(tmp_path):
    text, _ = _execute("quickstart.ipynb", tmp_path)
    assert _number(r"SAM-trained test accuracy: ([0-9.]+)", text) >= 0.9
    before = _number(r"forget accuracy ([0-9.]+) ->", text)
    after = _number(r"forget accuracy [0-9.]+ -> ([0-9.]+)", text)
    assert after < before
    assert _number(r"masked NegGrad: forget accuracy [0-9.]+, test accuracy ([0-9.]+)", text) >= 0.8
    selected = _number(r"selected ([0-9]+) of", text)
    total = _number(r"of ([0-9]+) parameters", text)
    changed = _number(r"changed ([0-9]+)", text)
    assert 0 < changed <= selected <= 0.11 * total
    m = re.search(r"sharp_minmax accuracies: \{'forget': ([0-9.]+), 'retain': ([0-9.]+), 'test': ([0-9.]+)\}", text)
    assert m, text
    assert float(m.group(2)) >= 0.85 and float(m.group(3)) >= 0.8


@pytest.mark.slow
def test_theory_notebook(tmp_path):
    text, _ = _execute("theory.ipynb", tmp_path)
    assert "SAM memorizes less noise: True" in text
    assert "SAM test error below SGD's: True" in text
    sgd_noise = _number(r"SGD: signal [0-9.\-]+  noise ([0-9.\-]+)", text)
    sam_noise = _number(r"SAM: signal [0-9.\-]+  noise ([0-9.\-]+)", text)
    assert sam_noise < sgd_noise


@pytest.mark.slow
def test_bring_your_own_model_notebook(tmp_path):
    text, _ = _execute("bring_your_own_model.ipynb", tmp_path)
    assert _number(r"NNX \+ SAM test accuracy: ([0-9.]+)", text) >= 0.9
    selected, total = _number(r"selected ([0-9]+) of", text), _number(r"of ([0-9]+) parameters", text)
    assert 0 < _number(r"changed ([0-9]+) parameters", text) <= selected <= 0.051 * total
    m = re.search(r"sharp_minmax accuracies: \{'forget': ([0-9.]+), 'retain': ([0-9.]+), 'test': ([0-9.]+)\}", text)
    assert m, text
    assert float(m.group(2)) >= 0.9 and float(m.group(3)) >= 0.85
    assert _number(r"npo: forget accuracy ([0-9.]+)", text) < _number(r"original forget accuracy ([0-9.]+)", text)
    assert "sharp_minmax phases: [('retain', ('retain',)), ('forget', ('forget',))]" in text
    assert _number(r"linen neggrad test accuracy: ([0-9.]+)", text) >= 0.85
    assert _number(r"accumulated SAM vs full-batch SAM: max abs difference ([0-9.e+-]+)", text) < 1e-5
    assert "MultiSteps" in _number_line(r"MultiSteps warning: (.*)", text)


def _number_line(pattern: str, text: str) -> str:
    m = re.search(pattern, text)
    assert m, f"no match for {pattern!r} in\n{text}"
    return m.group(1)
