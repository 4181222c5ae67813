"""One vocabulary of class phrases (``medversa.inference``): training maps onto it, the result codes cover it.

The phrases are defined once; these tests check that every room's use of them agrees: each
phrase has a coded concept (never the private fallback where the tables define one), each
source label maps to a phrase, and each request's default targets are phrases the model knows.
"""

from __future__ import annotations

import numpy as np
import pytest

from medversa.dicom_mapping import codes
from medversa.inference import (
    ABDOMINAL_ORGANS,
    CHEST_ANATOMIES,
    CHEST_ORGANS,
    CHEST_PATHOLOGIES,
    DEFAULT_TARGETS,
    SEGMENTED_STRUCTURES,
    SKIN_LESION_ABBREVIATIONS,
    SKIN_LESION_CLASSES,
    ImageInput,
    Modality,
    Task,
    TaskRequest,
)
from medversa.training import vocabulary as training_vocabulary

ALL_PHRASES = {*CHEST_ANATOMIES, *CHEST_PATHOLOGIES, *SKIN_LESION_CLASSES, *SEGMENTED_STRUCTURES}


def test_phrases_are_distinct_lower_case_and_counted_as_the_paper_lists_them() -> None:
    for table, size in ((CHEST_ANATOMIES, 36), (CHEST_PATHOLOGIES, 33), (SKIN_LESION_CLASSES, 7),
                        (SEGMENTED_STRUCTURES, 8)):
        assert len(table) == len(set(table)) == size
        assert all(p == p.strip().lower() and p for p in table)


def test_every_pathology_and_skin_class_has_a_code_in_vocabulary_order() -> None:
    assert tuple(codes.CHEST_PATHOLOGIES) == CHEST_PATHOLOGIES
    assert tuple(codes.SKIN_LESION_CLASSES) == SKIN_LESION_CLASSES
    for phrase in (*CHEST_PATHOLOGIES, *SKIN_LESION_CLASSES):
        code = codes.finding_code(phrase)
        assert code.value and code.meaning, phrase
        assert code.scheme_designator in ("SCT", "DCM", "99MEDVERSA"), phrase
        assert code is (codes.CHEST_PATHOLOGIES | codes.SKIN_LESION_CLASSES)[phrase]


def test_every_segmented_structure_has_a_category_and_a_snomed_type() -> None:
    assert tuple(codes.SEGMENTED_STRUCTURES) == SEGMENTED_STRUCTURES == (*CHEST_ORGANS, *ABDOMINAL_ORGANS,
                                                                         "skin lesion")
    for phrase in SEGMENTED_STRUCTURES:
        assert codes.segment_codes(phrase).type.scheme_designator == "SCT", phrase


def test_skin_abbreviations_code_as_their_class() -> None:
    for abbreviation, phrase in SKIN_LESION_ABBREVIATIONS.items():
        assert codes.finding_code(abbreviation) is codes.SKIN_LESION_CLASSES[phrase]


@pytest.mark.parametrize("task", sorted(DEFAULT_TARGETS, key=lambda t: t.value))
def test_default_targets_are_vocabulary_phrases_with_a_code(task: Task) -> None:
    targets = DEFAULT_TARGETS[task]
    modality, image = {Task.ABDOMINAL_ORGAN_SEGMENTATION: (Modality.CT, ImageInput(np.zeros((2, 4, 4)), volume=True)),
                       Task.SKIN_LESION_SEGMENTATION: (Modality.DERM, ImageInput(np.zeros((4, 4), np.uint8)))}.get(
        task, (Modality.CXR, ImageInput(np.zeros((4, 4), np.uint8))))
    assert TaskRequest(task=task, modality=modality, images=[image]).targets == targets  # what a request asks
    known = set(CHEST_ANATOMIES) | set(CHEST_PATHOLOGIES) | set(SEGMENTED_STRUCTURES)
    assert set(targets) <= known, set(targets) - known
    tables = (codes.CHEST_PATHOLOGIES, codes.ANATOMY_FINDINGS, codes.SEGMENTED_STRUCTURES)
    assert [t for t in targets if not any(t in table for table in tables)] == []  # coded by a table, not guessed


def test_training_builds_on_the_same_phrases() -> None:
    assert training_vocabulary.CHEST_PATHOLOGIES is CHEST_PATHOLOGIES
    assert training_vocabulary.CHEST_ANATOMIES is CHEST_ANATOMIES
    assert training_vocabulary.SKIN_LESION_CLASSES is SKIN_LESION_CLASSES
    assert training_vocabulary.HAM10000_DX == SKIN_LESION_ABBREVIATIONS
    source_labels = [*training_vocabulary.IMAGENOME_FINDINGS.values(), *training_vocabulary.NIH_FINDINGS.values(),
                     *training_vocabulary.MS_CXR_CATEGORIES.values(),
                     *(p for p in training_vocabulary.CHEXPERT_OBSERVATIONS.values() if p)]
    assert set(source_labels) <= set(CHEST_PATHOLOGIES)
    assert set(training_vocabulary.CHEXMASK_STRUCTURES.values()) == set(CHEST_ORGANS)
    assert set(training_vocabulary.ABDOMEN_ORGANS) == set(ABDOMINAL_ORGANS)
    assert set(training_vocabulary.ISIC2018_COLUMNS.values()) == set(SKIN_LESION_CLASSES)


def test_a_code_table_that_misses_a_phrase_fails_loudly() -> None:
    with pytest.raises(ValueError, match=r"phrases without a code \['b'\], codes for no phrase \['c'\]"):
        codes._by_phrase(("a", "b"), {"a": 1, "c": 2}, "test")
    assert list(codes._by_phrase(("b", "a"), {"a": 1, "b": 2}, "test")) == ["b", "a"]
