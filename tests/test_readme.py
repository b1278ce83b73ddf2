"""The README runs as written: its ```bash/```sh and ```python examples, run against a real server.

The blocks run in the README's order in one bash session (so shell variables and exported environment
variables carry from one block to the next), in a fresh working directory, against ``aiserve serve`` started
the way the README tells the reader to start it for the examples (``AISERVE_BILLING_SANDBOX=true``, SQLite in
a fresh data directory, nothing else configured). Python blocks are written to files and run there with this
interpreter (the virtualenv's, whose ``bin`` is first on ``PATH`` like an activated virtualenv), so they see
what the shell blocks exported (``AISERVE_API_KEY``). ``curl`` is wrapped to add ``--fail-with-body
--show-error``: any HTTP error fails the run. The one rewrite: ``localhost:8080`` and ``127.0.0.1:8080``
become the test server's port.

A block is skipped only when the line right before its fence is ``<!-- not run: reason -->``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

README = Path(__file__).resolve().parent.parent / "README.md"
RUN_LANGUAGES = {"bash": "bash", "sh": "bash", "python": "python"}
NOT_RUN = re.compile(r"<!-- not run: (?P<reason>\S.*?) -->")
FENCE = re.compile(r"```(?P<language>[\w+-]*)\s*")
DEFAULT_PORT = re.compile(r"\b(localhost|127\.0\.0\.1):8080\b")
# How the README tells the reader to start the server for the examples; the test starts it the same way.
SERVER_COMMAND = "AISERVE_BILLING_SANDBOX=true .venv/bin/aiserve serve"
SERVER_SETTINGS = {"AISERVE_BILLING_SANDBOX": "true"}
RUN_TIMEOUT_S = 240


@dataclass(frozen=True)
class Block:
    language: str  # the fence's info string: bash, sh, python, json, ...
    line: int  # 1-based line of the opening fence
    text: str
    not_run: str | None  # the marker's reason

    @property
    def runs(self) -> bool:
        return self.language in RUN_LANGUAGES and self.not_run is None


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of ``text``, with the not-run marker of each (the line right before its fence)."""
    blocks: list[Block] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.fullmatch(lines[index])
        if opening is None:
            index += 1
            continue
        end = index + 1
        while end < len(lines) and lines[end].rstrip() != "```":
            end += 1
        assert end < len(lines), f"README.md:{index + 1}: the block is never closed"
        marker = NOT_RUN.fullmatch(lines[index - 1].strip()) if index > 0 else None
        blocks.append(
            Block(
                language=opening["language"],
                line=index + 1,
                text="\n".join(lines[index + 1 : end]) + "\n",
                not_run=marker["reason"] if marker else None,
            )
        )
        index = end + 1
    return blocks


def table_cells(row: str) -> list[str]:
    """The cells of a Markdown table row (``\\|`` is a pipe inside a cell)."""
    inner = row.strip()
    assert inner.startswith("|") and inner.endswith("|"), row
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", inner[1:-1])]


def test_every_not_run_marker_sits_on_a_block_and_gives_a_reason() -> None:
    text = README.read_text()
    blocks = readme_blocks(text)
    markers = [n for n, line in enumerate(text.splitlines(), 1) if line.strip().startswith("<!-- not run")]
    marked = [b.line - 1 for b in blocks if b.not_run is not None]
    assert markers == marked, "a not-run marker must be the line right before a fence, with a reason"
    assert sum(b.runs for b in blocks) >= 6


def test_examples_have_no_placeholders() -> None:
    """Commands carry real values (shell variables captured from earlier answers); only comments elide."""
    for block in readme_blocks(README.read_text()):
        if not block.runs:
            continue
        for offset, line in enumerate(block.text.splitlines(), block.line + 1):
            code = line.split("#", 1)[0]
            assert "…" not in code and not re.search(r"<\w+>", code), f"README.md:{offset}: {line}"


def test_the_settings_table_is_one_table_of_three_columns() -> None:
    lines = README.read_text().splitlines()
    start = lines.index("## Settings")
    end = next(n for n in range(start + 1, len(lines)) if lines[n].startswith("## "))
    section = lines[start + 1 : end]
    rows = [n for n, line in enumerate(section) if line.startswith("|")]
    assert rows and rows == list(range(rows[0], rows[-1] + 1)), "the table is broken by a line that is no row"
    for n in rows:
        assert len(table_cells(section[n])) == 3, f"README.md:{start + 2 + n}: {section[n]}"
    assert re.fullmatch(r"\|(\s*-+\s*\|){3}", section[rows[1]].replace(":", "")), "the second row is the rule"


