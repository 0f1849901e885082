"""The truthfulness rules: ``degenerate_message`` (rule filter), ``evidence_grounded`` and
``checklist_copied_from_prompt`` (checklist rules), quote matching, and the labeller's quote choices."""

from __future__ import annotations

import random

import pytest

from cm2data.demo import shipped
from cm2data.prompts import load_prompt
from cm2data.schema import ChecklistItem, Dialogue, Message, Tool, ToolCall, TurnChecklist
from cm2data.sources import load
from cm2data.validate import RuleConfig, run_gate
from cm2data.validate.checklist import copied_from_prompt, evidence_grounded, steps_per_turn
from cm2data.validate.evidence import SIMILARITY_FLOOR, grounded, normalize, similarity
from cm2data.validate.rules import degenerate_message, degenerate_text

WEATHER = Tool(
    name="get_weather", parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
)


def dialogue(
    user: str = "What is the weather in Oslo tomorrow?",
    reply: str = "Tomorrow Oslo has 3 °C and sleet.",
    checklist: list[ChecklistItem] | None = None,
) -> Dialogue:
    msgs = [
        Message(role="user", content=user),
        Message(
            role="assistant",
            thinking="Look it up for Oslo.",
            tool_calls=[ToolCall(id="c1", name="get_weather", arguments='{"city": "Oslo"}')],
        ),
        Message(
            role="tool", content='{"city": "Oslo", "temp_c": 3, "sky": "sleet"}', tool_call_id="c1", name="get_weather"
        ),
        Message(role="assistant", thinking="Report it.", content=reply),
    ]
    return Dialogue(
        id="g1",
        tools=[WEATHER],
        messages=msgs,
        checklists=[[TurnChecklist(turn=0, items=checklist)]] if checklist else [],
    )


def item(
    *evidence: tuple[int, str, str],
    question: str = "Did the assistant look up Oslo?",
    iid: str = "C0",
    weight: float = 1.0,
    **kw,
) -> ChecklistItem:
    return ChecklistItem(
        id=iid,
        focus_on="assistant.tool_calls",
        question=question,
        pass_condition=kw.get("pass_condition", "A get_weather call has city Oslo."),
        failure_examples=kw.get("failure_examples", []),
        weight=weight,
        evidence=[{"turn": 0, "step": s, "from": f, "snippet": snip} for s, f, snip in evidence],
    )


def grounding(*evidence: tuple[int, str, str], **kw) -> list[str]:
    d = dialogue(checklist=[item(*evidence, **kw)])
    return evidence_grounded(d, steps_per_turn(d.messages))


# ------------------------------------------------------------------------------------------- degenerate_message


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("n", "1 word"),
        ("Done.", "1 word"),
        ("👍 👍", "0 words"),
        ("??? !!! ...", "0 words"),
        ('{"a": 1, "b": [2, 3]}', "mostly non-text"),
        ("~~~ ok ~~~ ok ~~~~~~", "mostly non-text"),
    ],
)
def test_degenerate_text_names_why(text: str, why: str) -> None:
    found = degenerate_text(text)
    assert found is not None and why in found


@pytest.mark.parametrize(
    "text",
    [
        "Book it please.",
        "Total: 1,234.56 USD",
        "請幫我訂一張去東京的機票",
        "Ja, gerne!",
        "Reservation HR-5521093 is confirmed for 2 guests.",
    ],
)
def test_real_messages_are_not_degenerate(text: str) -> None:
    assert degenerate_text(text) is None


def test_degenerate_message_checks_users_and_replies_only() -> None:
    d = dialogue(user="n", reply="👍")
    found = degenerate_message(d, RuleConfig())
    assert [f.split(":")[0] for f in found] == ["message 0", "message 3"]
    assert "degenerate user message" in found[0] and "degenerate assistant reply" in found[1]
    # an empty tool-calling step (message 1) is not a message to judge; blank ones are non_empty_content's
    assert degenerate_message(dialogue(), RuleConfig()) == []
    assert degenerate_message(dialogue(reply="   "), RuleConfig()) == []
    # min_words lets one-word turns through, never symbol soup
    assert degenerate_message(dialogue(user="Yes"), RuleConfig(min_words=1)) == []
    assert degenerate_message(dialogue(user="!!!"), RuleConfig(min_words=0)) != []


def test_degenerate_message_is_in_the_gate_and_its_screen() -> None:
    bad = dialogue(user="n")
    result = run_gate([bad], stages=("rules",))
    assert [r.rule for r in result.rejects] == ["degenerate_message"]
    assert run_gate([dialogue(user="Yes")], stages=("rules",), config=RuleConfig(min_words=1)).passed
    assert run_gate([dialogue()], stages=("rules",)).passed


# ------------------------------------------------------------------------------------------------ quote matching


