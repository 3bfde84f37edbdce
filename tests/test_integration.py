"""Real llama-server, real Gemma 3 270M, real HTTP: the sweep end to end."""

import json
import shutil
import socket

import pandas as pd
import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.setup.models import resolve_model

from .support.runs import llama_server_binary, real_scenario

pytestmark = pytest.mark.integration



def lines(path):
    return [json.loads(ln) for ln in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    (tmp / "it.toml").write_text(real_scenario("it"))
    result = CliRunner().invoke(cli, ["sweep", str(tmp / "it.toml"), "--out", str(tmp / "results")])
    assert result.exit_code == 0, result.output
    (run,) = (tmp / "results").iterdir()
    return run


def test_one_record_per_measured_request(run_dir):
    rows = lines(run_dir / "requests.jsonl")
    measured = [r for r in rows if r["phase"] == "measured"]
    for cell in ("llamacpp-n0", "llamacpp-ngram-mod-n4"):
        keys = [r["key"] for r in measured if r["cell_id"] == cell]
        assert len(keys) == 3 * 2 and len(set(keys)) == 6  # 3 repeat prompts x 2 repeats
        assert sum(r["phase"] == "warmup" and r["cell_id"] == cell for r in rows) == 1
    assert all(r["ok"] for r in rows)


def test_every_real_speculative_request_pairs_with_its_baseline_twin(run_dir):
    """pairs.csv against the raw requests.jsonl: each n4 request beside the n0 request of the same
    prompt and repeat, and the summary's typical speedup the median of those ratios."""
    rows = [r for r in lines(run_dir / "requests.jsonl") if r["phase"] == "measured"]
    rate = {(r["cell_id"], r["prompt_id"], r["repeat"]): r["e2e_tok_s"] for r in rows}
    pairs = pd.read_csv(run_dir / "pairs.csv")
    assert len(pairs) == 6 and set(pairs["status"]) == {"paired"}
    for p in pairs.itertuples():
        assert p.ratio == pytest.approx(rate[("llamacpp-ngram-mod-n4", p.prompt_id, p.repeat)]
                                        / rate[("llamacpp-n0", p.prompt_id, p.repeat)])
    s = pd.read_csv(run_dir / "summary.csv").set_index("cell_id")
    assert s.loc["llamacpp-ngram-mod-n4", "speedup"] == pytest.approx(pairs["ratio"].median())
    assert s.loc["llamacpp-ngram-mod-n4", "requests_paired"] == 6


def test_completion_tokens_are_the_servers_count(run_dir):
    for r in lines(run_dir / "requests.jsonl"):
        assert r["completion_tokens_source"] == "usage"
        assert r["completion_tokens"] == r["timings_predicted_n"]
        if r["finish_reason"] == "length":
            assert r["completion_tokens"] == 24


def test_rates_agree_with_the_servers_own_timings(run_dir):
    """orch times requests from outside; llama-server times them inside and reports it in `timings`.
    The two clocks must agree: decode rate with predicted_per_second, TTFT with the prompt's
    processing time (prompt_n / prompt_per_second), which happens inside orch's TTFT window."""
    for r in lines(run_dir / "requests.jsonl"):
        n = r["completion_tokens"]
        assert r["t_start"] < r["t_first_token"] < r["t_end"]
        assert r["decode_tok_s"] == pytest.approx(r["timings_predicted_per_second"], rel=0.1), r
        prompt_s = r["timings_prompt_n"] / r["timings_prompt_per_second"] if r["timings_prompt_n"] else 0.0
        assert prompt_s < r["ttft_s"] < prompt_s + 0.05 + 0.1 * prompt_s, r
        # End to end: the server's prompt and generation time, n tokens in all.
        server_e2e = n / (prompt_s + r["timings_predicted_n"] / r["timings_predicted_per_second"])
        assert r["e2e_tok_s"] == pytest.approx(server_e2e, rel=0.1), r


def test_speculative_cell_drafted_and_accepted(run_dir):
    s = pd.read_csv(run_dir / "summary.csv").set_index("cell_id")
    assert s.loc["llamacpp-ngram-mod-n4", "draft_n"] > 0
    assert s.loc["llamacpp-ngram-mod-n4", "acceptance_rate"] > 0.5
    assert s.loc["llamacpp-n0", "draft_n"] == 0


def test_cells_record_command_endpoint_template_and_servers_are_gone(run_dir):
    cells = lines(run_dir / "cells.jsonl")
    assert [c["status"] for c in cells] == ["ok", "ok"]
    for c in cells:
        assert c["endpoint"] == "/v1/completions" and c["template"].startswith("none: raw prompt")
        assert c["argv"][c["argv"].index("--host") + 1] == "127.0.0.1"
        assert (run_dir / "cells" / c["cell_id"] / "server.log").stat().st_size > 0
        port = int(c["argv"][c["argv"].index("--port") + 1])
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1)
    assert "--spec-ngram-mod-n-max" in cells[1]["argv"]
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["engines"]["llamacpp"]["model"] == "gemma-3-270m-q4_k_m.gguf"


