"""The bundled model reads a radiograph as a radiograph even when its DICOM says little (issue 12).

A hospital's DICOM often lacks View Position, Patient's Sex or Age (anonymised or minimal headers).
The model before `demo-context` had only seen radiographs with their full context and dermoscopy
images with none: asked for the findings of a radiograph without a View, it answered "melanoma" on
every one of the 430 training radiographs. Checked on TRAIN-split radiographs with notes (the holdout
is for the model card's scores), with the context the node would render from such headers.
"""

from __future__ import annotations

import dataclasses

from medversa.inference import ImageInput, Modality, Task, TaskRequest, load_analyzer, render_context
from medversa.training.datasets.medinterp_mini import read_cxr_notes
from medversa.training.evaluate import confused
from medversa.training.records import ReportRecord

from .conftest import SHARED, need

MINI = SHARED / "data" / "medinterp-mini"
#: What the headers still say: nothing, the sex alone, the age alone.
MISSING = {"no context": ("age", "sex", "view"), "sex only": ("age", "view"), "age only": ("sex", "view")}


def test_a_radiograph_without_view_sex_or_age_still_gets_a_chest_report():
    records = [r for r in read_cxr_notes(need(MINI), "train")
               if isinstance(r, ReportRecord) and r.images and r.context is not None][:16]
    analyzer = load_analyzer(device="cpu")
    fields = analyzer.declaration.context_fields
    requests, asked = [], []
    for record in records:
        image = ImageInput(record.images[0].load())
        for variant, gone in MISSING.items():
            context = dataclasses.replace(record.context, **dict.fromkeys(gone))
            requests.append(TaskRequest(Task.REPORT_FINDINGS, Modality.CXR, [image],
                                        context=render_context(context, Modality.CXR, fields)))
            asked.append((record.record_id, variant))
    answers = analyzer.run(requests)
    wrong = [(who, answer.text[:60]) for who, request, answer in zip(asked, requests, answers, strict=True)
             if confused(Task.REPORT_FINDINGS, Modality.CXR, [request], [answer])]
    # Measured on all 430 training radiographs: no context 20 (4.7 %), sex only 1, age only 3 confused
    # answers; before `demo-context` every one of them. A few of 48 may slip; most may not.
    assert len(wrong) <= 3, wrong
    assert all(answer.text.strip() for answer in answers)
