"""Orchestrated generation: KV cache, batching, stopping, and task-token states reaching the modules."""

import numpy as np
import pytest
import torch

from medversa.inference import (
    ImageInput,
    Modality,
    Task,
    TaskRequest,
    build_prompt_ids,
    embed_with_images,
    preprocess_image,
)
from medversa.inference.generation import ForcedTokens, generate, greedy


def _prompt_embeds(analyzer, pixels, question, task=Task.VQA):
    model, tok = analyzer.model, analyzer.tokenizer
    image = preprocess_image(pixels, model.config.preprocess)[None]
    tokens = model.encode_2d(image)
    prompt = build_prompt_ids(tok, 1, question, "", task.uses_context)
    return embed_with_images(model.embed_ids, torch.tensor(prompt.ids), tok.ids.image, tokens), prompt


@torch.inference_mode()
def test_planted_answer_sends_exactly_the_task_token_states_to_the_modules(tiny_analyzer, rng):
    analyzer, model, tok = tiny_analyzer, tiny_analyzer.model, tiny_analyzer.tokenizer
    pixels = rng.integers(0, 256, (240, 200), dtype=np.uint8)
    request = TaskRequest(Task.ANATOMY_DETECTION, Modality.CXR, [ImageInput(pixels)],
                          targets=("left lung", "right lung", "heart"))
    answer_text = "left lung <DET>, right lung <DET>, heart <N/A> and the mask is <2DSEG>.###"
    answer_ids = tok.encode(answer_text)

    seen = {"det": [], "seg": []}
    hooks = [
        model.det_head.register_forward_pre_hook(lambda m, args: seen["det"].append(args[0].clone())),
        model.seg_2d_text.register_forward_pre_hook(lambda m, args: seen["seg"].append(args[0].clone())),
    ]
    try:
        result = analyzer.run([request], choose=ForcedTokens([answer_ids]))[0]
    finally:
        for h in hooks:
            h.remove()

    # Teacher-forced reference: the whole prompt + answer in one pass, no cache.
    question = request.prompts()[0][1]
    embeds, _ = _prompt_embeds(analyzer, pixels, question, request.task)
    full = torch.cat([embeds, model.embed_ids(torch.tensor(answer_ids))])
    states = model.causal_lm.model(inputs_embeds=full[None]).last_hidden_state[0]
    start = embeds.shape[0]
    det_pos = [start + i for i, t in enumerate(answer_ids) if t == tok.ids.det]
    seg_pos = [start + i for i, t in enumerate(answer_ids) if t == tok.ids.seg2d]
    assert len(det_pos) == 2 and len(seg_pos) == 1

    assert len(seen["det"]) == 1 and seen["det"][0].shape[0] == 2
    torch.testing.assert_close(seen["det"][0], states[det_pos], atol=1e-5, rtol=1e-5)
    assert len(seen["seg"]) == 1 and seen["seg"][0].shape[0] == 1
    torch.testing.assert_close(seen["seg"][0], states[seg_pos], atol=1e-5, rtol=1e-5)
    # ...and not the <N/A> state, nor the state of any other token.
    assert [b.label for b in result.boxes] == ["left lung", "right lung"]
    assert result.absent == ["heart"]
    assert [m.label for m in result.masks_2d] == ["heart"]


@torch.inference_mode()
def test_kv_cache_decoding_equals_full_recomputation(tiny_analyzer, rng):
    model, tok = tiny_analyzer.model, tiny_analyzer.tokenizer
    embeds, _ = _prompt_embeds(tiny_analyzer, rng.integers(0, 256, (64, 64), dtype=np.uint8), "Describe <img0>.")
    cached = generate(model, tok, [embeds], 20, greedy, end_sym=None)[0].ids
    seq = embeds
    naive = []
    for _ in range(20):
        hidden = model.causal_lm.model(inputs_embeds=seq[None]).last_hidden_state[0, -1]
        nxt = int(model.causal_lm.lm_head(hidden).argmax())
        naive.append(nxt)
        seq = torch.cat([seq, model.embed_ids(torch.tensor([nxt]))])
    assert cached == naive


