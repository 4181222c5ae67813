"""The one routing table: which MedVersa tasks can run, and run by default, on each kind of series.

Every kind the series classifier (:mod:`.series`) accepts has a row. The node's default routing
rules are built from :data:`DEFAULT_TASKS`, its configuration check refuses a rule whose task
fits none of the kinds the rule can match (:data:`RUNNABLE_TASKS`), and planning drops a task
that does not fit an image's kind.
"""

from __future__ import annotations

from medversa.inference import Task

from .references import SeriesKind

#: What can run on each kind (VQA needs a question, region captioning a region).
RUNNABLE_TASKS: dict[SeriesKind, frozenset[Task]] = {
    SeriesKind.CHEST_RADIOGRAPH: frozenset({
        Task.REPORT_FINDINGS, Task.REPORT_IMPRESSION, Task.REPORT_FULL, Task.CHEST_PATHOLOGY_CLASSIFICATION,
        Task.ANATOMY_DETECTION, Task.PATHOLOGY_DETECTION, Task.CHEST_ORGAN_SEGMENTATION, Task.VQA,
        Task.REGION_CAPTIONING, Task.LONGITUDINAL_COMPARISON}),
    SeriesKind.DERMOSCOPY: frozenset({Task.SKIN_LESION_CLASSIFICATION, Task.SKIN_LESION_SEGMENTATION, Task.VQA,
                                      Task.REGION_CAPTIONING}),
    SeriesKind.ABDOMINAL_CT: frozenset({Task.ABDOMINAL_ORGAN_SEGMENTATION}),
    SeriesKind.CT: frozenset(),
}

#: What runs on each kind when the configuration names no rules (the checkpoint's declaration
#: then removes what it was not trained for). A CT without abdominal coverage has no MedVersa task.
DEFAULT_TASKS: dict[SeriesKind, tuple[Task, ...]] = {
    SeriesKind.CHEST_RADIOGRAPH: (
        Task.REPORT_FINDINGS, Task.REPORT_IMPRESSION, Task.CHEST_PATHOLOGY_CLASSIFICATION,
        Task.CHEST_ORGAN_SEGMENTATION, Task.PATHOLOGY_DETECTION, Task.LONGITUDINAL_COMPARISON,
    ),
    SeriesKind.DERMOSCOPY: (Task.SKIN_LESION_CLASSIFICATION, Task.SKIN_LESION_SEGMENTATION),
    SeriesKind.ABDOMINAL_CT: (Task.ABDOMINAL_ORGAN_SEGMENTATION,),
    SeriesKind.CT: (),
}

#: Rule names of the default routing, per kind.
DEFAULT_RULE_NAMES: dict[SeriesKind, str] = {
    SeriesKind.CHEST_RADIOGRAPH: "chest radiograph",
    SeriesKind.DERMOSCOPY: "dermoscopy",
    SeriesKind.ABDOMINAL_CT: "abdominal CT",
    SeriesKind.CT: "CT without abdominal coverage",
}

#: Modality values under which the classifier accepts each kind (PS3.3 C.7.3.1.1.1).
MODALITIES: dict[SeriesKind, tuple[str, ...]] = {
    SeriesKind.CHEST_RADIOGRAPH: ("CR", "DX"),
    SeriesKind.DERMOSCOPY: ("XC", "DMS", "OT"),
    SeriesKind.ABDOMINAL_CT: ("CT",),
    SeriesKind.CT: ("CT",),
}

#: Tasks that need input from a person (a question, a region), never a rule's task list alone.
INTERACTIVE_TASKS = frozenset({Task.VQA, Task.REGION_CAPTIONING})


def fits(task: Task, kind: SeriesKind) -> bool:
    """Whether ``task`` can run on a series of ``kind``."""
    return task in RUNNABLE_TASKS[kind]


def kinds_for(task: Task) -> list[SeriesKind]:
    """The kinds ``task`` can run on (for messages)."""
    return [kind for kind, tasks in RUNNABLE_TASKS.items() if task in tasks]
