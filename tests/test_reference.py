import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.analysis.reference import published_means, published_runs


def mean(engine, model, n):
    m = published_means()
    return m[(m.engine == engine) & (m.model == model) & (m.n_spec == n)]["mean_tok_s"].item()


def test_recomputed_published_means():
    gemma = "RedHatAI/gemma-4-31B-it-FP8-block"
    assert mean("vllm", gemma, 0) == pytest.approx(39.7, abs=0.1)
    assert mean("vllm", gemma, 5) == pytest.approx(132.5, abs=0.1)
    assert mean("vllm", gemma, 5) / mean("vllm", gemma, 0) == pytest.approx(3.34, abs=0.01)
    assert mean("vllm", "Qwen/Qwen3.6-27B-FP8", 0) == pytest.approx(49.2, abs=0.1)
    assert mean("llamacpp", "unsloth/Qwen3.6-27B-MTP-GGUF:Qwen3.6-27B-Q8_0.gguf", 3) == pytest.approx(117.7, abs=0.1)


def test_rows_are_consistent():
    runs = published_runs()
    assert len(runs) == 164
    assert ((runs.completion_tokens / runs.elapsed_s - runs.tok_per_s).abs() < 0.01).all()


def test_orch_reference_prints_and_draws(tmp_path):
    result = CliRunner().invoke(cli, ["reference", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "Gemma 4 31B FP8 · vLLM · MTP"
    assert lines[1] == "  n_spec off:   39.7 tok/s (10 runs, 38.3-40.9)  1.00x  0.69 of the roofline"
    assert lines[5] == "  n_spec   5:  132.5 tok/s (10 runs, 126.8-133.9)  3.34x  2.29 of the roofline"
    assert lines[6].startswith("  roofline: 57.8 tok/s single-stream decode limit = 31.0 GB")
    png = tmp_path / "published_reference.png"
    assert png.stat().st_size > 20_000 and (tmp_path / "published_reference.svg").is_file()


def test_report_overlays_only_a_matching_run(tmp_path):
    from tests.support.runs import make_run
    from tests.support.runs import req

    rows = [dict(req("g-n0", 0, 40), engine="g"), dict(req("g-n5", 5, 130, key="b"), engine="g")]
    run = make_run(tmp_path / "run", rows, {"g": {"kind": "vllm", "model": "RedHatAI/gemma-4-31B-it-FP8-block"}})
    other = make_run(tmp_path / "other", rows, {"g": {"kind": "vllm", "model": "tiny"}})

    hit = CliRunner().invoke(cli, ["report", str(run), "--reference", "published"])
    miss = CliRunner().invoke(cli, ["report", str(other), "--reference", "published"])
    assert hit.exit_code == 0 and miss.exit_code == 0, hit.output + miss.output
    assert hit.output.splitlines()[0] == "reference: published figures overlaid for g"
    assert miss.output.splitlines()[0] == "reference: no published figures for tiny; charts drawn without overlay"
    assert "published (g's model" in (run / "tok_s_vs_n_spec.svg").read_text()
    assert "published (" not in (other / "tok_s_vs_n_spec.svg").read_text()