@torch.inference_mode()
def test_batched_generation_equals_one_by_one(tiny_analyzer, rng):
    model, tok = tiny_analyzer.model, tiny_analyzer.tokenizer
    a, _ = _prompt_embeds(tiny_analyzer, rng.integers(0, 256, (64, 64), dtype=np.uint8), "Is it normal?")
    b, _ = _prompt_embeds(tiny_analyzer, rng.integers(0, 256, (80, 50), dtype=np.uint8),
                          "Please describe every finding you can see in this image in detail.")
    assert a.shape[0] != b.shape[0]  # different lengths: left padding is exercised
    planted = [tok.encode("x <DET> y<2DSEG>") + [5] * 5, tok.encode("<3DSEG> z") + [7] * 8]
    together = generate(model, tok, [a, b], 12, ForcedTokens(planted), end_sym=None)
    for embeds, seq, batched in zip([a, b], planted, together, strict=False):
        alone = generate(model, tok, [embeds], 12, ForcedTokens([seq]), end_sym=None)[0]
        assert alone.ids == batched.ids
        assert [s.position for s in alone.task_states] == [s.position for s in batched.task_states]
        for s1, s2 in zip(alone.task_states, batched.task_states, strict=False):
            torch.testing.assert_close(s1.hidden, s2.hidden, atol=1e-5, rtol=1e-5)
    greedy_together = generate(model, tok, [a, b], 10, greedy, end_sym=None)
    greedy_alone = [generate(model, tok, [e], 10, greedy, end_sym=None)[0] for e in (a, b)]
    assert [g.ids for g in greedy_together] == [g.ids for g in greedy_alone]


@torch.inference_mode()
def test_generation_stops_at_the_end_symbol(tiny_analyzer, rng):
    model, tok = tiny_analyzer.model, tiny_analyzer.tokenizer
    embeds, _ = _prompt_embeds(tiny_analyzer, rng.integers(0, 256, (32, 32), dtype=np.uint8), "Hi <img0>")
    planted = tok.encode("The lungs are clear.###") + tok.encode(" more text that must not appear")
    gen = generate(model, tok, [embeds], 40, ForcedTokens([planted]))[0]
    assert gen.reached_end
    assert tok.decode(gen.ids).endswith("###")
    assert "more" not in tok.decode(gen.ids)


@torch.inference_mode()
def test_a_task_token_at_the_length_limit_still_gets_its_state(tiny_analyzer, rng):
    model, tok = tiny_analyzer.model, tiny_analyzer.tokenizer
    embeds, _ = _prompt_embeds(tiny_analyzer, rng.integers(0, 256, (32, 32), dtype=np.uint8), "Find <img0>")
    planted = tok.encode("lung <DET>")
    gen = generate(model, tok, [embeds], len(planted), ForcedTokens([planted]))[0]
    assert not gen.reached_end
    assert [s.token_id for s in gen.task_states] == [tok.ids.det]


def test_no_repeat_ngram_never_writes_an_ngram_twice_and_is_greedy_otherwise():
    from medversa.inference.generation import NoRepeatNGram

    vocab = 6
    # Logits that always prefer tokens 1, 2, 1, 2...: plain greedy loops "1 2 1 2 ...".
    def looping(step: int) -> torch.Tensor:
        logits = torch.zeros(2, vocab)
        logits[:, 1 + step % 2] = 5.0
        logits[:, 3] = 1.0  # the next best choice
        return logits

    chooser = NoRepeatNGram(2)
    rows = [[], []]
    for step in range(6):
        for r, t in enumerate(chooser(step, looping(step)).tolist()):
            rows[r].append(t)
    for row in rows:
        pairs = list(zip(row, row[1:], strict=False))
        assert len(pairs) == len(set(pairs)), row  # no bigram twice
        assert row[:2] == [1, 2]  # greedy until a repeat would start
    assert [int(t) for t in greedy(0, looping(0))] == [1, 1]
    with pytest.raises(ValueError):
        NoRepeatNGram(0)


def test_the_analyzer_decodes_reports_loop_free_only_when_the_checkpoint_says_so(tiny_analyzer):
    from medversa.inference.generation import NoRepeatNGram

    config = tiny_analyzer.model.config.generation
    assert config.report_no_repeat_ngram is None
    assert tiny_analyzer._chooser(Task.REPORT_FINDINGS, greedy) is greedy  # official decoding by default
    config.report_no_repeat_ngram = 4
    try:
        chooser = tiny_analyzer._chooser(Task.REPORT_FINDINGS, greedy)
        assert isinstance(chooser, NoRepeatNGram) and chooser.size == 4
        assert tiny_analyzer._chooser(Task.ANATOMY_DETECTION, greedy) is greedy  # answers with task tokens: never
        forced = ForcedTokens([[1]])
        assert tiny_analyzer._chooser(Task.REPORT_FINDINGS, forced) is forced  # a caller's chooser wins
    finally:
        config.report_no_repeat_ngram = None


