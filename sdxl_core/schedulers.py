"""Schedulers by name, built from the model's own scheduler config, and recorded so they can be rebuilt.

``build_scheduler(name, model_config)`` follows the diffusers documentation: ``Class.from_config(
pipe.scheduler.config, **overrides)``, so the model's training schedule (betas, timestep spacing,
prediction type) is kept and only the sampler changes.

=================== ================================== ============================================
name                class                              overrides
=================== ================================== ============================================
``euler``           EulerDiscreteScheduler             none (SDXL 1.0's own scheduler)
``euler_a``         EulerAncestralDiscreteScheduler    none (draws noise each step from the image's
                                                       own generator)
``dpmpp_2m``        DPMSolverMultistepScheduler        ``algorithm_type="dpmsolver++"``, order 2
``dpmpp_2m_karras`` DPMSolverMultistepScheduler        as ``dpmpp_2m``, ``use_karras_sigmas=True``
``ddim``            DDIMScheduler                      none
=================== ================================== ============================================

``scheduler_record(scheduler)`` is the JSON-safe record (name-independent: class and full config);
``scheduler_from_record(record)`` rebuilds the identical scheduler. Non-finite floats in a config
(DPM-Solver's ``lambda_min_clipped = -inf``) are not valid JSON (PostgreSQL refuses them), so the
record writes them as the strings ``"inf"``, ``"-inf"``, ``"nan"`` and the rebuild reads them back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeAlias, cast

from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_euler_ancestral_discrete import EulerAncestralDiscreteScheduler
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler

# The scheduler classes built here (each a SchedulerMixin and a ConfigMixin, so with from_config and config).
Scheduler: TypeAlias = (
    DDIMScheduler | DPMSolverMultistepScheduler | EulerAncestralDiscreteScheduler | EulerDiscreteScheduler
)

SCHEDULERS: dict[str, tuple[type[Scheduler], dict[str, Any]]] = {
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "ddim": (DDIMScheduler, {}),
}
_CLASSES = {cls.__name__: cls for cls, _ in SCHEDULERS.values()}
_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def check_scheduler_name(name: object) -> str:
    if not isinstance(name, str) or name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; known schedulers: {', '.join(SCHEDULERS)}")
    return name


def _from_config(cls: type[Scheduler], config: dict[str, Any], **overrides: Any) -> Scheduler:
    # diffusers' ConfigMixin.from_config is annotated ``Self | tuple[Self, dict]``: the tuple is only
    # returned with return_unused_kwargs=True, which is never passed here.
    return cast(Scheduler, cls.from_config(config, **overrides))


def build_scheduler(name: str, model_config: Mapping[str, Any]) -> Scheduler:
    """The scheduler ``name`` on the model's own schedule (its scheduler config)."""
    cls, overrides = SCHEDULERS[check_scheduler_name(name)]
    return _from_config(cls, dict(model_config), **overrides)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return value


def scheduler_record(scheduler: Scheduler, name: str | None = None) -> dict[str, Any]:
    """{"name", "class", "config"}: JSON-safe, enough to rebuild the same scheduler."""
    return {"name": name, "class": type(scheduler).__name__, "config": _json_safe(dict(scheduler.config))}


def scheduler_from_record(record: Mapping[str, Any]) -> Scheduler:
    """Rebuild the scheduler a :func:`scheduler_record` describes."""
    cls = _CLASSES.get(record.get("class", ""))
    if cls is None:
        raise ValueError(f"recorded scheduler class {record.get('class')!r} is not one of {sorted(_CLASSES)}")
    config = {k: _NON_FINITE.get(v, v) if isinstance(v, str) else v for k, v in record["config"].items()}
    return _from_config(cls, config)


__all__ = ["SCHEDULERS", "build_scheduler", "check_scheduler_name", "scheduler_from_record", "scheduler_record"]
