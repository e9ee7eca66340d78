"""Pure LR schedules, warmup and the per-step plan the trainer adapter applies (no torch, no matplotlib)."""

from __future__ import annotations

from detune.schedules._base import ParamSpec, Schedule
from detune.schedules._plan import INTERVALS, Interval, LRPlan, build_plan
from detune.schedules._plot import key_points, peak_lr, plot, plot_groups
from detune.schedules._registry import (
    ScheduleInfo,
    build_schedule,
    create_schedule,
    get_schedule_info,
    list_schedules,
    schedule_params,
)
from detune.schedules._warmup import LinearWarmup

__all__ = [
    "INTERVALS",
    "Interval",
    "LRPlan",
    "LinearWarmup",
    "ParamSpec",
    "Schedule",
    "ScheduleInfo",
    "build_plan",
    "build_schedule",
    "create_schedule",
    "get_schedule_info",
    "key_points",
    "list_schedules",
    "peak_lr",
    "plot",
    "plot_groups",
    "schedule_params",
]