def architecture_paths(text: str) -> set[str]:
    """The source paths the Architecture section names in backticks: ``app.py``, ``gpu/market.py``,
    ``protocols/mcp/``, ``tests/worker/test_bundle.py``... (relative to ``aiserve_mcp/`` unless they start
    with a top-level folder of the repository)."""
    section = text.split("\n## Architecture\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"`([\w./-]+(?:\.py|\.json|/))`", section))


def test_the_architecture_section_names_only_what_exists() -> None:
    repository = README.parent
    names = architecture_paths(README.read_text())
    assert len(names) > 40, "the Architecture section's map of the tree is missing"
    missing = {
        name
        for name in names
        if not (repository / "aiserve_mcp" / name).exists() and not (repository / name).exists()
    }
    assert not missing, f"the README's Architecture section names paths that do not exist: {sorted(missing)}"


def test_every_package_has_a_row_in_the_where_to_find_table() -> None:
    names = architecture_paths(README.read_text())
    packages = {
        f"{path.relative_to(README.parent / 'aiserve_mcp')}/"
        for path in (README.parent / "aiserve_mcp").rglob("__init__.py")
        for path in [path.parent]
        if path.name not in {"aiserve_mcp", "versions", "migrations", "data"}
    }
    unplaced = {package for package in packages if not any(name.startswith(package) for name in names)}
    assert not unplaced, f"packages the Architecture section does not place: {sorted(unplaced)}"


@pytest.fixture
def readme_server(tmp_path: Path) -> Iterator[int]:
    """``aiserve serve`` as the README starts it for the examples, on a free port; yields the port."""
    assert SERVER_COMMAND in README.read_text(), "the README no longer starts the server this way"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AISERVE_")}
    env.update(SERVER_SETTINGS, AISERVE_DATA_DIR=str(tmp_path / "data"), AISERVE_LOG_LEVEL="WARNING")
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "aiserve_mcp", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        yield port
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def session_script(blocks: list[Block], port: int, work: Path, curl: Path) -> str:
    """One bash script: every block that runs, in order, each announced by ``==> README.md:LINE``."""
    parts = [
        "set -Eeuo pipefail",
        """trap 'printf "\\n==> failed (exit %d): %s\\n" "$?" "$BASH_COMMAND"' ERR""",
        f'test "$(command -v curl)" = {shlex.quote(str(curl))}',
    ]
    for block in blocks:
        if not block.runs:
            continue
        text = DEFAULT_PORT.sub(lambda m: f"{m[1]}:{port}", block.text)
        parts.append(f"printf '\\n==> README.md:%d (%s)\\n' {block.line} {block.language}")
        if RUN_LANGUAGES[block.language] == "bash":
            parts.append(text)
        else:
            script = work / f"readme_{block.line}.py"
            script.write_text(text)
            parts.append(f"{shlex.quote(sys.executable)} {shlex.quote(script.name)}")
    parts.append("printf '\\n==> done\\n'")
    return "\n".join(parts) + "\n"


def test_the_readme_examples_run_as_written(readme_server: int, tmp_path: Path) -> None:
    blocks = readme_blocks(README.read_text())
    work, tools = tmp_path / "work", tmp_path / "bin"
    work.mkdir()
    tools.mkdir()
    real_curl = shutil.which("curl")
    assert real_curl is not None, "the README's examples need curl"
    wrapper = tools / "curl"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(real_curl)} --fail-with-body --show-error "$@"\n')
    wrapper.chmod(0o755)
    venv_bin = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("AISERVE_")}
    env.update(
        PATH=os.pathsep.join([str(tools), str(venv_bin), env.get("PATH", os.defpath)]),
        VIRTUAL_ENV=str(venv_bin.parent),
        PYTHONUNBUFFERED="1",
    )
    (work / "readme.sh").write_text(session_script(blocks, readme_server, work, wrapper))
    started = time.monotonic()
    process = subprocess.Popen(
        ["bash", "readme.sh"],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the README's examples ran past {RUN_TIMEOUT_S} s:\n{output}")
    elapsed = time.monotonic() - started
    if process.returncode != 0:
        last = output.rfind("==> README.md:")
        block = output[last:].split("\n", 1)[0] if last >= 0 else "the preamble"
        pytest.fail(
            f"{block.removeprefix('==> ')}: a README example failed (exit {process.returncode}); "
            f"the end of the session's output:\n{output[-8000:]}"
        )
    print(f"README examples ran in {elapsed:.1f} s")

    ran = re.findall(r"^==> README\.md:(\d+) ", output, re.MULTILINE)
    assert [int(n) for n in ran] == [b.line for b in blocks if b.runs] and output.endswith("==> done\n")
    # What the examples say they do, they did:
    assert '"gateway":"sandbox"' in output and '"sandbox":true' in output  # the payment, in the sandbox
    assert re.search(r'"instances":\[\{"id":"local:', output)  # offers on this host
    assert '"outputs":{"scores":[[' in output  # the prediction of the model the README writes
    assert (work / "mlp.onnx").is_file()
    assert "'auth_method': 'api_key'" in output and "'email': 'user@example.com'" in output  # MCP whoami
    assert "TASK_STATE_COMPLETED" in output and 'name: "reserve_gpus"' in output  # A2A
    assert '"performative":"inform"' in output.replace(" ", "") and "(tell :sender aiserve" in output
    assert '"metrics.snapshot"' in output  # the WebSocket
