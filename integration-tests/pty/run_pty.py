"""Runs a command with a pseudo-terminal and reports what it wrote, as JSON.

  run_pty.py stderr -- ARGV...   stderr on a pty, stdout to a pipe (file):
                                 {"rc": N, "stdout": "...", "stderr": "..."}
  run_pty.py shell INPUT -- ARGV...
                                 stdin, stdout and stderr on one pty; INPUT is
                                 typed line by line: {"rc": N, "output": "..."}

Used by integration-tests/tests/cli.rs (the progress line and the
interactive shell of `weft sql` only appear on terminals).
"""
import json
import os
import pty
import select
import subprocess
import sys
import tempfile
import time

TIMEOUT = 120


def drain(fd, proc, deadline, sink):
    while time.time() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            sink.append(chunk)
        elif proc.poll() is not None:
            # Exited: read what is left.
            try:
                while True:
                    ready, _, _ = select.select([fd], [], [], 0.05)
                    if not ready:
                        return
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        return
                    sink.append(chunk)
            except OSError:
                return


def main():
    mode = sys.argv[1]
    sep = sys.argv.index("--")
    argv = sys.argv[sep + 1:]
    deadline = time.time() + TIMEOUT
    master, slave = pty.openpty()
    if mode == "stderr":
        with tempfile.TemporaryFile() as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=slave)
            os.close(slave)
            err = []
            drain(master, proc, deadline, err)
            rc = proc.wait(timeout=max(1, deadline - time.time()))
            out.seek(0)
            print(json.dumps({"rc": rc, "stdout": out.read().decode(),
                              "stderr": b"".join(err).decode(errors="replace")}))
    elif mode == "shell":
        typed = sys.argv[2]
        proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        output = []
        for line in typed.split("\n"):
            # Give the prompt time to appear, as a person would.
            drain_until = time.time() + 0.5
            drain(master, proc, min(drain_until, deadline), output)
            os.write(master, (line + "\r").encode())
        drain(master, proc, deadline, output)
        rc = proc.wait(timeout=max(1, deadline - time.time()))
        print(json.dumps({"rc": rc, "output": b"".join(output).decode(errors="replace")}))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