def test_normalize_folds_case_space_quotes_and_json_escapes() -> None:
    assert normalize('"City":  "Oslo"') == normalize('{"city":"Oslo"}'.strip("{}")) == "city:oslo"
    assert normalize('\\"teamid\\": \\"Wa') == normalize('"teamid": "Wa')
    assert normalize("12\\u00b0C") == normalize("12°c")
    assert normalize("ﬁne") == "fine"  # NFKC


def test_grounded_exact_near_and_invented() -> None:
    text = "Tomorrow Oslo has 3 °C and sleet, clearing in the evening."
    assert grounded("oslo has 3 °c", text)
    assert grounded("Tomorrow Oslo has 3°C and sleet clearing", text)  # spacing and punctuation
    near = "Tomorow Oslo has 3 °C and sleet"  # one letter dropped
    assert SIMILARITY_FLOOR <= similarity(near, text) < 1.0 and grounded(near, text)
    assert not grounded("12°C and light rain", text)
    assert similarity("12°C and light rain", text) < 0.6
    assert not grounded("", text) and not grounded("  ", text)
    # short snippets must match exactly: one changed digit is another number
    assert grounded("3 °C", text) and not grounded("4 °C", text)


def test_grounded_is_a_property_of_substrings() -> None:
    rng = random.Random(3)
    text = (
        "The Superior Twin at Casa do Largo Chiado costs €172 a night, breakfast included; "
        "free cancellation until 2026-05-05 23:59 Lisbon time."
    )
    for _ in range(200):
        a = rng.randrange(len(text) - 5)
        b = rng.randrange(a + 1, len(text) + 1)
        piece = text[a:b]
        if normalize(piece):
            assert grounded(piece, text), piece
            assert grounded(piece.upper().replace(" ", "  "), text), piece


# ----------------------------------------------------------------------------------------------- evidence_grounded


def test_evidence_grounded_accepts_quotes_of_each_part() -> None:
    assert (
        grounding(
            (0, "user.content", "weather in Oslo"),
            (1, "assistant.tool_calls", '"city": "Oslo"'),
            (1, "assistant.tool_calls", "get_weather"),
            (1, "assistant.content.thinking", "look it up"),
            (2, "tool.content", '"sky": "sleet"'),
            (3, "assistant.content.user_visible_reply", "3 °C and sleet"),
        )
        == []
    )


@pytest.mark.parametrize(
    ("evidence", "fragment"),
    [
        ((3, "assistant.content.user_visible_reply", "12°C and light rain"), "is not in the"),
        ((2, "assistant.tool_calls", '"city": "Oslo"'), "is the tool's step"),
        ((1, "tool.content", "Oslo"), "is the assistant's step"),
        ((0, "assistant.content.user_visible_reply", "Oslo"), "is the user's step"),
        ((1, "assistant.content.user_visible_reply", "Oslo"), "is empty"),  # a calling step has no reply text
        ((2, "tool.content", " "), "the snippet is empty"),
        ((1, "assistant.content.thinking", '"city": "Oslo"'), "is not in the"),  # in the call, not the thinking
    ],
)
def test_evidence_grounded_names_what_is_wrong(evidence: tuple[int, str, str], fragment: str) -> None:
    found = grounding(evidence)
    assert len(found) == 1 and fragment in found[0], found
    assert found[0].startswith("variant 0 turn 0 C0 evidence 0")


def test_evidence_grounded_needs_evidence_and_leaves_pointers_to_their_rule() -> None:
    assert grounding() == ["variant 0 turn 0 C0: no evidence (an item must point at the steps that support it)"]
    # a step that does not exist is checklist_evidence_pointers', an unknown from evidence_from_enum's
    assert grounding((9, "tool.content", "x")) == []
    assert grounding((2, "tool.mind", "x")) == []
    d = dialogue(checklist=[item((9, "tool.content", "x"))])
    assert {r.rule for r in run_gate([d]).rejects} == {"checklist_evidence_pointers"}
    # a criterion a reviewer added in review (cm2data review pull) has no evidence and says so in its provenance
    added = item()
    added.extra_info = {"review": {"decision": "add", "applied": True, "by": [{"reviewer": "ann"}]}}
    d = dialogue(checklist=[added])
    assert evidence_grounded(d, steps_per_turn(d.messages)) == []
    added.extra_info = {"review": {"decision": "fix"}}
    assert len(evidence_grounded(d, steps_per_turn(d.messages))) == 1


def test_the_shipped_data_is_grounded() -> None:
    records = []
    for name in ("sample/dialogues.json", "reference/checklist_annotated.json"):
        recs, rejects = load(shipped(*name.split("/")), "cm2")
        assert not rejects
        records += recs
    result = run_gate(records)
    assert result.passed and result.counts["evidence_grounded"] == 0
    snippets = [e.snippet for d in records for v in d.checklists for b in v for it in b.items for e in it.evidence]
    # the reference quotes the encoded arguments string (\\"teamid\\"), found through the normalisation
    assert len(snippets) >= 459 and any('\\"' in s for s in snippets)


