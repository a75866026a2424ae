"""The cnnops benchmark tool: ``python -m cnnops.bench``.

cnnops and torch run side by side in one process on the same inputs, in interleaved
rounds, each side's best kept (DESIGN.md section 5). Each case is first checked against
torch; every row of the table says whether it was correct.

Op families live one per module, ``cnnops/bench/<family>.py``, each with a
``cases(quick) -> list[Case]`` function; a new family is one more name in
``cnnops.bench.core.FAMILIES``.
"""
from cnnops.bench.core import FAMILIES, Case, Options, load_cases, main, run_cases

__all__ = ["FAMILIES", "Case", "Options", "load_cases", "main", "run_cases"]
