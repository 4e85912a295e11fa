"""The request matrix, through each backend in the namespace runtime, against Policy.decide.

One fence per backend and profile; every case's every response is judged by
reference.judge. Any bypass or unexplained difference fails, listing all of them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conformance import cases
from tests.conformance.fences import Canary, FenceGetter, both_privileges
from tests.conformance.reference import Case, Observed, judge, observe

# Against root's fences, and again against rootless ones (issue 17).
pytestmark = [pytest.mark.integration, both_privileges]

MATRICES: dict[str, Callable[[Path, int], list[Case]]] = {
    "allow": cases.allowlist_matrix,
    "network": cases.network_matrix,
    "ports": lambda ca, _port: cases.ports_matrix(ca),
    "none": lambda ca, _port: cases.none_matrix(ca),
}


# Which documented rule accepted which difference, per backend: printed at the end of the
# session (pytest -s shows it) so that a reader sees every difference the suite accepted.
ACCEPTED: Counter[tuple[str, str, str]] = Counter()


def run_matrix(proxy: str, fence: FenceGetter, profile: str, matrix: list[Case],
               canary: Canary) -> list[str]:
    running, policy = fence(profile)
    results = running.send([c.wire for c in matrix])
    failures: list[str] = []
    for case, result in zip(matrix, results, strict=True):
        earlier: list[Observed] = []
        for index in range(len(case.targets)):
            seen = observe(result, index)
            verdict = judge(proxy, policy, case, index, seen, earlier)
            earlier.append(seen)
            if not verdict.ok:
                failures.append(verdict.message)
            elif verdict.rule:
                ACCEPTED[(proxy, profile, verdict.rule)] += 1
    failures += [f"CANARY hit on the host: {hit}" for hit in canary.hits]
    return failures


@pytest.mark.parametrize("profile", list(MATRICES))
def test_matrix_agrees_with_the_policy(proxy: str, fence: FenceGetter, profile: str,
                                       ca: Path, canary: Canary) -> None:
    matrix = MATRICES[profile](ca, canary.port)
    assert len({c.id for c in matrix}) == len(matrix)
    failures = run_matrix(proxy, fence, profile, matrix, canary)
    assert not failures, f"{len(failures)} of {len(matrix)} cases:\n" + "\n".join(failures)


@pytest.fixture(scope="module", autouse=True)
def accepted_differences() -> Iterator[None]:
    yield
    for (proxy, profile, rule), count in sorted(ACCEPTED.items()):
        print(f"accepted {proxy}/{profile}: {count} x {rule}")