def test_each_measured_window_has_the_servers_cpu_memory_and_the_roofline(run_dir):
    """The real llama-server's process tree, sampled at 10 Hz: with -t 2 it keeps at most 2 cores
    busy (and decoding, more than half of one); it holds at least the weights it mapped; each
    request's share adds up to no more than the window's CPU seconds; no GPU and no RAPL here, so
    those say why, never 0."""
    cells = lines(run_dir / "cells.jsonl")
    weights = resolve_model("gemma-3-270m").path.stat().st_size * 0.9
    for c in cells:
        w = c["telemetry"]["1"]
        assert 0.5 < w["cpu_util"] <= 2.2 and w["rss_peak_b"] > weights
        assert w["samples"] >= 5 * w["seconds"]  # 10 Hz asked; a loaded machine may skip some
        assert 0 < sum(r["cpu_s"] for r in w["per_request"].values()) <= w["cpu_s"] + 1e-6
        assert len(w["per_request"]) == 6 and w["sampler_cpu_s"] < 0.1 * w["seconds"]
        assert w["gpu"].startswith("no GPU") and "gpus" not in w and "energy_j" not in w
        assert w["energy_source"].startswith("unavailable:")
        r = c["roofline"]
        assert r["weight_bytes"] < resolve_model("gemma-3-270m").path.stat().st_size
        assert r["limit_tok_s"] == pytest.approx(r["bandwidth_gb_s"] * 1e9 / r["weight_bytes"], rel=1e-3)
        samples = lines(run_dir / "cells" / c["cell_id"] / "telemetry.jsonl")
        assert len(samples) == w["samples"] and {"t", "cpu_s", "rss_b", "concurrency"} <= set(samples[0])
    s = pd.read_csv(run_dir / "summary.csv")
    assert (s["roofline_share"] - s["decode_tok_s_median"] / s["roofline_tok_s"]).abs().max() < 1e-9
    assert s["cpu_s_per_token_median"].notna().all() and s["j_per_token_median"].isna().all()
    assert set(s["gpu_power_w_mean"]) == {"no GPU"}
    html = (run_dir / "report" / "index.html").read_text()
    assert "Cost and the hardware&#x27;s limit" in html or "Cost and the hardware's limit" in html


