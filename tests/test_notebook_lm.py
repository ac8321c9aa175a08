"""Execute notebooks/lm_unlearning.ipynb with nbclient (this interpreter as the kernel) and check its numbers:
the GPT memorizes the forget people, Retrain and NPO (plain and SAM) bring their answer exact-match down."""

import ast
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

NB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks", "lm_unlearning.ipynb")


def _run(tmp_path) -> str:
    spec_dir = tmp_path / "kernels" / "jaxunlearn-lm"
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "jaxunlearn lm", "language": "python",
            "env": {"MPLBACKEND": "Agg", "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}}  # fmt: skip
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    km = KernelManager(
        kernel_name="jaxunlearn-lm", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    )
    nb = nbformat.read(NB, as_version=4)
    try:
        nbclient.NotebookClient(nb, km=km, timeout=900).execute()
    finally:  # a kernel manager passed in is not shut down by the client: stop the kernel here
        if km.has_kernel:
            km.shutdown_kernel(now=True)
    text = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text.append(out.get("text", "") or out.get("data", {}).get("text/plain", ""))
    return "\n".join(text)


@pytest.mark.slow
def test_lm_notebook(tmp_path):
    text = _run(tmp_path)
    rows = {
        m.group(1).strip(): ast.literal_eval(m.group(2)) for m in re.finditer(r"^(\S.{0,11}) (\{.*\})$", text, re.M)
    }
    assert rows["original"]["forget_em"] >= 0.9
    assert rows["retrain"]["forget_em"] <= 0.3
    for kind in ("sgd", "sam"):
        assert rows[f"npo ({kind})"]["forget_em"] < rows["original"]["forget_em"]
