"""`difflab eval` on an untrained tiny model package: generation, oracle, FID/KID, table, JSON, errors."""

import json

import pytest
from typer.testing import CliRunner

from difflab.cli import app
from difflab.metrics.bench import balanced, bench_prompts
from difflab.metrics.evaluation import EvalConfig, evaluate, format_summary

PROMPTS = ["a red circle", "two blue squares", "a green cross above a yellow triangle"]


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """An untrained class-conditional UNet whose classes are the prompts (no text encoder to load)."""
    from difflab.models import UNet
    from difflab.schedules import NoiseSchedule

    folder = tmp_path_factory.mktemp("eval") / "tiny"
    quick = [e["prompt"] for e in balanced(bench_prompts(), 4)]   # what `--limit 4` generates
    names = PROMPTS + [p for p in quick if p not in PROMPTS]
    model = UNet(3, 3, channels=(8, 16), norm_groups=4, head_dim=8, num_classes=len(names),
                 attention_levels=(), mid_attention=False)
    metadata = {"diffusion": {"schedule": NoiseSchedule.linear().to_config(), "prediction_type": "epsilon"},
                "conditioning": {"encoder": {"type": "class_labels", "class_names": names}, "null": ""},
                "data": {"resolution": 32, "channels": 3}}
    model.save_pretrained(folder, metadata=metadata)
    (folder.parent / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return folder


def test_evaluate_writes_a_complete_report(package, tmp_path):
    config = EvalConfig(str(package), prompts=str(package.parent / "prompts.txt"), steps=2, batch_size=2,
                        out=str(tmp_path / "report.json"))
    summary = evaluate(config, progress=False)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["table"] == summary["table"] and saved["table"]["overall"]["n"] == 3
    assert [r["prompt"] for r in saved["results"]] == PROMPTS
    assert all(isinstance(r["ok"], bool) and isinstance(r["failed"], list) for r in saved["results"])
    assert all(r["failed"] for r in saved["results"] if not r["ok"])
    distances = saved["distances"]
    assert distances["fid"] > 0 and distances["kid"] == distances["kid"]
    assert "not Inception FID" in distances["features"]
    assert saved["settings"]["steps"] == 2
    text = format_summary(summary)
    assert "custom" in text and "overall" in text and "not Inception FID" in text


def test_seeds_score_every_prompt_under_more_seeds_the_first_its_own(package, tmp_path):
    prompts = str(package.parent / "prompts.txt")
    one = evaluate(EvalConfig(str(package), prompts=prompts, steps=2, batch_size=4, fid=False,
                              out=str(tmp_path / "one.json")), progress=False)
    three = evaluate(EvalConfig(str(package), prompts=prompts, steps=2, batch_size=4, fid=False, seeds=3,
                                out=str(tmp_path / "three.json")), progress=False)
    assert three["table"]["overall"]["n"] == 3 * one["table"]["overall"]["n"] == 9
    assert [r["prompt"] for r in three["results"]] == PROMPTS * 3
    assert [r["seed"] for r in three["results"]] == [0, 1, 2, 100_000, 100_001, 100_002, 200_000, 200_001, 200_002]
    first = [(r["seed"], r["ok"], r["objects"]) for r in three["results"][:3]]
    assert first == [(r["seed"], r["ok"], r["objects"]) for r in one["results"]]   # seed 1 of 3 = the one-seed run
    oks = [r["ok"] for r in three["results"]]
    assert three["table"]["overall"]["accuracy"] == pytest.approx(sum(oks) / len(oks))
    assert EvalConfig("shapes", seeds=4).report_path().name.startswith("eval-shapes-shapes-bench-all-seeds4-")


def test_eval_command_runs_shapes_bench_with_a_table(package, tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["eval", str(package), "--prompts", "shapes-bench", "--limit", "4",
                                      "--steps", "2", "--sampler", "euler", "--guidance", "1.0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "single_object" in result.output and "FID" in result.output
    saved = json.loads(out.read_text())
    categories = ("single_object", "two_objects", "counting", "colours")   # --limit: a balanced sample
    assert all(saved["table"][c]["n"] == 1 for c in categories) and saved["settings"]["sampler"] == "euler"


@pytest.mark.parametrize("args, message", [
    (["eval", "/nonexistent/model"], "not a folder"),
    (["eval", "PKG", "--steps", "0"], "--steps must be a positive integer"),
    (["eval", "PKG", "--sampler", "warp"], "unknown sampler 'warp'"),
    (["eval", "PKG", "--prompts", "geneval"], "shapes-bench or a text file"),
    (["eval", "PKG", "--guidance", "-1"], "--guidance"),
    (["eval", "PKG", "--seeds", "0"], "--seeds must be an integer in [1, 16]"),
    (["eval", "PKG", "--seeds", "1000"], "--seeds must be an integer in [1, 16]"),
    (["eval", "PKG", "--prompts", "held-out", "--seeds", "2"], "--seeds is for image prompt sets"),
])
def test_eval_command_refuses_bad_arguments_in_one_line(package, args, message):
    args = [str(package) if a == "PKG" else a for a in args]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
