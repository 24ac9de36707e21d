"""`halo-client` as a user runs it: real processes, a real mock server on a real port."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from halo_client.reference.tiny_model import write_tiny_llama
from halo_client.testing import FaultPlan, MockBackend, MockKoboldServer
from halo_client.testing.ports import free_port, wait_for_port
from halo_client.testing.processes import stop_process
from halo_client.testing.threaded import ServerThread

pytestmark = pytest.mark.process

CLI = [sys.executable, "-m", "halo_client.cli"]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def mock_url() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([*CLI, "mock-server", "--port", str(port)], stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc, 10)


@pytest.fixture
def recording_mock() -> Iterator[MockKoboldServer]:
    """A mock server in this process, so a test can see what it received."""
    server = MockKoboldServer(backend=MockBackend(strict_template=True), faults=FaultPlan())
    with ServerThread(lambda: server):
        yield server


def run(*args: str, stdin: str | None = None, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("HALO_URL", "HALO_PASSWORD")}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, input=stdin, timeout=timeout,
                          env={**base, **(env or {})})


def one_line_exit_2(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("halo-client: "), result.stderr
    return lines[0]


# ------------------------------------------------------------------------ generate, info


def test_generate_saves_frames_that_load_without_pickle(recording_mock: MockKoboldServer, tmp_path: Path) -> None:
    out = tmp_path / "out.npz"
    result = run("--url", recording_mock.url, "generate", "hello", "--attention-out", str(out), "--temperature", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(("Sure.", "Hello!", "Yes."))  # a mock reply
    assert "<|im_end|>" not in result.stdout  # the stopping token is not printed
    info = recording_mock.info()
    with np.load(out) as saved:  # no allow_pickle: every array is plain numbers
        input_ids, token_ids = saved["input_ids"], saved["token_ids"]
        assert input_ids.tolist() == recording_mock.mock.received[-1]
        frames = sorted(k for k in saved.files if k.startswith("frame_"))
        assert len(frames) == len(token_ids) > 0  # one frame per token, the stopping one included
        for i, key in enumerate(frames):
            frame = saved[key]
            assert frame.shape == (info.num_layers, info.num_attention_heads, len(input_ids) + i)
            np.testing.assert_allclose(frame.sum(axis=-1), 1.0, atol=1e-3)
        offsets, blob = saved["piece_offsets"], saved["piece_bytes"].tobytes()
        assert len(offsets) == len(input_ids) + len(token_ids) + 1 and offsets[-1] == len(blob)
        pieces = [blob[offsets[k]: offsets[k + 1]] for k in range(len(offsets) - 1)]
        assert b"".join(pieces[: len(input_ids)]).startswith(b"<|im_start|>")  # the prompt's pieces too
        assert b"hello" in b"".join(pieces)
        assert saved["brightness"].shape == (len(input_ids) + len(token_ids),)
        assert np.isfinite(saved["brightness"]).all()
    assert not (tmp_path / "out.npz.tmp").exists()


def test_attention_out_to_a_missing_folder_fails_before_generating(recording_mock: MockKoboldServer) -> None:
    before = len(recording_mock.mock.received)
    line = one_line_exit_2(run("--url", recording_mock.url, "generate", "hi", "--attention-out",
                               "/nonexistent/dir/a.npz"))
    assert "/nonexistent/dir" in line and "does not exist" in line
    assert len(recording_mock.mock.received) == before  # nothing was generated


def test_info_for_people_and_for_machines(mock_url: str) -> None:
    people = run("--url", mock_url, "info")
    assert people.returncode == 0 and "halo-mock" in people.stdout
    assert "{" not in people.stdout and "layers x" in people.stdout  # no raw dict
    machines = run("--url", mock_url, "info", "--json")
    assert json.loads(machines.stdout)["attention"]["available"] is True


def test_tokenize(mock_url: str) -> None:
    result = run("--url", mock_url, "tokenize", "hi 😀")
    assert result.returncode == 0 and "tokens" in result.stdout


def test_env_url_is_used(mock_url: str) -> None:
    result = run("info", env={"HALO_URL": mock_url})
    assert result.returncode == 0 and "halo-mock" in result.stdout


# ------------------------------------------------------------------------- bad input


def test_unreachable_server_is_one_line_and_exit_2() -> None:
    port = free_port()
    line = one_line_exit_2(run("--url", f"http://127.0.0.1:{port}", "info"))
    assert f"127.0.0.1:{port}" in line and "halo-client serve" in line


@pytest.mark.parametrize("args", [
    ("generate", "hi", "--max-length", "-5"), ("generate", "hi", "--max-length", "0"),
    ("generate", "hi", "--decay", "-1"), ("generate", "hi", "--decay", "2"),
    ("generate", "hi", "--min-distance", "-3"), ("generate", "hi", "--boost", "-10"),
    ("generate", "hi", "--distance-scale", "0"), ("generate", "hi", "--temperature", "-1"),
    ("generate", "hi", "--seed", "-2"), ("chat", "--max-context-tokens", "-5"),
    ("chat", "--protect-exchanges", "-1"), ("mock-server", "--port", "99999"), ("--timeout", "-1", "info"),
    ("--timeout", "0", "info"), ("serve", "--context", "1"), ("generate", "hi", "--aggregation", "median"),
])
def test_bad_values_are_one_line_and_exit_2(args: tuple[str, ...]) -> None:
    line = one_line_exit_2(run("--url", "http://127.0.0.1:1", *args))
    assert ("Invalid value" in line and "range" in line) or "is not one of" in line or "not in" in line


def test_password_errors_say_which(recording_mock: MockKoboldServer) -> None:
    with ServerThread(lambda: MockKoboldServer(password="s3cret")) as locked:
        missing = one_line_exit_2(run("--url", locked.url, "info"))
        wrong = one_line_exit_2(run("--url", locked.url, "--password", "nope", "info"))
    assert "carried none" in missing and "is wrong" in wrong
    for line in (missing, wrong):
        assert ". Pass --password" in line  # two sentences, not run together


# ------------------------------------------------------------------------------ chat


def test_scripted_chat_reads_one_message_per_line(mock_url: str) -> None:
    result = run("--url", mock_url, "chat", "--temperature", "0", stdin="hello\nand again\n/quit\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("model>") == 2
    # the conversation is not reprinted after every reply, and no template markup shows
    assert "<|im_start|>" not in result.stdout and "you:" not in result.stdout


def test_help_and_unknown_commands_are_not_sent(recording_mock: MockKoboldServer) -> None:
    result = run("--url", recording_mock.url, "chat", stdin="/help\n/frobnicate now\n/quit\n")
    assert result.returncode == 0, result.stderr
    assert "/pruned" in result.stdout and "/restore" in result.stdout
    assert "unknown command /frobnicate" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert recording_mock.mock.received == []  # nothing went to the model


def test_show_draws_the_heat_view_on_demand(mock_url: str) -> None:
    result = run("--url", mock_url, "chat", "--temperature", "0", stdin="hello there.\n/show\n/show all\n/quit\n")
    assert result.returncode == 0, result.stderr
    views = result.stdout.split("percentile among")  # (a pipe: the plain view)
    assert len(views) == 3  # two views, each ending with its legend
    assert "you:\n" in views[0] and "hello there." in views[0] and "<|im_start|>" not in views[0]
    assert "tpl  <|im_start|>user\\n" in views[1]  # /show all: template tokens too


def test_prune_report_numbers_are_what_restore_and_pruned_take(recording_mock: MockKoboldServer) -> None:
    script = ("My locker code is 4817. Please remember it.\nWhat do octopuses eat? Tell me.\n"
              "And one more message. It has two sentences.\n/pruned\n/restore {n}\n/pruned\n/quit\n")
    first = run("--url", recording_mock.url, "chat", "--temperature", "0", "--max-context-tokens", "200",
                "--max-length", "30", stdin=script.replace("/restore {n}\n", ""))
    reported = re.findall(r"pruned sentence (\d+) \(brightness [0-9.]+, \d+ tokens\): (.+)", first.stderr)
    assert reported, first.stderr
    number, text = reported[0]
    assert "nan" not in first.stderr
    listed = re.findall(r"sentence (\d+) \(brightness [0-9.]+, \d+ tokens\): (.+)", first.stdout)
    assert (number, text) in listed  # /pruned uses the report's number
    second = run("--url", recording_mock.url, "chat", "--temperature", "0", "--max-context-tokens", "200",
                 "--max-length", "30", stdin=script.replace("{n}", number))
    assert f"restored sentence {number} " in second.stderr and text.strip() in second.stderr


def test_the_reply_just_shown_is_not_pruned(recording_mock: MockKoboldServer, tmp_path: Path) -> None:
    session = tmp_path / "s.json"
    result = run("--url", recording_mock.url, "chat", "--temperature", "0", "--max-context-tokens", "120",
                 "--session", str(session), stdin="First message here.\nSecond message here.\n")
    assert result.returncode == 0, result.stderr
    from halo_client.conversation import load

    state = load(session).state
    last_reply = state.turns[-1]
    assert last_reply.role == "assistant"
    assert state.active_mask()[last_reply.start: last_reply.end].all()
    assert "--protect-exchanges" in run("chat", "--help").stdout


def test_save_to_a_missing_folder_is_reported_and_the_chat_goes_on(mock_url: str) -> None:
    result = run("--url", mock_url, "chat", "--temperature", "0",
                 stdin="hello\n/save /nonexistent/x.json\nagain\n/quit\n")
    assert result.returncode == 0, result.stderr
    assert "not saved" in result.stderr and "/nonexistent/x.json" in result.stderr
    assert result.stdout.count("model>") == 2 and "Traceback" not in result.stderr


def test_chat_session_is_saved_and_resumed(mock_url: str, tmp_path: Path) -> None:
    session = tmp_path / "chat.json"
    first = run("--url", mock_url, "chat", "--temperature", "0", "--session", str(session),
                "--max-context-tokens", "400", stdin="hello\n")
    assert first.returncode == 0, first.stderr
    saved = session.read_bytes()
    second = run("--url", mock_url, "chat", "--temperature", "0", "--session", str(session), stdin="again\n/stats\n")
    assert second.returncode == 0, second.stderr
    assert "turns 5 ·" in second.stdout  # system, hello, reply, again, reply
    assert session.read_bytes() != saved


def test_a_session_from_another_model_is_refused(mock_url: str, tmp_path: Path) -> None:
    session = tmp_path / "chat.json"
    assert run("--url", mock_url, "chat", "--temperature", "0", "--session", str(session),
               stdin="hello\n").returncode == 0
    saved = session.read_bytes()
    model = write_tiny_llama(tmp_path / "tiny.gguf", n_ctx=1024)
    port = free_port()
    server = subprocess.Popen([*CLI, "serve", "--model", str(model), "--port", str(port), "--context", "1024"],
                              stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, 60)
        url = f"http://127.0.0.1:{port}"
        line = one_line_exit_2(run("--url", url, "chat", "--session", str(session), stdin="hi\n"))
        assert "halo-mock" in line and "--force-model" in line
        assert session.read_bytes() == saved  # nothing was changed
        # forced, but its ids are not all in this model's vocabulary: every request would fail
        line = one_line_exit_2(run("--url", url, "chat", "--session", str(session), "--force-model", stdin="hi\n"))
        assert "vocabulary of tiny" in line
        assert session.read_bytes() == saved
        # the other way round (a small vocabulary's ids are all in the mock's): forced, it loads
        small = tmp_path / "tiny-chat.json"
        assert run("--url", url, "chat", "--session", str(small), "--max-length", "3", stdin="hi\n").returncode == 0
        forced = run("--url", mock_url, "chat", "--session", str(small), "--force-model", "--max-length", "3",
                     stdin="/stats\n")
        assert forced.returncode == 0, forced.stderr
    finally:
        stop_process(server, 10)


def test_ctrl_c_stops_the_reply_and_keeps_the_chat(tmp_path: Path) -> None:
    """First Ctrl-C during a reply: the reply stops, what was written stays; at the prompt, the
    second Ctrl-C leaves, and the session is saved."""
    server = MockKoboldServer(faults=FaultPlan(token_delay_s=0.05))
    session = tmp_path / "s.json"
    with ServerThread(lambda: server):
        proc = subprocess.Popen([*CLI, "--url", server.url, "chat", "--max-length", "400", "--session", str(session)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("Tell me a long story.\n")
        proc.stdin.flush()
        echoed = "you> Tell me a long story.\nmodel> "  # (stdin is not a terminal: the message is echoed)
        assert proc.stdout.read(len(echoed)) == echoed
        time.sleep(0.5)  # some tokens stream
        proc.send_signal(signal.SIGINT)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)  # at the prompt now: asks
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)  # and leaves
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopped" in err and "Ctrl-C again" in err and "Traceback" not in err
    from halo_client.conversation import load

    state = load(session).state
    reply = state.turns[-1]
    assert reply.role == "assistant" and reply.complete and 0 < reply.end - reply.start < 400


# ------------------------------------------------------------------- servers and demo


def test_busy_port_is_reported_before_the_model_loads(tmp_path: Path) -> None:
    model = write_tiny_llama(tmp_path / "tiny.gguf")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", "--model", str(model), "--port", str(port))
    line = one_line_exit_2(result)
    assert f"127.0.0.1:{port}" in line and "in use" in line and "--port" in line
    assert "loading" not in result.stderr  # refused before loading anything


def test_a_missing_extra_is_one_line_before_any_download(tmp_path: Path) -> None:
    shim = tmp_path / "shim" / "gguf"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('simulated: gguf is not installed')\n")
    cache = tmp_path / "cache"
    env = {"PYTHONPATH": f"{shim.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "HALO_CACHE_DIR": str(cache)}
    for args in (("serve",), ("demo",), ("eval", "pruning")):
        line = one_line_exit_2(run(*args, env=env))
        assert "pip install 'halo-weave[reference]'" in line
    assert not cache.exists()  # nothing was fetched


def test_demo_on_a_taken_port_chats_with_its_own_server(tmp_path: Path) -> None:
    model = write_tiny_llama(tmp_path / "tiny.gguf", n_ctx=1024)
    session = tmp_path / "demo.json"
    with socket.socket() as taken:  # something else holds the port, as KoboldCPP often holds 5001
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("demo", "--model", str(model), "--port", str(port), "--context", "1024", "--session",
                     str(session), "--max-length", "5", stdin="hello\n/quit\n", timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"port {port} is taken" in result.stderr
    assert result.stdout.count("model>") == 1
    saved = json.loads(session.read_text())
    assert saved["meta"]["model_name"] == "tiny"  # the demo's own model
    # the product's defaults, the pruning benchmark's choice (issue 19): memory by meaning, pruning
    # ranked by the question where the model's heads are known
    from halo_client.conversation.memory import MemorySettings

    assert saved["memory"] == MemorySettings().model_dump() and saved["memory"]["scorer"] == "meaning"
    assert saved["pruner"]["score"] == "question"


# ----------------------------------------------------------------------- help, make


def test_every_option_says_what_it_does() -> None:
    for command in ("chat", "generate", "demo"):
        help_text = run(command, "--help").stdout
        for option in ("--aggregation", "--distance-mode", "--min-distance", "--distance-scale", "--accumulation",
                       "--decay", "--boost"):
            block = help_text.split(option, 1)[1].split("\n  --", 1)[0]
            assert "default:" in block and len(block.split("[default")[0].split()) >= 4, (command, option, block)


def test_make_demo_takes_chat_options_and_installs_only_what_it_needs(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    dry = subprocess.run(["make", "-n", "-B", "demo", f"VENV={tmp_path / 'venv'}",
                          "CHAT_ARGS=--max-context-tokens 300"], cwd=root, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert "--max-context-tokens 300" in dry.stdout
    installs = [line for line in dry.stdout.splitlines() if "pip install" in line and "-e" in line]
    assert installs and all("'.[reference,memory]'" in line for line in installs), installs


def test_eval_pruning_on_your_own_conversations(tmp_path: Path) -> None:
    model = write_tiny_llama(tmp_path / "tiny.gguf", n_ctx=2048)
    good = tmp_path / "mine.jsonl"
    good.write_text('{"messages": [{"role": "user", "content": "My code is 4821. Hi!"}, '
                    '{"role": "assistant", "content": null}, {"role": "user", "content": "And now?"}], '
                    '"questions": [{"question": "What is my code?", "answer": "4821"}]}\n')
    out = tmp_path / "out"
    result = run("eval", "pruning", "--model", str(model), "--conversations", str(good), "--budgets", "0.5",
                 "--policy", "recency", "--out", str(out), "--cache", str(tmp_path / "cache"), "--cost-sentences", "0")
    assert result.returncode == 0, result.stderr
    assert "# Pruning benchmark" in result.stdout and (out / "pruning.json").exists()
    assert "[1/" in result.stderr  # progress, as plain lines without a terminal
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "assistant", "content": "hi"}]}\n')
    line = one_line_exit_2(run("eval", "pruning", "--model", str(model), "--conversations", str(bad),
                               "--out", str(tmp_path / "o2")))
    assert "bad.jsonl, line 1" in line
    assert not (tmp_path / "o2").exists()  # nothing written


def test_eval_pruning_on_a_file_of_questions_only_runs_and_reports(tmp_path: Path) -> None:
    """A user's file whose chats end with a reply (no fidelity probe) and then ask questions runs to
    the end and reports (issue 19, 1d); `--score` names the default's score and `--memory-count` memory's
    count (a name given twice is one candidate), and a wrong one is refused."""
    model = write_tiny_llama(tmp_path / "tiny.gguf", n_ctx=2048)
    mine = tmp_path / "questions.jsonl"
    mine.write_text('{"messages": [{"role": "user", "content": "My code is 4821. Hi!"}, '
                    '{"role": "assistant", "content": "Hello."}], '
                    '"questions": [{"question": "Which number opens it?", "answer": "4821", '
                    '"evidence": ["My code is 4821."]}]}\n')
    out = tmp_path / "out"
    result = run("eval", "pruning", "--model", str(model), "--conversations", str(mine), "--budgets", "0.5",
                 "--policy", "default", "--policy", "recency", "--score", "brightness", "--no-attention-recall",
                 "--score", "brightness", "--memory-count", "2", "--memory-count", "2", "--out", str(out),
                 "--cache", str(tmp_path / "cache"), "--cost-sentences", "0")
    assert result.returncode == 0, result.stderr
    report = (out / "pruning.md").read_text()
    assert "lowest KL at 50%: none measured" in report and "given with --score" in report
    assert "per message: 2, given with --memory-count" in report
    tuned = json.loads((out / "pruning.json").read_text())["tuned"]
    assert tuned["memory"]["max_recalled"] == 2 and tuned["count_fixed"] and tuned["counts"] == {}
    rows = json.loads((out / "pruning.json").read_text())["rows"]
    assert {r["kind"] for r in rows} == {"question"} and {r["wording"] for r in rows} == {"paraphrased"}
    assert not (out / "pruning.partial.json").exists()  # the run finished: only the whole result stays
    line = one_line_exit_2(run("eval", "pruning", "--model", str(model), "--conversations", str(mine),
                               "--score", "loudness", "--out", str(tmp_path / "o2")))
    assert "'loudness'" in line and "question heads (last row)" in line
    assert not (tmp_path / "o2").exists()
    line = one_line_exit_2(run("eval", "pruning", "--model", str(model), "--conversations", str(mine),
                               "--memory-count", "-1", "--out", str(tmp_path / "o2")))
    assert "--memory-count" in line and not (tmp_path / "o2").exists()
    # one conversation id in two --handwritten files: refused before anything runs
    line = one_line_exit_2(run("eval", "pruning", "--model", str(model), "--handwritten", str(mine), "--handwritten",
                               str(mine), "--out", str(tmp_path / "o3")))
    assert "--handwritten" in line and "more than one file" in line
    assert not (tmp_path / "o3").exists()


# --------------------------------------------------------- chat: sessions, pipes, failures (issue 21)


def test_a_typed_flag_wins_over_the_resumed_session_and_says_so(mock_url: str, tmp_path: Path) -> None:
    session = tmp_path / "s.json"
    assert run("--url", mock_url, "chat", "--temperature", "0", "--session", str(session),
               stdin="hello\n").returncode == 0
    typed = run("--url", mock_url, "chat", "--temperature", "0", "--session", str(session),
                "--max-context-tokens", "150", "--no-memory", stdin="/stats\n")
    assert typed.returncode == 0, typed.stderr
    assert "budget 150" in typed.stdout
    said = [line for line in typed.stderr.splitlines() if "replaces" in line]
    assert said == [f"  --max-context-tokens 150 replaces the max context tokens 0 saved in {session}, from now on",
                    f"  --no-memory replaces the enabled True saved in {session}, from now on"]
    kept = run("--url", mock_url, "chat", "--temperature", "0", "--session", str(session), stdin="/stats\n")
    assert "budget 150" in kept.stdout and "replaces" not in kept.stderr  # saved now: nothing to say
    assert "they win" in run("demo", "--help").stdout


def test_a_session_with_a_token_outside_the_vocabulary_is_refused_at_load(mock_url: str, tmp_path: Path) -> None:
    session = tmp_path / "s.json"
    assert run("--url", mock_url, "chat", "--temperature", "0", "--session", str(session),
               stdin="hello\n").returncode == 0
    data = json.loads(session.read_text())
    data["columns"]["token_id"][4] = 10_000_000
    session.write_text(json.dumps(data))
    saved = session.read_bytes()
    line = one_line_exit_2(run("--url", mock_url, "chat", "--session", str(session), stdin="hi\nagain\n"))
    assert "10000000" in line and "vocabulary" in line
    assert session.read_bytes() == saved  # untouched: no turn without a reply written back


def test_a_piped_chat_echoes_what_was_sent_and_shows_a_plain_view(mock_url: str, tmp_path: Path) -> None:
    session = tmp_path / "s.json"
    first = run("--url", mock_url, "chat", "--temperature", "0", "--session", str(session),
                stdin="hello there. How are you?\n/show\n")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("you> hello there. How are you?\nmodel> ")
    assert "\x1b" not in first.stdout  # no colour codes where no terminal shows them
    assert "\nyou> /show\n" in first.stdout  # commands too: the output is the whole transcript
    view = first.stdout.split("\nyou> /show\n", 1)[1].splitlines()
    assert view[0] == "system:" and "you:" in view and "model:" in view
    assert any(line.endswith("hello there.") and line.split()[0] in "▁▂▃▄▅▆▇█" for line in view)
    assert "dim to" in view[-1] and "brightest token" in view[-1]
    resumed = run("--url", mock_url, "chat", "--session", str(session), stdin="/stats\n")
    frames = re.search(r"frames tracked (\d+)", resumed.stdout)
    assert frames and int(frames.group(1)) > 0  # counted on from the saved chat, not from 0


def test_a_message_too_long_is_refused_and_a_prune_of_many_is_one_line(recording_mock: MockKoboldServer,
                                                                          tmp_path: Path) -> None:
    session = tmp_path / "s.json"
    many = " ".join(f"Sentence number {i} is here." for i in range(40))
    built = run("--url", recording_mock.url, "chat", "--temperature", "0", "--session", str(session),
                "--max-length", "20", stdin=f"{many}\nOkay.\n")
    assert built.returncode == 0, built.stderr
    received = len(recording_mock.mock.received)
    state_before = session.read_bytes()
    result = run("--url", recording_mock.url, "chat", "--temperature", "0", "--session", str(session),
                 "--max-length", "20", "--max-context-tokens", "60",
                 stdin=f"{'word ' * 5000}\n/prune\n/pruned\n/quit\n")
    assert result.returncode == 0, result.stderr
    refused = [line for line in result.stderr.splitlines() if "nothing was sent" in line]
    assert len(refused) == 1 and "tokens" in refused[0] and "at most" in refused[0]
    assert len(recording_mock.mock.received) == received  # not sent
    pruned = [line for line in result.stderr.splitlines() if "pruned" in line]
    assert len(pruned) == 1 and re.search(r"pruned \d+ sentences \(\d+ tokens, brightness .+\): /pruned lists them",
                                          pruned[0]), result.stderr
    assert result.stdout.count("(brightness") > 3  # /pruned has the details
    assert session.read_bytes() != state_before  # the /prune was saved, the refused message was not


def test_a_server_dying_mid_reply_keeps_what_was_written_and_says_so(recording_mock: MockKoboldServer,
                                                                     tmp_path: Path) -> None:
    session = tmp_path / "s.json"
    recording_mock.faults = FaultPlan(drop_before_token=3)
    result = run("--url", recording_mock.url, "chat", "--temperature", "0", "--session", str(session),
                 stdin="Tell me a story.\n")
    assert result.returncode == 0, result.stderr
    assert "[interrupted:" in result.stderr and "what was written stays" in result.stderr
    from halo_client.conversation import load

    saved = load(session)
    reply = saved.state.turns[-1]
    assert reply.role == "assistant" and reply.complete and saved.meta["interrupted_turns"] == [reply.turn_id]
    recording_mock.faults = FaultPlan(drop_before_token=0)
    failed = run("--url", recording_mock.url, "chat", "--temperature", "0", "--session", str(session),
                 stdin="And then?\n")
    assert "was not added to the chat" in failed.stderr
    assert load(session).state.turns[-1].turn_id == reply.turn_id  # the failed message left nothing behind
