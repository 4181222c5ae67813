"""Routing rules: which tasks a received study gets (config file, first match per series wins).

A rule matches an instance when every criterion it sets matches (case-insensitive
regular expressions, anchored; an empty alternative such as ``CHEST|`` also accepts
a missing value). The study's tasks are the union over its instances' first
matching rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .config import RoutingRule


@dataclass(frozen=True)
class InstanceFacts:
    modality: str
    body_part: str
    sop_class: str
    calling_ae: str
    study_description: str


def _matches(pattern: str | None, value: str) -> bool:
    if pattern is None:
        return True
    return re.fullmatch(pattern, value.strip(), flags=re.IGNORECASE) is not None


def rule_for(facts: InstanceFacts, rules: list[RoutingRule]) -> RoutingRule | None:
    for rule in rules:
        if (_matches(rule.modality, facts.modality) and _matches(rule.body_part, facts.body_part)
                and _matches(rule.sop_class, facts.sop_class) and _matches(rule.calling_ae, facts.calling_ae)
                and (rule.study_description is None
                     or re.search(rule.study_description, facts.study_description, re.IGNORECASE))):
            return rule
    return None


def tasks_for(instances: list[InstanceFacts], rules: list[RoutingRule]) -> tuple[list[str], list[str]]:
    """(tasks in rule order without repeats, names of the rules that matched)."""
    tasks: list[str] = []
    names: list[str] = []
    for facts in instances:
        rule = rule_for(facts, rules)
        if rule is None:
            continue
        if rule.name not in names:
            names.append(rule.name)
        for task in rule.tasks:
            if task not in tasks:
                tasks.append(task)
    return tasks, names
