"""`python -m tests.figures FILE`: print the security figures the tests recorded.

Counts are summed by name; measurements recorded with `worst=True` show their largest value.
"""

from __future__ import annotations

import json
import sys
from collections import Counter


def main(path: str) -> None:
    totals: Counter[str] = Counter()
    with open(path) as handle:
        for line in handle:
            row = json.loads(line)
            name, value = row["name"], row["value"]
            if row.get("how") == "max":
                totals[name] = max(totals.get(name, value), value)
            else:
                totals[name] += value
    width = max((len(name) for name in totals), default=0)
    print("\nSecurity figures")
    for name in sorted(totals):
        value = totals[name]
        shown = f"{value:>8}" if isinstance(value, int) else f"{value:>8.1f}"
        print(f"  {name:<{width}}  {shown}")


if __name__ == "__main__":
    main(sys.argv[1])
