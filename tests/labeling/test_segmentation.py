import pytest

from nemo_erprm.labeling import SegmentationConfig, StepTagError, join_with_tags, render_prm_input, split_steps

GSM = "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether.\n#### 72"


def test_newline_steps_keep_exact_text_and_merge_short_ones():
    steps = split_steps(GSM)
    assert steps == ["Natalia sold 48/2 = 24 clips in May.\n", "Natalia sold 48+24 = 72 clips altogether.\n#### 72"]
    assert "".join(steps) == GSM


def test_min_chars_zero_keeps_every_line():
    steps = split_steps(GSM, SegmentationConfig(min_chars=0))
    assert len(steps) == 3 and steps[-1] == "#### 72"


def test_short_first_step_merges_forward():
    text = "Ok.\nThen we add 3 and 4 to get 7.\nSo 7."
    steps = split_steps(text)
    # "Ok." is too short alone and absorbs the next line; "So 7." then joins that step too.
    assert steps == [text]
    steps = split_steps(text, SegmentationConfig(min_chars=4))
    assert steps == ["Ok.\nThen we add 3 and 4 to get 7.\n", "So 7."]


def test_blank_line_rule_splits_paragraphs_only():
    text = "First line\nstill first para.\n\nSecond paragraph here.\n\n\nThird paragraph text."
    steps = split_steps(text, SegmentationConfig(rule="blank_line"))
    assert len(steps) == 3
    assert steps[0] == "First line\nstill first para.\n\n"
    assert "".join(steps) == text


def test_sentence_rule_ignores_decimals_and_abbreviations():
    text = "It costs $3.5 each. Dr. Smith buys 2 of them! How much? He pays $7.0 in total."
    steps = split_steps(text, SegmentationConfig(rule="sentence", min_chars=0))
    assert steps == ["It costs $3.5 each. ", "Dr. Smith buys 2 of them! ", "How much? ", "He pays $7.0 in total."]


def test_whitespace_only_solution_has_no_steps():
    assert split_steps("  \n\n ") == []


def test_step_tag_in_text_is_rejected_with_position():
    with pytest.raises(StepTagError, match="step tag 'ки' occurs inside the solution"):
        split_steps("step one ки\nstep two")
    with pytest.raises(StepTagError, match="step 1"):
        join_with_tags(["fine step", "has a <step> inside"], "<step>")


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="rule must be one of"):
        SegmentationConfig(rule="paragraph")
    with pytest.raises(ValueError, match="step_tag"):
        SegmentationConfig(step_tag=" ")


def test_render_prm_input_has_one_tag_per_step():
    steps = split_steps(GSM)
    text = render_prm_input("How many clips?", steps)
    assert text == "How many clips? Natalia sold 48/2 = 24 clips in May. ки\nNatalia sold 48+24 = 72 clips altogether.\n#### 72 ки"
    assert text.count("ки") == len(steps)
    with pytest.raises(StepTagError, match="question"):
        render_prm_input("what is ки?", steps)
