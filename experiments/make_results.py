"""Assemble experiments/RESULTS.md from RESULTS.template.md: each line ``@@TABLE path@@`` is replaced by
the table (without its title line) that the experiment wrote to ``path`` (relative to experiments/). Figures
are embedded in the template as ``![alt](results/...png)``; a figure whose file is missing is named on stderr
and the script exits with status 1 after writing RESULTS.md."""

import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    with open(os.path.join(HERE, "RESULTS.template.md")) as f:
        text = f.read()

    def table(m):
        path = os.path.join(HERE, m.group(1))
        if not os.path.exists(path):
            return f"_(not produced: {m.group(1)} missing)_"
        with open(path) as f:
            lines = f.read().splitlines()
        return "\n".join(lines[2:]).strip()  # drop the "## title" line and the blank after it

    text = re.sub(r"@@TABLE (\S+)@@", table, text)
    with open(os.path.join(HERE, "RESULTS.md"), "w") as f:
        f.write(text)
    missing = [p for p in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text) if not os.path.exists(os.path.join(HERE, p))]
    for p in missing:
        print(f"missing figure: {p}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
