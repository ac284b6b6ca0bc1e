"""Run.CliExecute and typed Config keys at run time, through real runs.

No value runs as code whatever quoting surrounds it; typed keys are checked after
expansion; commands run in the rank's own folder; Keep gathers only what the command
created or changed under its folder; no process of a command outlives the run.
"""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import h5py
import pytest
from conftest import distx, log_lines, run_script, text, values


def write_script(folder: Path, body: str) -> Path:
    script = folder / "script.yml"
    script.write_text(textwrap.dedent(body))
    return script


def task_errors(output: Path) -> dict[tuple[int, int], str]:
    with h5py.File(output, "r") as file:
        return {(int(row["rank"]), int(row["index"])): text(row["error"])
                for row in file["tasks"][()] if row["status"] == b"error"}


def kept_files(output: Path) -> dict[str, bytes]:
    found = {}
    with h5py.File(output, "r") as file:
        if "files" in file:
            file["files"].visititems(lambda name, item: found.__setitem__(
                name, item[()].tobytes()) if isinstance(item, h5py.Dataset) else None)
    return found


def test_value_read_from_a_file_never_runs_in_any_quoting(tmp_path):
    """The issue's case: a line `payload=$(touch X)` read by PublishFromFile, used in "...",
    backticks, $(...), a heredoc and an assignment: printed verbatim, never run."""
    mark = tmp_path / "MARK"
    payload = f"$(touch {mark}) `touch {mark}` \"; touch {mark}; \" '; touch {mark}; '"
    (tmp_path / "input.txt").write_text(f"payload={payload}\n")
    script = write_script(tmp_path, r"""
        Version: 2
        Name: injection
        Sequence:
          - Task: Run.PublishFromFile
            Config: {Path: input.txt, Pattern: "^payload=(.*)$", Keys: [payload]}
          - Task: Run.CliExecute
            Config:
              Parameters: |
                echo "1:@[payload]"
                echo 2:`echo @[payload]`
                echo "3:$(echo "@[payload]")"
                x=@[payload]; echo "4:$x"
                cat <<EOF
                5:@[payload]
                EOF
    """)
    output = tmp_path / "out.h5"
    result = run_script(script, output, None, timeout=120)
    assert result.returncode == 0, result.stderr
    assert not mark.exists()
    with h5py.File(output, "r") as file:
        printed = [message for severity, message in log_lines(file) if severity == "OUTPUT"]
    assert printed == [f"{n}:{payload}" for n in range(1, 6)]


def test_typed_keys_are_checked_after_expansion(tmp_path):
    """`AnyFolder: "@[flag]"` with the text "false" must not read outside the folder;
    `Severity: "@[s:LOUD]"` fails naming the key, the type and the value."""
    script = write_script(tmp_path, """
        Version: 2
        Name: typed
        Distributed: True
        Roles:
          coordinator:
            Sequence:
              - Task: Run.Publish
                Config: {flag: "false"}
              - Task: Run.PublishFromFile
                Config: {Path: /etc/passwd, Pattern: "^(root)", Keys: [user], AnyFolder: "@[flag]"}
          other:
            Ranks: "1"
            Sequence:
              - Task: Run.Message
                Config: {Message: hello, Severity: "@[s:LOUD]"}
    """)
    output = tmp_path / "out.h5"
    result = run_script(script, output, None, timeout=120)
    assert result.returncode == 1
    errors = task_errors(output)
    assert "Config key AnyFolder must be true or false, but '@[flag]' gave str 'false'" \
        in errors[(0, 1)]
    assert "Config key Severity must be one of DEBUG" in errors[(1, 0)]
    assert "'@[s:LOUD]' gave str 'LOUD'" in errors[(1, 0)]
    with h5py.File(output, "r") as file:
        assert (0, "user") not in values(file)


def test_keep_takes_only_what_the_command_made_inside_its_folder(tmp_path):
    work = tmp_path / "work"
    (work / "out").mkdir(parents=True)
    stale = work / "out" / "stale.txt"
    stale.write_text("from 2020")
    os.utime(stale, (1577836800, 1577836800))
    (tmp_path / "secret.txt").write_text("outside")
    script = write_script(tmp_path, """
        Version: 2
        Name: keep
        Sequence:
          - Task: Run.CliExecute
            Config:
              Parameters: >-
                echo new > out/new.txt && ln -s /etc/passwd out/passwd.txt &&
                ln -s ../../secret.txt out/secret.txt && echo changed >> out/seen.txt
              CWD: work
              Keep: ["out/*.txt", "*/*.txt"]
    """)
    (work / "out" / "seen.txt").write_text("before\n")
    output = tmp_path / "out.h5"
    result = run_script(script, output, None, timeout=120)
    assert result.returncode == 0, result.stderr
    kept = {name.rsplit("/", 1)[-1]: data for name, data in kept_files(output).items()}
    assert kept == {"new.txt": b"new\n", "seen.txt": b"before\nchanged\n"}
    with h5py.File(output, "r") as file:
        warnings = [message for severity, message in log_lines(file) if severity == "WARNING"]
    assert any("passwd.txt leads outside" in line for line in warnings)


