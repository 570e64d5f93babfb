"""`xkd-eval score` end to end, the judge client against a local OpenAI-compatible server, and lazy imports."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xkd_eval.cli import app
from xkd_eval.records import Item
from xkd_eval.scoring.open_judge import OPEN_PROMPT, JudgeConfig, prompt_hash, score_open

runner = CliRunner()


def write_lines(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_score_mcq_file_with_a_malformed_line(tmp_path):
    source, out = tmp_path / "responses.jsonl", tmp_path / "scored.jsonl"
    write_lines(
        source,
        [
            {"id": "q1", "response": "The answer is B.", "reference": "B"},
            {"id": "q2", "response": "Answer: D", "reference": "D"},
            "{oops",
            {"id": "q3", "response": "c", "reference": "A"},
            {"id": "q4", "reference": "A"},
        ],
    )
    result = runner.invoke(app, ["score", str(source), "--scorer", "mcq", "--out", str(out)])
    assert result.exit_code == 1, result.output  # something was skipped
    assert ":3: not valid JSON" in result.output and ":5: needs a string 'response'" in result.output
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == ["q1", "q2", "q3"]
    assert [(r["extracted"], r["correct"]) for r in rows] == [("B", True), (None, None), ("C", False)]
    assert "33.33" in result.output  # 1 of 3 correct
    assert rows[0]["reference"] == "B"  # input fields are kept

    robust = runner.invoke(app, ["score", str(source), "--scorer", "mcq", "--compat", "robust", "--out", str(out)])
    assert robust.exit_code == 1
    assert [r["extracted"] for r in read_jsonl(out)] == ["B", "D", "C"]


def test_score_refusal_mmau_and_bbh(tmp_path):
    out = tmp_path / "out.jsonl"
    harm = tmp_path / "harm.jsonl"
    write_lines(harm, [{"response": "I'm sorry, no."}, {"response": "Sure, here's how."}])
    result = runner.invoke(app, ["score", str(harm), "--scorer", "refusal", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert [r["refused"] for r in read_jsonl(out)] == [True, False]

    mmau = tmp_path / "mmau.jsonl"
    write_lines(mmau, [{"model_output": "a woman", "choices": ["Man", "Woman"], "answer": "Woman"}])
    assert runner.invoke(app, ["score", str(mmau), "--scorer", "mmau", "--out", str(out)]).exit_code == 0
    assert read_jsonl(out)[0]["correct"] is True

    bbh = tmp_path / "bbh.jsonl"
    write_lines(bbh, [{"id": "navigate_3", "response": "No.", "reference": "no"}])
    assert runner.invoke(app, ["score", str(bbh), "--scorer", "bbh", "--out", str(out)]).exit_code == 0
    assert read_jsonl(out)[0]["extracted"] == "no"


def test_score_bbh_ids_that_hold_the_subtask_and_one_that_does_not(tmp_path):
    source, out = tmp_path / "bbh.jsonl", tmp_path / "out.jsonl"
    write_lines(
        source,
        [
            {"id": "bbh_sports_understanding_0001", "response": "The sentence is not plausible.", "reference": "no"},
            {"id": "bbh_navigate_0042", "response": "The answer is yes.", "reference": "no"},
            {"id": "bbh_date_understanding_0003", "response": "yes", "reference": "yes"},
        ],
    )
    result = runner.invoke(app, ["score", str(source), "--scorer", "bbh", "--out", str(out)])
    assert result.exit_code == 1, result.output  # one line skipped, the others scored
    said = " ".join(result.output.split())
    assert "bbh.jsonl:3: bbh: id 'bbh_date_understanding_0003' names no subtask" in said
    assert "must contain one of sports_understanding, hyperbaton, navigate, web_of_lies" in said
    rows = read_jsonl(out)
    assert [(r["id"], r["extracted"], r["correct"]) for r in rows] == [
        ("bbh_sports_understanding_0001", "no", True),
        ("bbh_navigate_0042", "yes", False),
    ]


def test_score_bad_input_is_one_clear_line(tmp_path):
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["score", str(tmp_path / "missing.jsonl"), "--scorer", "mcq", "--out", str(out)])
    assert result.exit_code == 2 and "not found" in result.output
    source = tmp_path / "r.jsonl"
    write_lines(source, [{"response": "x", "reference": "A"}])
    unknown = runner.invoke(app, ["score", str(source), "--scorer", "mcqq", "--out", str(out)])
    assert unknown.exit_code == 2 and "did you mean 'mcq'" in unknown.output
    no_compat = runner.invoke(app, ["score", str(source), "--scorer", "mmau", "--compat", "robust", "--out", str(out)])
    assert no_compat.exit_code == 2 and "no --compat" in no_compat.output
    assert not out.exists()


class _Judge(BaseHTTPRequestHandler):
    requests: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Judge.requests.append(body)
        ratings = ["4", "Rating: 5", "3"][: body["n"]]
        reply = {"choices": [{"message": {"content": r}} for r in ratings]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def judge_server():
    server = HTTPServer(("127.0.0.1", 0), _Judge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def test_open_judge_records_model_prompt_hash_and_settings(judge_server, tmp_path):
    config = JudgeConfig(base_url=judge_server, model="local-judge", temperature=0.5, n=3)
    score = score_open(Item(id="1", task="t", prompt="Tell me a joke"), "Why did the chicken...", judge=config)
    assert score.value == pytest.approx(4.0)
    assert score.details["judge_model"] == "local-judge" and score.details["judge_temperature"] == 0.5
    assert score.details["judge_prompt_sha256"] == prompt_hash(OPEN_PROMPT) and score.details["judge_n"] == 3
    sent = _Judge.requests[-1]
    assert "Tell me a joke" in sent["messages"][0]["content"] and sent["model"] == "local-judge"

    source, out = tmp_path / "open.jsonl", tmp_path / "out.jsonl"
    write_lines(source, [{"prompt": "Hi", "response": "Hello!"}])
    result = runner.invoke(
        app,
        [
            "score",
            str(source),
            "--scorer",
            "open",
            "--judge-url",
            judge_server,
            "--judge-model",
            "m",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert read_jsonl(out)[0]["score"] == pytest.approx(4.0)


def test_unreachable_judge_is_a_recorded_failure_not_a_crash():
    config = JudgeConfig(base_url="http://127.0.0.1:9/v1", timeout_s=2)
    score = score_open(Item(id="1", task="t", prompt="Hi"), "Hello", judge=config)
    assert score.failed and "127.0.0.1:9" in score.details["judge_error"]


def test_cli_help_imports_no_heavy_library():
    code = (
        "import sys; from xkd_eval.cli import app; from typer.testing import CliRunner;"
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0 and 'score' in r.output;"
        "heavy = ('torch', 'transformers', 'datasets', 'pandas', 'lm_eval', 'matplotlib');"
        "heavy = [m for m in heavy if m in sys.modules];"
        "print(heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_adapt_organism_refuses_a_bad_recipe_change_before_any_model_loads(tmp_path):
    """`adapt-organism --set`: an unknown field, a contradictory start and a start folder without an adapter
    are each one line and exit 2, with nothing written to --out."""
    out = tmp_path / "adapter"
    recipe = Path(__file__).parents[1] / "distill" / "organism-hear-2.yaml"
    hear2 = ["adapt-organism", "--out", str(out), "--config", str(recipe)]
    cases = [
        (["--set", "nope=1"], "unknown fields ['nope']"),
        (["--set", f"init_adapter={tmp_path}", "--set", "projector_init=least_squares"], "must be 'assembled'"),
        (["--set", f"init_adapter={tmp_path}"], f"init_adapter {tmp_path} holds no adapter"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, hear2 + extra)
        assert result.exit_code == 2 and message in result.output, result.output
    assert not out.exists()
