"""Run every ``bench/bench_*.py`` in turn (each prints its own side-by-side ratios).

Run: make bench   (installs the `bench` extra, then this script)
"""

import pathlib
import subprocess
import sys

here = pathlib.Path(__file__).parent
failed = []
for script in sorted(here.glob("bench_*.py")):
    print(f"\n=== {script.name} ===", flush=True)
    if subprocess.call([sys.executable, str(script)]) != 0:
        failed.append(script.name)
if failed:
    print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    sys.exit(1)