# -------------------------------------------------------------------------------------- checklist_copied_from_prompt


def test_copied_from_prompt_catches_the_examples_of_every_version() -> None:
    prompt = load_prompt("annotate")
    current = prompt.example[0]["checklist"][0]
    retired = prompt.retired_examples[0][0]["checklist"][0]
    ok = (1, "assistant.tool_calls", '"city": "Oslo"')
    near = "Did the assistant renew the loan of Dune, library card 4417?"  # the 135M model's copy, seen here
    for question in (current["question"], retired["question"], retired["question"].rstrip("?").upper(), near):
        d = dialogue(checklist=[item(ok, question=question)])
        found = copied_from_prompt(d, steps_per_turn(d.messages))
        assert len(found) == 1 and "copied from the example in the labeller prompt" in found[0], question
    d = dialogue(
        checklist=[
            item(ok, pass_condition=current["pass_condition"], failure_examples=[retired["failure_examples"][0]])
        ]
    )
    assert len(copied_from_prompt(d, steps_per_turn(d.messages))) == 2
    # a snippet equal to the example's counts only when this dialogue does not hold it
    invented = dialogue(checklist=[item((3, "assistant.content.user_visible_reply", "12°C and light rain"))])
    assert "does not contain it" in copied_from_prompt(invented, steps_per_turn(invented.messages))[0]
    # a question of the same form about other facts is not a copy
    other = dialogue(checklist=[item(ok, question="Did the assistant look up the weather of Oslo on this day?")])
    assert copied_from_prompt(other, steps_per_turn(other.messages)) == []
    real = dialogue(checklist=[item(ok)])  # '"city": "Oslo"' is also the retired example's snippet
    assert copied_from_prompt(real, steps_per_turn(real.messages)) == []
    assert run_gate([real]).passed


# ------------------------------------------------------------------------------------ the labeller's quote choices


def test_quote_choices_are_grounded_and_a_constrained_answer_passes_evidence_grounded() -> None:
    """Every snippet the strict schema offers is a quote (so a grammar-constrained labeller cannot invent one) and
    every answer sampled from that schema passes evidence_grounded; without quote choices, sampled snippets do not."""
    from fake_llm import sample

    from cm2data.formats.openai import checklists_from_stored
    from cm2data.pipelines.annotate import annotate_request, label_schema, quote_choices
    from cm2data.pipelines.config import AnnotateConfig
    from cm2data.schema import segment, step_text

    records, _ = load(shipped("sample", "dialogues.json"), "cm2")
    rng = random.Random(11)
    invented = 0
    for d in records[:8]:
        bare = d.model_copy(update={"checklists": []})
        steps = steps_per_turn(d.messages)
        quotes = quote_choices(bare)
        turns = segment(d.messages)
        for (t, s, source), choices in quotes.items():
            assert choices and all(grounded(q, step_text(d.messages, turns[t].steps[s], source)) for q in choices)
        for with_quotes in (True, False):
            schema = label_schema(steps, 2, weight_grid=0.5, quotes=quotes if with_quotes else None)
            answer = sample(schema, rng)
            variant = checklists_from_stored([answer])[0]
            candidate = Dialogue.model_validate({**bare.model_dump(by_alias=True), "checklists": [variant]})
            found = evidence_grounded(candidate, steps)
            if with_quotes:
                assert found == [], found
            else:
                invented += bool(found)
    assert invented >= 6  # random text is (almost) never a quote: the rule would have caught it
    # what the stage sends: quote choices in the strict schema, free snippets when switched off
    bare = records[0].model_copy(update={"checklists": []})
    sent = annotate_request(bare, AnnotateConfig().model_dump())["schema"]
    assert "evidence_0" in sent["$defs"] and "evidence" not in sent["$defs"]
    free = annotate_request(bare, AnnotateConfig(quote_choices=False).model_dump())["schema"]
    assert "evidence" in free["$defs"] and "evidence_0" not in free["$defs"]
    # the worked example is in the prompt unless show_example is off (a small model copies it)
    shown = annotate_request(bare, AnnotateConfig().model_dump())["messages"][0]["content"]
    hidden = annotate_request(bare, AnnotateConfig(show_example=False).model_dump())["messages"][0]["content"]
    example_question = load_prompt("annotate").example[0]["checklist"][0]["question"]
    assert example_question in shown and "renew_loan" not in hidden and hidden.endswith("and nothing else.")
    assert all(
        alt["properties"]["snippet"] == {"type": "string", "maxLength": 160}
        for alt in free["$defs"]["evidence"].get("anyOf", [free["$defs"]["evidence"]])
    )
