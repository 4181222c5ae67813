"""The eleven MedVersa tasks and their instruction templates.

Templates are the paper's Table 5 (Zhou et al., Methods), used as data: ``_*_``
stands for the main image identifiers (``<img0>``...), ``-*-`` for the task
target (abnormality, box coordinates, reference images, detection or
segmentation classes). Three OCR slips in the paper's text are corrected and
exact duplicates removed. Inference uses each task's first template (the one the
paper's prompts were generated from); training samples among all of them.
"""

from __future__ import annotations

from enum import Enum, StrEnum


class TaskFamily(StrEnum):
    """The paper's seven task groups (Methods, domain-aware minibatches); each task belongs to one.

    A :class:`~enum.StrEnum`, so a member prints and serialises as its value ("detection").
    """

    REPORT_GENERATION = "report generation"
    CLASSIFICATION = "classification"
    DETECTION = "detection"
    SEGMENTATION = "segmentation"
    VQA = "vqa"
    REGION_CAPTIONING = "region captioning"
    LONGITUDINAL_COMPARISON = "longitudinal comparison"


class Task(str, Enum):  # noqa: UP042 (not StrEnum: str(Task.VQA) is "Task.VQA" where it is printed)
    """A MedVersa task (the paper's eleven, with report sections split)."""

    REPORT_FINDINGS = "report_findings"
    REPORT_IMPRESSION = "report_impression"
    REPORT_FULL = "report_full"
    CHEST_PATHOLOGY_CLASSIFICATION = "chest_pathology_classification"
    SKIN_LESION_CLASSIFICATION = "skin_lesion_classification"
    ANATOMY_DETECTION = "anatomy_detection"
    PATHOLOGY_DETECTION = "pathology_detection"
    CHEST_ORGAN_SEGMENTATION = "chest_organ_segmentation"
    SKIN_LESION_SEGMENTATION = "skin_lesion_segmentation"
    ABDOMINAL_ORGAN_SEGMENTATION = "abdominal_organ_segmentation"
    VQA = "vqa"
    REGION_CAPTIONING = "region_captioning"
    LONGITUDINAL_COMPARISON = "longitudinal_comparison"

    @property
    def family(self) -> TaskFamily:
        """The paper's task group this task belongs to (domain-aware minibatches)."""
        return _FAMILY[self]

    @property
    def uses_context(self) -> bool:
        """Report generation and classification wrap clinical context in <context> (utils.generate)."""
        return self.family in (TaskFamily.REPORT_GENERATION, TaskFamily.CLASSIFICATION)


class Modality(str, Enum):  # noqa: UP042 (as Task)
    CXR = "cxr"
    DERM = "derm"
    CT = "ct"

    @property
    def is_volume(self) -> bool:
        return self is Modality.CT


_FAMILY: dict[Task, TaskFamily] = {
    Task.REPORT_FINDINGS: TaskFamily.REPORT_GENERATION,
    Task.REPORT_IMPRESSION: TaskFamily.REPORT_GENERATION,
    Task.REPORT_FULL: TaskFamily.REPORT_GENERATION,
    Task.CHEST_PATHOLOGY_CLASSIFICATION: TaskFamily.CLASSIFICATION,
    Task.SKIN_LESION_CLASSIFICATION: TaskFamily.CLASSIFICATION,
    Task.ANATOMY_DETECTION: TaskFamily.DETECTION,
    Task.PATHOLOGY_DETECTION: TaskFamily.DETECTION,
    Task.CHEST_ORGAN_SEGMENTATION: TaskFamily.SEGMENTATION,
    Task.SKIN_LESION_SEGMENTATION: TaskFamily.SEGMENTATION,
    Task.ABDOMINAL_ORGAN_SEGMENTATION: TaskFamily.SEGMENTATION,
    Task.VQA: TaskFamily.VQA,
    Task.REGION_CAPTIONING: TaskFamily.REGION_CAPTIONING,
    Task.LONGITUDINAL_COMPARISON: TaskFamily.LONGITUDINAL_COMPARISON,
}