def test_without_tokens_never_chooses_them_and_otherwise_defers():
    from medversa.inference.generation import NoRepeatNGram, WithoutTokens

    logits = torch.tensor([[0.0, 5.0, 4.0, 1.0], [3.0, 0.0, 9.0, 2.0]])
    assert [int(t) for t in WithoutTokens(greedy, [2])(0, logits)] == [1, 0]
    assert [int(t) for t in WithoutTokens(greedy, [1, 2])(0, logits)] == [3, 0]
    assert logits[0, 1] == 5.0  # the caller's logits are left as they were
    inner = NoRepeatNGram(1)
    chooser = WithoutTokens(inner, [2])
    assert [int(t) for t in chooser(0, logits)] == [1, 0]
    assert [int(t) for t in chooser(1, logits)] == [3, 3]  # the inner chooser still bans its repeats
    with pytest.raises(ValueError):
        WithoutTokens(greedy, [])


@torch.inference_mode()
def test_a_report_draws_no_box_when_the_checkpoint_keeps_task_tokens_out_of_text(tiny_analyzer, rng):
    """The tiny model pushed to decode <DET> everywhere: by default (the official decoding) a findings
    request gets a box; with ``text_answers_without_task_tokens`` its text has no task token and no box
    or mask comes of it, while a detection request still gets its boxes."""
    analyzer, tok = tiny_analyzer, tiny_analyzer.tokenizer
    head = analyzer.model.causal_lm.lm_head
    pixels = rng.integers(0, 256, (240, 200), dtype=np.uint8)
    findings = TaskRequest(Task.REPORT_FINDINGS, Modality.CXR, [ImageInput(pixels)])
    detection = TaskRequest(Task.ANATOMY_DETECTION, Modality.CXR, [ImageInput(pixels)], targets=("left lung",))

    def favour_det(module, args, output):
        output = output.clone()
        output[..., tok.ids.det] += 1e4
        return output

    settings = analyzer.model.config.generation
    hook = head.register_forward_hook(favour_det)
    try:
        official = analyzer.run([findings])[0]
        settings.text_answers_without_task_tokens = True
        guarded, detected = analyzer.run([findings, detection])
    finally:
        settings.text_answers_without_task_tokens = False
        hook.remove()
    assert "<DET>" in official.text and official.boxes  # what a report drew before
    assert not any(name in guarded.text for name in tok.task_token_ids.values())
    assert not guarded.boxes and not guarded.masks_2d and guarded.text
    assert "<DET>" in detected.text and detected.boxes  # vision answers keep their tokens


def test_the_analyzer_keeps_task_tokens_out_of_text_answers_only_when_the_checkpoint_says_so(tiny_analyzer):
    from medversa.inference.generation import NoRepeatNGram, WithoutTokens

    settings = tiny_analyzer.model.config.generation
    assert settings.text_answers_without_task_tokens is False  # official decoding by default
    assert tiny_analyzer._chooser(Task.VQA, greedy) is greedy
    settings.text_answers_without_task_tokens = True
    settings.report_no_repeat_ngram = 4
    try:
        task_ids = sorted(tiny_analyzer.tokenizer.task_token_ids)
        for task in (Task.REPORT_FINDINGS, Task.CHEST_PATHOLOGY_CLASSIFICATION, Task.VQA,
                     Task.REGION_CAPTIONING, Task.LONGITUDINAL_COMPARISON):
            chooser = tiny_analyzer._chooser(task, greedy)
            assert isinstance(chooser, WithoutTokens) and chooser.banned == task_ids, task
        assert isinstance(tiny_analyzer._chooser(Task.REPORT_FINDINGS, greedy).inner, NoRepeatNGram)
        for task in (Task.ANATOMY_DETECTION, Task.PATHOLOGY_DETECTION, Task.CHEST_ORGAN_SEGMENTATION,
                     Task.ABDOMINAL_ORGAN_SEGMENTATION):
            assert tiny_analyzer._chooser(task, greedy) is greedy, task
        forced = ForcedTokens([[1]])
        assert tiny_analyzer._chooser(Task.VQA, forced) is forced  # a caller's chooser wins
    finally:
        settings.text_answers_without_task_tokens = False
        settings.report_no_repeat_ngram = None


def test_the_product_presets_keep_task_tokens_out_of_text_answers():
    from medversa.inference.presets import create_config

    assert create_config("medversa-7b").generation.text_answers_without_task_tokens is True
    assert create_config("demo").generation.text_answers_without_task_tokens is True
    assert create_config("tiny").generation.text_answers_without_task_tokens is False  # official decoding