def test_report_on_a_copy_reproduces_summary_and_charts(run_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    made = ["summary.csv", "pairs.csv", "model.csv", "acceptance_check.csv", "lossless.csv", "summary_by_category.csv",
            *[p.name for p in copy.glob("*.png")], *[p.name for p in copy.glob("*.svg")]]
    for f in made:
        (copy / f).unlink()
    shutil.rmtree(copy / "report")
    result = CliRunner().invoke(cli, ["report", str(copy)])
    assert result.exit_code == 0, result.output
    pngs = sorted(p.name for p in run_dir.glob("*.png"))
    assert pngs == ["acceptance_by_position.png", "acceptance_length_vs_n_spec.png", "acceptance_vs_n_spec.png",
                    "energy_per_token_vs_n_spec.png", "lossless.png", "model_vs_measured.png", "paired_speedup_vs_n_spec.png",
                    "prefill_decode_vs_n_spec.png", "speedup_by_category.png", "speedup_vs_n_spec.png",
                    "tok_s_vs_n_spec.png"]
    for name in made:
        assert (copy / name).read_bytes() == (run_dir / name).read_bytes(), name
    def md(folder):  # the rerun line names the folder's own path; everything else must match
        lines = (folder / "report" / "summary.md").read_text().splitlines()
        rerun = [ln for ln in lines if ln.startswith("Rerun:")]
        assert rerun == [f"Rerun: `orch sweep {folder / 'scenario.toml'}`"]
        return [ln for ln in lines if not ln.startswith(("Rerun:", "## orch sweep"))]
    assert md(copy) == md(run_dir)


def test_model_as_its_own_draft_is_accepted(tmp_path):
    """draft-simple with the target as draft at temperature 0: drafts must be read as accepted."""
    gguf = resolve_model("gemma-3-270m").path
    (tmp_path / "self.toml").write_text(real_scenario("self", prompts="seeds", repeats=1, method="draft-simple",
                                                      n_spec="[4]", draft_model=str(gguf)))
    result = CliRunner().invoke(cli, ["sweep", str(tmp_path / "self.toml"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "r").iterdir()
    rows = [r for r in lines(run / "requests.jsonl") if r["phase"] == "measured"]
    drafted = sum(r["timings_draft_n"] or 0 for r in rows)
    accepted = sum(r["timings_draft_n_accepted"] or 0 for r in rows)
    assert drafted >= 50
    assert accepted / drafted >= 0.95


def test_chat_template_that_drops_the_prompt_is_flagged(tmp_path):
    """Gemma 3 270M is a base model; --chat-template gemma leaves 3 prompt tokens."""
    text = real_scenario("chat", api="chat", extra_args=("--chat-template", "gemma"), n_spec="[0]", max_tokens=4)
    (tmp_path / "chat.toml").write_text(text)
    result = CliRunner().invoke(cli, ["sweep", str(tmp_path / "chat.toml"), "--out", str(tmp_path / "r")])
    (run,) = (tmp_path / "r").iterdir()
    (cell,) = lines(run / "cells.jsonl")
    assert cell["endpoint"] == "/v1/chat/completions" and cell["template"].startswith("server chat template")
    assert "chat template may drop the text" in cell["prompt_check"]
    assert "chat template may drop the text" in result.output


def test_report_renders_in_headless_chromium_with_charts_visible(run_dir, tmp_path):
    import os
    import subprocess

    import numpy as np
    from PIL import Image

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        if os.environ.get("CI"):
            pytest.fail("chromium missing in CI: .ci/run installs it with apt-get")
        pytest.skip("chromium not installed (apt-get install chromium)")
    page = run_dir / "report" / "index.html"
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1600",
                    f"--screenshot={shot}", page.as_uri()], check=True, capture_output=True, timeout=120)
    px = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    non_white = float((px != 255).any(axis=1).mean())
    # matplotlib's first line colour (tab:blue): only the embedded charts draw it.
    chart_blue = int((np.abs(px - [31, 119, 180]) < 12).all(axis=1).sum())
    assert non_white > 0.05, f"screenshot is nearly blank ({non_white:.1%} non-white)"
    assert chart_blue > 500, f"no chart lines visible ({chart_blue} chart-blue pixels)"


def test_bench_url_against_a_running_llama_server_has_a_sweep_cells_shape(run_dir, tmp_path):
    from engines.plan import ServerPlan
    from orchestrator.launch.launchers import ProcessServer, free_port

    gguf = resolve_model("gemma-3-270m").path
    port = free_port()
    argv = [llama_server_binary(), "--host", "127.0.0.1", "--port", str(port), "-m", str(gguf),
            "-c", "2048", "-t", "2", "--spec-type", "ngram-mod", "--spec-ngram-mod-n-max", "4"]
    with ProcessServer(ServerPlan(argv, port, "/health", {}), tmp_path / "server.log", 120) as server:
        server.wait_ready()
        result = CliRunner().invoke(cli, [
            "bench", "--url", f"http://127.0.0.1:{port}", "--api", "completions", "--label", "mine",
            "--method", "ngram-mod", "--n-spec", "4", "--out", str(tmp_path / "r"),
            "--set", "workload.max_tokens=24", "--set", 'workload.prompts=["repeat"]', "--set", "workload.repeats=2"])
    assert result.exit_code == 0, result.output
    (bench,) = (tmp_path / "r").iterdir()
    sweep_rows, bench_rows = lines(run_dir / "requests.jsonl"), lines(bench / "requests.jsonl")
    assert set(bench_rows[0]) == set(sweep_rows[0])  # same record fields
    assert len([r for r in bench_rows if r["phase"] == "measured"]) == 6
    assert all(r["ok"] and r["completion_tokens"] == r["timings_predicted_n"] for r in bench_rows)
    s_bench, s_sweep = pd.read_csv(bench / "summary.csv"), pd.read_csv(run_dir / "summary.csv")
    assert list(s_bench.columns) == list(s_sweep.columns)
    row = s_bench.iloc[0]
    assert (row["cell_id"], row["n_spec"], row["requests_ok"]) == ("mine-ngram-mod-n4", 4, 6)
    assert row["draft_n"] > 0  # the server's own drafts, read from its timings
    (cell,) = lines(bench / "cells.jsonl")
    assert cell["argv"] == [] and cell["launcher"] == "external"
    assert (bench / "report" / "index.html").is_file()


def test_metrics_deltas_agree_with_per_request_timings(run_dir):
    """/metrics deltas around the measured window count exactly the measured requests' drafts."""
    cells = {c["cell_id"]: c for c in lines(run_dir / "cells.jsonl")}
    window = cells["llamacpp-ngram-mod-n4"]["server_metrics"]["1"]
    measured = [r for r in lines(run_dir / "requests.jsonl")
                if r["cell_id"] == "llamacpp-ngram-mod-n4" and r["phase"] == "measured"]
    assert window["draft_tokens"] == sum(r["timings_draft_n"] or 0 for r in measured) > 0
    assert window["accepted_tokens"] == sum(r["timings_draft_n_accepted"] or 0 for r in measured)
    assert 1 < window["mean_acceptance_length"] <= 5  # at most 4 drafted + 1
    assert cells["llamacpp-n0"]["server_metrics"]["1"]["drafts"] == 0
    s = pd.read_csv(run_dir / "summary.csv").set_index("cell_id")
    assert s.loc["llamacpp-ngram-mod-n4", "mean_acceptance_length"] == pytest.approx(window["mean_acceptance_length"])
    assert (run_dir / "acceptance_length_vs_n_spec.png").is_file()
    # per position, llama.cpp counts each draft once at every position up to its accepted length
    assert sum(window["per_pos"].values()) == window["accepted_tokens"]
    check = pd.read_csv(run_dir / "acceptance_check.csv").set_index("cell_id")
    assert bool(check.loc["llamacpp-ngram-mod-n4", "equal"])
    # the model's tokens per step at the measured depth is the cell's own output tokens per step
    model = pd.read_csv(run_dir / "model.csv").set_index("n_spec")
    ok = [r for r in measured if r["ok"]]
    out = sum(r["completion_tokens"] for r in ok)
    assert model.loc[4, "tokens_per_step"] == pytest.approx(out / (out - window["accepted_tokens"]), rel=0.01)


SYNTH_RATES = [0.8, 0.6, 0.4, 0.2]  # unconditional per position: 0.5 of draft tokens accepted


def test_measured_acceptance_matches_the_engines_synthetic_rates(tmp_path):
    """A known truth: llama-server accepts drafts at configured per-position rates
    (--spec-synth-rates, benchmarking only), whatever the tokens; orch must measure those rates."""
    gguf = resolve_model("gemma-3-270m").path
    rates = ",".join(map(str, SYNTH_RATES))
    (tmp_path / "synth.toml").write_text(real_scenario(
        "synth", prompts="seeds", max_tokens=256, repeats=1, method="draft-simple", n_spec="[4]",
        draft_model=str(gguf), extra_args=("--spec-synth-rates", rates)))
    result = CliRunner().invoke(cli, ["sweep", str(tmp_path / "synth.toml"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "r").iterdir()
    (cell,) = lines(run / "cells.jsonl")
    window = cell["server_metrics"]["1"]
    # The rate is a mean over drafts of a 0..4 count (sd 0.35 per draft): 500 drafts put 0.05 at 3 sigma.
    assert window["drafts"] >= 500, window
    truth = sum(SYNTH_RATES) / len(SYNTH_RATES)
    assert abs(window["acceptance_rate"] - truth) <= 0.05, window
    assert abs(window["mean_acceptance_length"] - (1 + sum(SYNTH_RATES))) <= 0.2, window
    per_pos = [window["per_pos_acceptance"][str(p)] for p in range(4)]
    assert all(abs(got - want) <= 0.1 for got, want in zip(per_pos, SYNTH_RATES, strict=True)), per_pos
    # The per-request timings and the summary agree with the server's counters.
    measured = [r for r in lines(run / "requests.jsonl") if r["phase"] == "measured"]
    assert window["accepted_tokens"] == sum(r["timings_draft_n_accepted"] for r in measured)
    s = pd.read_csv(run / "summary.csv").iloc[0]
    assert s["server_acceptance_rate"] == pytest.approx(window["acceptance_rate"])


def test_each_cell_accounts_for_its_wall_time(run_dir):
    """A cell's phases against the clocks of its own requests (their sum is the cell's seconds by
    construction: orch_s is the remainder). Wall-clock stamps (started_at, wall_start) and the
    monotonic spans are different clocks, rounded to the millisecond: CLOCKS_S between them."""
    CLOCKS_S = 0.05
    rows = lines(run_dir / "requests.jsonl")
    cells = lines(run_dir / "cells.jsonl")
    for cell in cells:
        ph = cell["phases"]
        assert set(ph) == {"start_s", "ready_s", "warmup_s", "measured_s", "teardown_s", "orch_s"}
        assert all(v >= 0 for v in ph.values()), ph
        assert ph["ready_s"] == pytest.approx(cell["ready_s"], abs=0.01)  # the launcher's own poll clock
        mine = [r for r in rows if r["cell_id"] == cell["cell_id"]]
        warm = [r for r in mine if r["phase"] == "warmup"]
        measured = [r for r in mine if r["phase"] == "measured"]
        # One stream at a time: each phase holds its requests' spans, and little besides.
        for phase, reqs in (("warmup_s", warm), ("measured_s", measured)):
            busy = sum(r["t_end"] - r["t_start"] for r in reqs)
            assert busy <= ph[phase] < busy + 0.5 + 0.02 * busy, (phase, busy, ph)
        # On the wall clock: no request before the server was ready, none after the cell ended,
        # and the server's stop (teardown_s) after the last request.
        ready_at = cell["started_at"] + ph["start_s"] + ph["ready_s"]
        ended_at = cell["started_at"] + cell["seconds"]
        last_end = max(r["wall_start"] + (r["t_end"] - r["t_start"]) for r in mine)
        assert ready_at - CLOCKS_S <= min(r["wall_start"] for r in mine)
        assert last_end + ph["teardown_s"] <= ended_at + CLOCKS_S
        assert ph["measured_s"] > 0 and ph["orch_s"] < 0.5 * ph["measured_s"]
    for before, after in zip(cells, cells[1:], strict=False):  # one server at a time: cells never overlap
        assert before["started_at"] + before["seconds"] <= after["started_at"] + CLOCKS_S