_FINDINGS = (
    "Can you detail the findings observed in _*_?",
    "Kindly enumerate the findings from _*_.",
    "I'd like a breakdown of the findings from _*_.",
    "I'd like a section on the findings derived from _*_.",
    "Please write a finding section for _*_.",
    "Would you please write a finding section for _*_?",
    "Please write a section of findings for _*_.",
    "Would you please write a section of findings for _*_?",
    "How would you characterize the findings from _*_?",
    "Please list the discernible findings from _*_?",
    "Can you compile a list of all the notable findings present in _*_?",
    "Please document any findings you see in _*_.",
)
_IMPRESSION = (
    "Can you please provide your overall impression of _*_?",
    "What's your main impression from _*_?",
    "Please draft a concise impression on _*_.",
    "Would you give a comprehensive impression based on _*_?",
    "I'm looking for an impression for _*_.",
    "Provide your diagnostic impression based on the _*_.",
    "Draft an impression for _*_.",
    "Would you please write an impression section for _*_?",
    "Summarize the impression for _*_.",
)
_FULL = (
    "Can you provide a radiology report for _*_?",
    "Please report _*_.",
    "Can you provide a report of _*_ with findings and impression?",
    "Report _*_ with findings and impression.",
    "Please write a radiology report for _*_.",
    "Please generate a radiology report for _*_.",
    "Please provide a detailed report for _*_.",
    "Can you provide a comprehensive report of _*_?",
    "Can you give a thorough report of _*_?",
    "Can you provide a comprehensive report for _*_?",
)
_CLASSIFICATION = (
    "What is the diagnosis for _*_?",
    "Based on _*_, what type of lung disease is suspected?",
    "Can you identify any abnormality in _*_?",
    "What pathology is indicated by _*_?",
    "What disease is likely present in _*_?",
    "What are your conclusions from _*_?",
    "What is your interpretation result of _*_?",
    "What abnormalities are present in _*_?",
    "What is the differential diagnosis for the findings in _*_?",
)
_REGION = (
    "Describe region -*- in _*_.",
    "Detail any abnormalities in -*- of _*_.",
    "Can you characterize the features within -*- on _*_?",
    "Please provide an analysis of the anomalies seen in -*- within _*_.",
    "Describe any pathological findings within -*- of _*_.",
    "Highlight and explain any abnormalities you detect in -*- of _*_.",
    "Identify and describe any abnormality in -*- of _*_.",
    "Could you please describe the region -*- in _*_?",
    "Would you please describe the region -*- in _*_?",
    "Give a description of the region -*- in _*_.",
)
_LONGITUDINAL = (
    "Highlight any difference in _*_ compared to the prior study -*-.",
    "Identify any progression in _*_ since the last study -*-.",
    "Compare the current study _*_ with the past one -*- and identify any difference between them.",
    "Present any changes in _*_ since the last study -*-.",
    "Detail any progression or regression in _*_ in comparison to the older study -*-.",
    "Detect changes in _*_ compared to the past study -*-.",
    "Compare _*_ with the prior study -*- and tell me any difference.",
)
_DETECTION = (
    "Detect any signs of -*- in _*_.",
    "Highlight the areas that indicate -*- in _*_.",
    "Show me the regions in _*_ where -*- might be present.",
    "Assess _*_ and mark areas consistent with -*- findings.",
    "Locate and circle any features of -*- in _*_.",
    "Compare _*_ to typical -*- patterns and highlight any matches.",
    "Detect and display potential symptoms of -*- within _*_.",
    "Is there any trace of -*- in _*_? Point it out.",
    "Help me spot -*- by illuminating its markers in _*_.",
    "Search for any characteristic signs of -*- in _*_.",
    "Examine and underscore the presence of -*- in _*_?",
    "Could you please help me locate -*- in _*_?",
    "Please help me locate -*- in _*_?",
)
_SEGMENTATION = (
    "Segment -*- in _*_.",
    "Highlight the boundaries of -*- in _*_.",
    "Isolate and show only -*- from _*_.",
    "Can you delineate -*- in _*_?",
    "Segment -*- from the given _*_.",
    "I need a clear segmentation of -*- in _*_, please.",
    "Outline the contours of -*- in _*_.",
    "Show a clear boundary around -*- in _*_.",
    "Separate -*- from the surrounding anatomy in _*_.",
    "Provide a segmented view of -*- in _*_.",
    "Provide a segment of -*- in _*_.",
    "Please identify and segment -*- from the rest in _*_.",
    "Give me a clear cutout of -*- in _*_.",
    "Please mask everything except for -*- in _*_.",
    "Show a boundary around -*- in _*_.",
    "Please help me segment -*- in _*_?",
    "Could you please help me segment -*- in _*_?",
)

