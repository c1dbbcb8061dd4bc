"""dht_fast: fused, batched kernels for iterative machine teaching by data hallucination."""
from dht_fast.ops.backends import BackendUnavailable
from dht_fast.ops.linear_objective import (
    TeachingObjective,
    linear_teaching_objective,
    logistic_as_softmax,
)
from dht_fast.ops.model_objective import (
    directional_inner,
    per_sample_grad_norm_sq,
    teaching_objective,
)
from dht_fast.ops.performative import head_lookahead, performative_solve, sphere_project
from dht_fast.teachers.performative import PerformativeTeacher, random_cap_point

__all__ = [
    "BackendUnavailable",
    "PerformativeTeacher",
    "TeachingObjective",
    "directional_inner",
    "head_lookahead",
    "linear_teaching_objective",
    "logistic_as_softmax",
    "per_sample_grad_norm_sq",
    "performative_solve",
    "random_cap_point",
    "sphere_project",
    "teaching_objective",
]
__version__ = "0.1.0"
