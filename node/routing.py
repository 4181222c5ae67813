"""Routing rules: which tasks a received study gets (config file, first match per instance wins).

A rule matches an instance when every criterion it sets matches (case-insensitive
regular expressions, anchored; an empty alternative such as ``CHEST|`` also accepts
a missing value). ``series_kind`` matches what the series classifier recognised, so
``THORAX``, ``CHEST`` or a chest description all reach the chest rule. The study's
tasks and standing questions are the union over its instances' first matching rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medversa.dicom_mapping import (
    DEFAULT_RULE_NAMES,
    DEFAULT_TASKS,
    INTERACTIVE_TASKS,
    MODALITIES,
    SeriesKind,
    fits,
    kinds_for,
)
from medversa.inference import Task


@dataclass(frozen=True)
class InstanceFacts:
    modality: str
    body_part: str
    sop_class: str
    calling_ae: str
    study_description: str
    #: The classifier's kind (``SeriesKind`` value); empty when the classifier does not use it.
    series_kind: str = ""


@dataclass
class Routed:
    """What a study's matching rules ask for."""

    tasks: list[str] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)


def _matches(pattern: str | None, value: str) -> bool:
    if pattern is None:
        return True
    return re.fullmatch(pattern, value.strip(), flags=re.IGNORECASE) is not None


def rule_for(facts: InstanceFacts, rules: list[RoutingRule]) -> RoutingRule | None:
    for rule in rules:
        if (_matches(rule.series_kind, facts.series_kind) and _matches(rule.modality, facts.modality)
                and _matches(rule.body_part, facts.body_part)
                and _matches(rule.sop_class, facts.sop_class) and _matches(rule.calling_ae, facts.calling_ae)
                and (rule.study_description is None
                     or re.search(rule.study_description, facts.study_description, re.IGNORECASE))):
            return rule
    return None


def route(instances: list[InstanceFacts], rules: list[RoutingRule]) -> Routed:
    """Tasks and questions in rule order without repeats, and the names of the rules that matched."""
    routed = Routed()
    for facts in instances:
        rule = rule_for(facts, rules)
        if rule is None:
            continue
        if rule.name not in routed.rules:
            routed.rules.append(rule.name)
        routed.tasks += [t for t in rule.tasks if t not in routed.tasks]
        routed.questions += [q for q in rule.questions if q not in routed.questions]
    if routed.questions and Task.VQA.value not in routed.tasks:
        routed.tasks.append(Task.VQA.value)
    return routed


def tasks_for(instances: list[InstanceFacts], rules: list[RoutingRule]) -> tuple[list[str], list[str]]:
    """(tasks in rule order without repeats, names of the rules that matched)."""
    routed = route(instances, rules)
    return routed.tasks, routed.rules


def possible_kinds(rule: RoutingRule) -> list[SeriesKind]:
    """The series kinds an instance matching ``rule`` can be (by ``series_kind``, else by ``modality``)."""
    kinds = list(SeriesKind)
    if rule.series_kind is not None:
        kinds = [k for k in kinds if _matches(rule.series_kind, k.value)]
    if rule.modality is not None:
        kinds = [k for k in kinds if any(_matches(rule.modality, m) for m in MODALITIES[k])]
    return kinds


def rule_problems(rule: RoutingRule) -> list[str]:
    """Why ``rule`` cannot do what it says (empty when it can): `config check` refuses such a rule."""
    problems = []
    for pattern in (rule.series_kind, rule.modality, rule.body_part, rule.sop_class, rule.calling_ae,
                    rule.study_description):
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                problems.append(f"{pattern!r} is not a regular expression ({exc})")
    if problems:
        return problems
    kinds = possible_kinds(rule)
    if not kinds:
        problems.append(f"series_kind {rule.series_kind!r} / modality {rule.modality!r} match no series the node "
                        f"accepts (kinds: {[k.value for k in SeriesKind]})")
        return problems
    for name in rule.tasks:
        task = Task(name)
        if not any(fits(task, k) for k in kinds):
            problems.append(f"task {name} cannot run on {', '.join(k.value for k in kinds)} "
                            f"(it runs on {', '.join(k.value for k in kinds_for(task)) or 'nothing'})")
    if Task.REGION_CAPTIONING.value in rule.tasks:
        problems.append("task region_captioning needs a region a reader draws (an annotation sent to the node, "
                        "or `medversa ask --region`); a rule cannot supply one")
    if Task.VQA.value in rule.tasks and not rule.questions:
        problems.append("task vqa needs questions: give the rule `questions: [\"...\"]`")
    if rule.questions and not any(fits(Task.VQA, k) for k in kinds):
        problems.append(f"questions cannot be asked of {', '.join(k.value for k in kinds)}")
    if not rule.tasks and not rule.questions:
        problems.append("the rule names no tasks and no questions")
    return problems



class RoutingRule(BaseModel):
    """When a study matches (all given criteria, case-insensitive regexes), run ``tasks``.

    ``series_kind`` matches what the series classifier recognised (``chest_radiograph``,
    ``dermoscopy``, ``abdominal_ct``, ``ct``): the default rules use it, so every kind the
    classifier accepts is routed whatever its Modality/Body Part spelling. ``questions`` are
    asked (VQA) of every matching study and answered in its SR.
    """

    model_config = ConfigDict(extra="forbid")
    name: str
    series_kind: str | None = None
    modality: str | None = None
    body_part: str | None = None
    sop_class: str | None = None
    calling_ae: str | None = None
    study_description: str | None = None
    tasks: list[str] = Field(default_factory=list)
    questions: list[str] = Field(default_factory=list)

    @field_validator("tasks")
    @classmethod
    def _known(cls, tasks: list[str]) -> list[str]:
        known = {t.value for t in Task}
        unknown = [t for t in tasks if t not in known]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; known: {sorted(known)}")
        return tasks

    @model_validator(mode="after")
    def _runnable(self) -> RoutingRule:
        problems = rule_problems(self)
        if problems:
            raise ValueError(f"routing rule {self.name!r}: " + "; ".join(problems))
        return self


def default_rules() -> list[RoutingRule]:
    """One rule per series kind that has default tasks (dicom_mapping's routing table)."""
    return [RoutingRule(name=DEFAULT_RULE_NAMES[kind], series_kind=kind.value, tasks=[t.value for t in tasks])
            for kind, tasks in DEFAULT_TASKS.items() if tasks]

__all__ = ["INTERACTIVE_TASKS", "InstanceFacts", "Routed", "RoutingRule", "default_rules", "possible_kinds", "route",
           "rule_for", "rule_problems", "tasks_for"]
