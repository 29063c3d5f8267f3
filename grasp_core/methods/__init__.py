"""Methods compared on one target budget: GRASP and its controls, registered in METHODS."""

from grasp_core.methods import (  # noqa: F401,E402
    averaging,
    best_single,
    ensemble,
    grasp_method,
    opcm,
    target_only,
    task_arithmetic,
    ties,
)
from grasp_core.methods.common import (
    METHODS,
    MethodContext,
    MethodOutput,
    MethodResult,
    get_method,
    register_merge,
    register_method,
    run_method,
    stage_epochs,
)

__all__ = ["METHODS", "MethodContext", "MethodOutput", "MethodResult", "get_method", "register_merge",
           "register_method", "run_method", "stage_epochs"]
