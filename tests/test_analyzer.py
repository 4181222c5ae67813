"""Every task path of the eleven, end to end on the tiny model (planted answers make the modules run)."""

import numpy as np
import pytest

from medversa.inference import ImageInput, Modality, Task, TaskRequest
from medversa.inference.generation import ForcedTokens


def _run(analyzer, request, *answers):
    choose = ForcedTokens([analyzer.tokenizer.encode(a) for a in answers]) if answers else None
    return analyzer.run([request], **({"choose": choose} if choose else {}))[0]


@pytest.fixture()
def cxr(rng):
    return ImageInput(rng.integers(0, 256, (300, 250), dtype=np.uint8), source_id="cxr-1")


@pytest.mark.parametrize("task, expected_prompt", [
    (Task.REPORT_FINDINGS, "Can you detail the findings observed in <img0>?"),
    (Task.REPORT_IMPRESSION, "Can you please provide your overall impression of <img0>?"),
    (Task.REPORT_FULL, "Can you provide a radiology report for <img0>?"),
])
def test_report_generation_returns_the_text_before_the_end_symbol(tiny_analyzer, cxr, task, expected_prompt):
    request = TaskRequest(task, Modality.CXR, [cxr], context="Age: 70. Indication: dyspnea.")
    assert request.prompts() == [("", expected_prompt)]
    answer = _run(tiny_analyzer, request, "The lungs are clear. No effusion.###ignored")
    assert answer.text == "The lungs are clear. No effusion."
    assert answer.complete and not answer.boxes


def test_report_prompt_wraps_context_as_published(tiny_analyzer, cxr):
    from medversa.inference import build_prompt_ids

    prompt = build_prompt_ids(tiny_analyzer.tokenizer, 1, "Q?", "Age: 70.", True)
    text = tiny_analyzer.tokenizer.decode(prompt.ids)
    assert text.replace(" ", "").endswith("</img0><context>Age:70.</context>Q?###Assistant:")
    assert text.startswith("<s>") and text.count("<ImageHere>") == 9


@pytest.mark.parametrize("task, modality", [
    (Task.CHEST_PATHOLOGY_CLASSIFICATION, Modality.CXR),
    (Task.SKIN_LESION_CLASSIFICATION, Modality.DERM),
])
def test_classification_returns_diagnosis_text(tiny_analyzer, rng, task, modality):
    shape = (200, 240, 3) if modality is Modality.DERM else (200, 240)
    request = TaskRequest(task, modality, [ImageInput(rng.integers(0, 256, shape, dtype=np.uint8))])
    answer = _run(tiny_analyzer, request, "The main diagnosis is melanoma.###")
    assert answer.text == "The main diagnosis is melanoma."


@pytest.mark.parametrize("task", [Task.ANATOMY_DETECTION, Task.PATHOLOGY_DETECTION])
def test_detection_gives_one_box_per_det_token_in_source_pixels(tiny_analyzer, cxr, task):
    request = TaskRequest(task, Modality.CXR, [cxr], targets=("left lung", "right lung", "pleural effusion"))
    assert request.prompts()[0][1] == "Detect any signs of left lung, right lung and pleural effusion in <img0>."
    answer = _run(tiny_analyzer, request, "left lung <DET>, right lung <DET>, pleural effusion <N/A>.###")
    assert [b.label for b in answer.boxes] == ["left lung", "right lung"]
    assert answer.absent == ["pleural effusion"]
    for box in answer.boxes:
        assert 0 <= box.x0 <= box.x1 <= cxr.cols and 0 <= box.y0 <= box.y1 <= cxr.rows
    assert "<DET>" not in answer.plain_text


def test_chest_organ_segmentation_gives_a_mask_per_organ_in_source_size(tiny_analyzer, cxr):
    request = TaskRequest(Task.CHEST_ORGAN_SEGMENTATION, Modality.CXR, [cxr])
    organs = ["left lung", "right lung", "heart"]
    assert [t for t, _ in request.prompts()] == organs
    answer = _run(tiny_analyzer, request, *[f"The segmentation mask of {o} is <2DSEG>.###" for o in organs])
    assert [m.label for m in answer.masks_2d] == organs
    for m in answer.masks_2d:
        assert m.mask.shape == (cxr.rows, cxr.cols) and m.mask.dtype == bool


def test_skin_lesion_segmentation_gives_a_mask_in_source_size(tiny_analyzer, rng):
    derm = ImageInput(rng.integers(0, 256, (150, 210, 3), dtype=np.uint8))
    answer = _run(tiny_analyzer, TaskRequest(Task.SKIN_LESION_SEGMENTATION, Modality.DERM, [derm]),
                  "The segmentation mask of skin lesion is <2DSEG>.###")
    assert [m.label for m in answer.masks_2d] == ["skin lesion"]
    assert answer.masks_2d[0].mask.shape == (150, 210)


