"""`python -m tests.figures FILE`: print the security figures the tests recorded, summed by name."""

from __future__ import annotations

import json
import sys
from collections import Counter


def main(path: str) -> None:
    totals: Counter[str] = Counter()
    with open(path) as handle:
        for line in handle:
            row = json.loads(line)
            totals[row["name"]] += row["value"]
    width = max((len(name) for name in totals), default=0)
    print("\nSecurity figures")
    for name in sorted(totals):
        print(f"  {name:<{width}}  {totals[name]:>8}")


if __name__ == "__main__":
    main(sys.argv[1])
