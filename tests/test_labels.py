import pytest

from medversa.inference.labels import label_tokens


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The segmentation mask of liver is <3DSEG>.", [("<3DSEG>", "liver")]),
        ("The right lung is at <DET> and its mask is <2DSEG>.", [("<DET>", "right lung"), ("<2DSEG>", "right lung")]),
        ("left lung <DET>, right lung<DET>, heart <N/A>.",
         [("<DET>", "left lung"), ("<DET>", "right lung"), ("<N/A>", "heart")]),
        ("There is pleural effusion at <DET>.", [("<DET>", "pleural effusion")]),
    ],
)
def test_each_task_token_is_labelled_with_the_class_before_it(text, expected):
    assert label_tokens(text) == expected


def test_a_bare_token_takes_the_requested_class():
    assert label_tokens("<2DSEG>", fallback="skin lesion") == [("<2DSEG>", "skin lesion")]