def test_commands_run_in_their_rank_folder_and_keep_only_their_own_files(tmp_path):
    """Three ranks write the same relative name: three kept files, one per rank."""
    script = write_script(tmp_path, """
        Version: 2
        Name: folders
        Distributed: True
        Roles:
          coordinator:
            Sequence: [{Task: Run.Delay, Config: {Time: 0.1}}]
          workers:
            Ranks: "1-"
            Sequence:
              - Task: Run.CliExecute
                Config:
                  Parameters: "mkdir -p out && echo rank @{Rank} in $(pwd) > out/result.txt"
                  Keep: ["out/*.txt"]
    """)
    output = tmp_path / "out.h5"
    result = run_script(script, output, 4, timeout=180)
    assert result.returncode == 0, result.stderr
    kept = kept_files(output)
    assert sorted(kept) == [f"run0/rank{rank}/out/result.txt" for rank in (1, 2, 3)]
    for rank in (1, 2, 3):
        line = kept[f"run0/rank{rank}/out/result.txt"].decode()
        assert line.startswith(f"rank {rank} in ") and line.strip().endswith(f"/rank{rank}")
    assert not (tmp_path / "out").exists()


def processes_running(word: str) -> list[int]:
    """PIDs whose command line contains `word`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if word.encode() in (entry / "cmdline").read_bytes().replace(b"\0", b" "):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.mark.parametrize("ranks", [None, 2])
def test_no_process_of_a_command_outlives_the_run(tmp_path, ranks):
    """A command past its Timeout, and background children of one that finished, are
    killed with their whole process group (before: re-parented to PID 1, still running)."""
    tag = f"{os.getpid() % 1000 + 3000}.{ranks or 1}"
    script = write_script(tmp_path, f"""
        Version: 2
        Name: orphans
        Distributed: True
        Roles:
          coordinator:
            Sequence:
              - Task: Run.CliExecute
                Config: {{Parameters: "sleep {tag}1 > /dev/null 2>&1 &"}}
              - Task: Run.CliExecute
                Config: {{Parameters: "sleep {tag}2 & sleep {tag}3; echo never", Timeout: 1}}
          other:
            Ranks: "1"
            Sequence:
              - Task: Run.CliExecute
                Config: {{Parameters: "(sleep {tag}4 &); sh -c 'sleep {tag}5'", Timeout: 1}}
    """)
    output = tmp_path / "out.h5"
    result = distx(script, "--output", output, ranks=ranks, timeout=120)
    assert result.returncode == 1, result.stderr
    deadline = time.monotonic() + 10  # killed processes may take a moment to go
    while processes_running(f"sleep {tag}") and time.monotonic() < deadline:
        time.sleep(0.2)
    leftovers = processes_running(f"sleep {tag}")
    for pid in leftovers:
        os.kill(pid, 9)
    assert leftovers == []
    # Rank 1's command times out too, or is cancelled first when rank 0's fails.
    assert "timed out after 1 s waiting for command" in task_errors(output)[(0, 1)]


def test_keep_refuses_a_file_over_its_limit_without_reading_it(tmp_path):
    """A 3 GB (sparse) file asked for by Keep fails the task with the limit; the small
    file beside it is still kept (before: the whole file was read into memory)."""
    script = write_script(tmp_path, """
        Version: 2
        Name: keep-big
        Sequence:
          - Task: Run.CliExecute
            Config:
              Parameters: "truncate -s 3G big.bin && echo small > small.txt"
              Keep: ["*.bin", "*.txt"]
    """)
    output = tmp_path / "out.h5"
    result = run_script(script, output, None, timeout=120)
    assert result.returncode == 1
    assert "kept file big.bin is larger than Keep's limit of 256 MiB" in task_errors(output)[(0, 0)]
    assert {name.rsplit("/", 1)[-1] for name in kept_files(output)} == {"small.txt"}
