"""Every adapter's contract case. Each module defines FAULTS (the failure modes its upstream
really has) and `make_case()`, an async context manager yielding a ContractCase."""

from tests.contract.cases import fal, local_gpu

CASES = {"fal": fal, "local_gpu": local_gpu}
