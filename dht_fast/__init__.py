"""dht_fast: fused, batched kernels for iterative machine teaching by data hallucination."""
from dht_fast.ops.backends import BackendUnavailable
from dht_fast.ops.linear_objective import (
    TeachingObjective,
    linear_teaching_objective,
    logistic_as_softmax,
)

__all__ = [
    "BackendUnavailable",
    "TeachingObjective",
    "linear_teaching_objective",
    "logistic_as_softmax",
]
__version__ = "0.1.0"
