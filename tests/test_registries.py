"""The registries refuse a name twice, call their entries through an explicit interface, and the CLI's choices are
the values the code accepts; the runnable examples in the docstrings of the small helpers hold."""

from __future__ import annotations

import doctest
import importlib
from collections.abc import Sequence
from typing import get_args

import pyarrow as pa
import pytest

from cm2data.schema import Dialogue

# ------------------------------------------------------------------------------------------------ stages


def test_stage_registry_refuses_a_name_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    from cm2data.pipelines import registry
    from cm2data.pipelines.config import PipelineConfig, SelectConfig, StageConfig

    assert list(registry.stages()) == ["synthesize", "filter", "compress", "select", "annotate"]
    first = registry.stage("select").run

    def other(records, cfg, ctx):  # type: ignore[no-untyped-def]
        raise AssertionError("never run")

    with pytest.raises(ValueError, match="stage 'select' is already registered"):
        registry.register_stage("select", config=SelectConfig)(other)
    assert registry.stage("select").run is first  # the first registration stands

    class EchoConfig(StageConfig):
        pass

    monkeypatch.setattr(registry, "_STAGES", dict(registry._STAGES))  # undone after the test
    assert registry.register_stage("echo", config=EchoConfig)(other) is other
    with pytest.raises(ValueError, match="already registered"):
        registry.register_stage("echo", config=EchoConfig)(other)
    # the pipeline config reads the registry: a new stage is a stage, with its own settings class, no LLM
    config = PipelineConfig(stages=["echo", "select"], input="x")
    assert isinstance(config.stages[0].config, EchoConfig) and not config.uses_llm()
    with pytest.raises(ValueError, match=r"unknown stage 'nope'; known: synthesize, .*, echo"):
        registry.stage("nope")


def test_stage_entries_say_what_they_need() -> None:
    from cm2data.pipelines import FilterConfig, SynthesizeConfig, stage

    assert stage("filter").uses_llm(FilterConfig()) and not stage("filter").uses_llm(FilterConfig(passes=0))
    assert stage("filter").llm  # its endpoint is part of its fingerprint either way, as before
    assert not stage("select").llm and stage("select").takes_input
    synth = stage("synthesize")
    assert not synth.takes_input and synth.source is not None
    assert synth.source(SynthesizeConfig()).name == "tools.json"
    assert synth.source(SynthesizeConfig(catalog="/x/cat.json")).as_posix() == "/x/cat.json"


# ------------------------------------------------------------------------------------------------ exporters


def _ids(records: Sequence[Dialogue], split: str) -> pa.Table:
    return pa.table({"id": [d.id for d in records], "split": [split] * len(records)})


def _indexed(records: Sequence[Dialogue], split: str, *, start: int) -> pa.Table:
    return pa.table({"id": [d.id for d in records], "index": list(range(start, start + len(records)))})


def test_exporter_registry_refuses_a_name_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    from cm2data.export import registry

    monkeypatch.setattr(registry, "EXPORTERS", dict(registry.EXPORTERS))
    with pytest.raises(ValueError, match="exporter 'sft' is already registered"):
        registry.register_exporter("sft", "other_config", _ids)
    assert registry.EXPORTERS["sft"].config == "sft_llamafactory"
    exporter = registry.register_exporter("ids", "ids_only", _ids, label="id list")
    assert registry.EXPORTERS["ids"] is exporter and exporter.label == "id list"
    with pytest.raises(ValueError, match="already registered"):
        registry.register_exporter("ids", "ids_again", _ids)

    @registry.register_exporter("numbered", "numbered_rows", indexed=True)
    def numbered(records, split, *, start):  # type: ignore[no-untyped-def]
        return _indexed(records, split, start=start)

    assert registry.EXPORTERS["numbered"].build is numbered  # the decorator returns the function itself


def test_exporters_are_called_through_their_declared_interface() -> None:
    from cm2data.export.registry import EXPORTERS, Exporter

    records = [
        Dialogue.model_validate({"id": f"d{i}", "messages": [{"role": "user", "content": "hi"}]}) for i in range(3)
    ]
    plain = Exporter("ids", "ids_only", "ids", "", build=_ids).builder()
    assert plain is not None and plain(records, "train", 7).column("id").to_pylist() == ["d0", "d1", "d2"]
    indexed = Exporter("n", "n_rows", "n", "", build=_indexed, indexed=True).builder()
    assert indexed is not None and indexed(records, "train", 7).column("index").to_pylist() == [7, 8, 9]
    # the built-in ones, imported lazily: rl is indexed (extra_info.index), sft is not
    assert EXPORTERS["rl"].indexed and not EXPORTERS["sft"].indexed
    for name in ("sft", "rl"):
        assert EXPORTERS[name].builder() is not None
    missing = Exporter("dpo", "dpo_pairs", "DPO", "", "cm2data.export.dpo:hub_table", requires="cm2data.export.dpo")
    assert missing.builder() is None


# ------------------------------------------------------------------------------------------------ the CLI


def test_cli_choices_are_the_values_the_code_accepts() -> None:
    from cm2data import cli_options, judge_commands
    from cm2data.export import llamafactory as lf
    from cm2data.fidelity.run import MODES
    from cm2data.judge import GroupedAnswer
    from cm2data.validate.rules import ThinkingPolicy

    def values(enum: type) -> list[str]:
        return [m.value for m in enum]  # type: ignore[attr-defined]

    assert values(cli_options.Thinking) == list(get_args(ThinkingPolicy))
    assert values(cli_options.Style) == list(lf.STYLES)
    assert values(cli_options.Template) == list(lf.TEMPLATES)
    assert values(cli_options.HistoryThinking) == list(lf.HISTORY_THINKING)
    assert values(cli_options.OnBroken) == list(lf.ON_BROKEN)
    assert values(cli_options.CallFormat) == list(lf.CALL_FORMATS)
    assert values(judge_commands.Mode) == list(MODES)
    assert values(judge_commands.GroupedAnswer) == list(get_args(GroupedAnswer))


def test_fail_prints_the_message_as_text_and_returns_the_exit(capsys: pytest.CaptureFixture[str]) -> None:
    from cm2data.cli_options import EXIT_FAILED, EXIT_USAGE, fail

    exit_ = fail("bad [weights_sum_to_one] and [/tmp/x]")
    assert exit_.exit_code == EXIT_USAGE == 2
    assert fail("no", EXIT_FAILED).exit_code == 1
    assert "error: bad [weights_sum_to_one] and [/tmp/x]" in capsys.readouterr().err


@pytest.mark.parametrize(
    "module", ["cm2data.pipelines.rows", "cm2data.pipelines.registry", "cm2data.export.registry", "cm2data.cli_options"]
)
def test_docstring_examples(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted and not result.failed


def test_json_means_the_result_on_stdout(tmp_path, sample_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import json

    from typer.testing import CliRunner

    from cm2data.cli import app
    from cm2data.llm import server as embedded

    runner = CliRunner()
    res = runner.invoke(app, ["stats", str(sample_path), "--json", "-"])
    assert res.exit_code == 0, res.output
    stats = json.loads(res.stdout)  # the JSON alone on stdout; the table on stderr
    assert stats["statistics"] and "num_turns" in res.stderr
    res = runner.invoke(app, ["stats", str(sample_path), "--json", str(tmp_path / "s" / "stats.json")])
    assert res.exit_code == 0 and "num_turns" in res.stdout
    assert json.loads((tmp_path / "s" / "stats.json").read_text()) == stats
    monkeypatch.setattr(embedded, "stop", lambda: None)
    res = runner.invoke(app, ["serve", "--stop", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout) is None