#: Instruction templates per task (paper Table 5). VQA has none: the question is the request.
TEMPLATES: dict[Task, tuple[str, ...]] = {
    Task.REPORT_FINDINGS: _FINDINGS,
    Task.REPORT_IMPRESSION: _IMPRESSION,
    Task.REPORT_FULL: _FULL,
    Task.CHEST_PATHOLOGY_CLASSIFICATION: _CLASSIFICATION,
    Task.SKIN_LESION_CLASSIFICATION: _CLASSIFICATION,
    Task.ANATOMY_DETECTION: _DETECTION,
    Task.PATHOLOGY_DETECTION: _DETECTION,
    Task.CHEST_ORGAN_SEGMENTATION: _SEGMENTATION,
    Task.SKIN_LESION_SEGMENTATION: _SEGMENTATION,
    Task.ABDOMINAL_ORGAN_SEGMENTATION: _SEGMENTATION,
    Task.REGION_CAPTIONING: _REGION,
    Task.LONGITUDINAL_COMPARISON: _LONGITUDINAL,
}

MAIN_PLACEHOLDER = "_*_"
TARGET_PLACEHOLDER = "-*-"


def image_tag(index: int) -> str:
    return f"<img{index}>"


def fill_template(template: str, main_images: list[int], target: str = "") -> str:
    """Replace ``_*_`` by the main image tags and ``-*-`` by ``target``."""
    text = template.replace(MAIN_PLACEHOLDER, "".join(image_tag(i) for i in main_images))
    if TARGET_PLACEHOLDER in text:
        if not target:
            raise ValueError(f"template {template!r} needs a target")
        text = text.replace(TARGET_PLACEHOLDER, target)
    return text


def comparison_target(prior_images: list[int], details: str = "") -> str:
    """The ``-*-`` of a comparison template: the prior's image tags, then its date and description.

    ``details`` (e.g. "2024-03-02, CHEST PA") is written only for checkpoints trained with it
    (their declaration's ``prior_details``); training and the node both build the target here.
    """
    tags = "".join(image_tag(i) for i in prior_images)
    return f"{tags} ({details})" if details else tags


#: Chest tasks whose one request reads several views of a study at once (paper Fig. 1); how many a
#: checkpoint saw in training is its declared ``views_per_request``, at most :data:`MAX_VIEWS`.
MAX_VIEWS = 4
MULTI_VIEW_TASKS: tuple[Task, ...] = (Task.REPORT_FINDINGS, Task.REPORT_IMPRESSION, Task.REPORT_FULL,
                                      Task.CHEST_PATHOLOGY_CLASSIFICATION)


def join_targets(names: list[str]) -> str:
    """'a', 'a and b', 'a, b and c' — how several classes are asked for in one request."""
    names = [n for n in names if n]
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def format_region(box: tuple[float, float, float, float], width: int, height: int) -> str:
    """A box in source pixels written as the model reads it.

    Detection targets in the published training code are normalised
    ``x0,y0,x1,y1`` in [0, 1] (``trans_det``); region-of-interest captioning takes
    the box in the same normalised form, two decimals, in brackets.
    """
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"region {box} is not a box inside the {width}x{height} image")
    vals = (x0 / width, y0 / height, x1 / width, y1 / height)
    return "[" + ", ".join(f"{v:.2f}" for v in vals) + "]"
