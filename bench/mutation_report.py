"""The mutation score of the rule modules, after `mutmut run` (`make mutation` runs both).

Prints the score per module (killed / mutants, those in code no selected test runs included; a timeout
counts as killed, as mutmut counts it)
and every mutant no test kills (survived, or in code no selected test runs) with its diff, each marked
with its explanation where bench/mutation_explained/<module>.json has one (keyed by module, function
and the mutated line: an equivalent mutant, or a line whose wording no rule depends on), and writes
bench/results/mutation.json. Exit code 1 when such a mutant has no explanation.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTMUT = [sys.executable, "-m", "mutmut"]
EXPLAINED = ROOT / "bench" / "mutation_explained"  # one JSON object per module: "module::function::line" -> why
_NAME = re.compile(r"^\s+(?P<name>[\w.]+__mutmut_\d+): (?P<status>[\w ]+)$")


def mutmut(*args: str) -> str:
    return subprocess.run([*MUTMUT, *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def module_and_function(name: str) -> tuple[str, str]:
    """`shared.reaper.x_decide__mutmut_12` -> ("shared/reaper.py", "decide")."""
    dotted, _, _ = name.partition("__mutmut_")
    module, _, function = dotted.rpartition(".")
    function = re.sub(r"^x[ǁ_]", "", function).replace("ǁ", ".")
    return module.replace(".", "/") + ".py", function


def mutated_line(diff: str) -> str:
    added = [line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    return added[0] if added else ""


def main() -> int:
    statuses = {m["name"]: m["status"] for line in mutmut("results", "--all", "true").splitlines()
                if (m := _NAME.match(line))}
    if not statuses:
        print("no mutation results: run `mutmut run` first (make mutation)")
        return 1
    explained = {k: v for f in sorted(EXPLAINED.glob("*.json")) for k, v in json.loads(f.read_text()).items()}
    per_module: dict[str, Counter] = defaultdict(Counter)
    survivors = []
    for name, status in sorted(statuses.items()):
        module, function = module_and_function(name)
        per_module[module][status] += 1
        if status in ("survived", "no tests"):
            diff = mutmut("show", name)
            line = mutated_line(diff)
            why = explained.get(f"{module}::{function}::{line}")
            survivors.append({"name": name, "status": status, "module": module, "function": function, "line": line,
                              "explained": why, "diff": diff})
    print(f"{'module':<22}{'mutants':>9}{'killed':>8}{'survived':>10}{'no tests':>10}{'score':>8}")
    totals = Counter()
    rows = {}
    for module, counts in sorted(per_module.items()):
        killed = counts["killed"] + counts["timeout"]
        ran = killed + counts["survived"] + counts["no tests"]
        totals.update(counts)
        rows[module] = {**counts, "score": round(killed / ran, 3) if ran else None}
        print(f"{module:<22}{sum(counts.values()):>9}{killed:>8}{counts['survived']:>10}{counts['no tests']:>10}"
              f"{killed / ran if ran else 0:>8.1%}")
    killed = totals["killed"] + totals["timeout"]
    ran = killed + totals["survived"] + totals["no tests"]
    print(f"{'all':<22}{sum(totals.values()):>9}{killed:>8}{totals['survived']:>10}{totals['no tests']:>10}"
          f"{killed / ran if ran else 0:>8.1%}")
    unexplained = [s for s in survivors if not s["explained"]]
    for s in survivors:
        print(f"\n{s['name']} [{s['status']}] ({'explained: ' + s['explained'] if s['explained'] else 'NOT EXPLAINED'})\n{s['diff']}")
    out = ROOT / "bench" / "results" / "mutation.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"score": round(killed / ran, 4) if ran else None, "modules": rows,
                               "survivors": [{k: v for k, v in s.items() if k != "diff"} for s in survivors]},
                              indent=2))
    print(f"\nscore {killed}/{ran} = {killed / ran if ran else 0:.1%}; {len(survivors)} not killed (survived or no tests), "
          f"{len(unexplained)} without an explanation; {out}")
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
