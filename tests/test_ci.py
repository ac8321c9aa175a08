"""CI runs exactly the README's test command, in two steps that each select tests.

``.ci/run`` ends with the command of the README's second code block: formatting, the default run
(``-m "not slow"``) and the slow tests (``-m slow``). pytest exits with status 5 when a step selects no test,
so both steps must keep selecting some: checked here from the markers in the test files.
"""

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _readme_test_command() -> str:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    assert len(blocks) >= 2, "README.md lost its two commands (run the job, run the tests)"
    lines = [line for line in blocks[1].splitlines() if line.strip() and not line.startswith("#")]
    assert len(lines) == 1, f"the README's test command should be one line, got {lines}"
    return lines[0]


def test_ci_runs_the_readme_test_command():
    command = _readme_test_command()
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert ci[-1] == command
    assert "ruff format --check ." in command
    assert '-m "not slow"' in command and command.endswith("-m slow")


def _is_slow(decorators) -> bool:
    return any("mark.slow" in ast.unparse(d) for d in decorators)


def _tests_by_marker() -> tuple[list[str], list[str]]:
    slow, default = [], []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text())
        module_slow = any(
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets)
            and "mark.slow" in ast.unparse(node.value)
            for node in tree.body
        )
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                name = f"{path.name}::{node.name}"
                (slow if module_slow or _is_slow(node.decorator_list) else default).append(name)
    return slow, default


def test_both_ci_steps_select_tests():
    slow, default = _tests_by_marker()
    assert slow, "no test is marked slow: the second CI step would select none (pytest exit status 5)"
    assert len(default) > len(slow)
    assert "test_ci.py::test_both_ci_steps_select_tests" in default