def test_abdominal_segmentation_gives_a_mask_in_the_source_volume_shape(tiny_analyzer, rng):
    ct = ImageInput(rng.normal(40, 150, (18, 70, 90)).astype(np.float32), volume=True)
    request = TaskRequest(Task.ABDOMINAL_ORGAN_SEGMENTATION, Modality.CT, [ct], targets=("liver", "spleen"))
    answer = _run(tiny_analyzer, request, "The segmentation mask of liver is <3DSEG>.###",
                  "The segmentation mask of spleen is <3DSEG>.###")
    assert [m.label for m in answer.masks_3d] == ["liver", "spleen"]
    for m in answer.masks_3d:
        assert m.mask.shape == (18, 70, 90) and m.mask.dtype == bool


def test_vqa_answers_the_question(tiny_analyzer, cxr):
    request = TaskRequest(Task.VQA, Modality.CXR, [cxr], question="Is there a pleural effusion in <img0>?")
    answer = _run(tiny_analyzer, request, "No, there is no pleural effusion.###")
    assert answer.text == "No, there is no pleural effusion."


def test_region_caption_puts_the_box_in_normalised_coordinates(tiny_analyzer, cxr):
    request = TaskRequest(Task.REGION_CAPTIONING, Modality.CXR, [cxr], region=(25, 30, 125, 150))
    assert request.prompts()[0][1] == "Describe region [0.10, 0.10, 0.50, 0.50] in <img0>."
    answer = _run(tiny_analyzer, request, "Patchy opacity in the right upper lobe.###")
    assert answer.text == "Patchy opacity in the right upper lobe."


def test_region_outside_the_image_is_rejected(cxr):
    with pytest.raises(ValueError, match="not a box inside"):
        TaskRequest(Task.REGION_CAPTIONING, Modality.CXR, [cxr], region=(0, 0, 999, 10)).prompts()


def test_longitudinal_comparison_with_four_images(tiny_analyzer, rng):
    images = [ImageInput(rng.integers(0, 256, (128, 128), dtype=np.uint8)) for _ in range(4)]
    request = TaskRequest(Task.LONGITUDINAL_COMPARISON, Modality.CXR, images, num_current=2)
    assert request.prompts()[0][1] == ("Highlight any difference in <img0><img1> "
                                       "compared to the prior study <img2><img3>.")
    answer = _run(tiny_analyzer, request, "The effusion has decreased.###")
    assert answer.text == "The effusion has decreased."


def test_longitudinal_without_a_prior_is_rejected(cxr):
    with pytest.raises(ValueError, match="prior"):
        TaskRequest(Task.LONGITUDINAL_COMPARISON, Modality.CXR, [cxr], num_current=1)


def test_unplanted_greedy_generation_runs_and_is_deterministic(tiny_analyzer, cxr):
    request = TaskRequest(Task.REPORT_FULL, Modality.CXR, [cxr])
    first, second = tiny_analyzer.run([request, request])
    assert first.text == second.text and first.generated_tokens > 0


def test_requests_of_different_tasks_come_back_in_order(tiny_analyzer, cxr, rng):
    ct = ImageInput(rng.normal(0, 100, (8, 32, 32)).astype(np.float32), volume=True)
    reqs = [TaskRequest(Task.REPORT_FULL, Modality.CXR, [cxr], request_id="a"),
            TaskRequest(Task.ABDOMINAL_ORGAN_SEGMENTATION, Modality.CT, [ct], targets=("liver",), request_id="b"),
            TaskRequest(Task.VQA, Modality.CXR, [cxr], question="Normal?", request_id="c")]
    assert [a.request_id for a in tiny_analyzer.run(reqs)] == ["a", "b", "c"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(task=Task.VQA, modality=Modality.CXR), "question"),
    (dict(task=Task.ABDOMINAL_ORGAN_SEGMENTATION, modality=Modality.CXR), "CT volumes"),
    (dict(task=Task.REGION_CAPTIONING, modality=Modality.CXR), "region"),
])
def test_malformed_requests_fail_with_a_clear_message(cxr, kwargs, message):
    with pytest.raises(ValueError, match=message):
        TaskRequest(images=[cxr], **kwargs)


def test_ct_request_needs_a_volume(cxr):
    with pytest.raises(ValueError, match="volumes"):
        TaskRequest(Task.ABDOMINAL_ORGAN_SEGMENTATION, Modality.CT, [cxr])


def test_a_class_boxed_twice_in_the_same_place_keeps_one_box_when_the_config_asks():
    from medversa.inference.boxes import box_overlap, duplicate_boxes

    assert box_overlap((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_overlap((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    boxes = [("right lung", (20.0, 60.0, 240.0, 420.0)), ("Right  Lung", (22.0, 58.0, 238.0, 424.0)),
             ("left lung", (270.0, 60.0, 480.0, 420.0)), ("right lung", (300.0, 60.0, 480.0, 420.0)),
             ("right lung", (21.0, 59.0, 239.0, 421.0))]
    # The repeat of the first right lung goes (twice); a right-lung box elsewhere and the left lung stay.
    assert duplicate_boxes(boxes, 0.5) == {1, 4}
    assert duplicate_boxes(boxes, 0.999) == set()


def test_the_demo_preset_merges_repeated_boxes_and_the_official_configuration_does_not():
    from medversa.inference import create_config

    assert create_config("demo").generation.duplicate_box_iou == 0.5
    assert create_config("medversa-7b").generation.duplicate_box_iou is None
