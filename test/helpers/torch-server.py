# Runs the tests' Python scripts in one interpreter that has imported torch once (importing it
# costs 1.5-2 s of CPU a process here, and the suite runs dozens of scripts).
#
# Each request on stdin: a 4-byte big-endian length, then JSON {"script", "args", "input"}.
# Each reply on stdout: the same framing, JSON {"status", "stdout", "stderr"}. A script runs as
# `python -c script args...` would: sys.argv is ["-c", *args], stdin holds `input`, its output is
# captured, SystemExit gives the status and an uncaught exception its traceback and status 1.
# What a script may change for the ones after it (argv, path, cwd, streams, the default dtype)
# is put back after every run. Ends at the end of stdin: when the test process exits.
import builtins
import io
import json
import os
import struct
import sys
import traceback

import numpy  # noqa: F401  (imported here once, as torch is)
import torch

requests = sys.stdin.buffer
replies = sys.stdout.buffer
real_streams = (sys.stdin, sys.stdout, sys.stderr)
base_path = list(sys.path)
base_cwd = os.getcwd()
base_dtype = torch.get_default_dtype()


def read_exact(count):
    data = b""
    while len(data) < count:
        chunk = requests.read(count - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def text_stream(initial=b""):
    return io.TextIOWrapper(io.BytesIO(initial), encoding="utf-8", newline="\n")


def exit_status(code, stderr):
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=stderr)
    return 1


def run(request):
    stdout, stderr = text_stream(), text_stream()
    sys.stdin = text_stream((request.get("input") or "").encode("utf-8"))
    sys.stdout, sys.stderr = stdout, stderr
    sys.argv = ["-c", *request["args"]]
    status = 0
    try:
        exec(compile(request["script"], "<string>", "exec"), {"__name__": "__main__", "__builtins__": builtins})
    except SystemExit as stop:
        status = exit_status(stop.code, stderr)
    except BaseException:  # noqa: BLE001  (a script's failure is its reply, as a process's would be)
        traceback.print_exc(file=stderr)
        status = 1
    finally:
        stdout.flush()
        stderr.flush()
        sys.stdin, sys.stdout, sys.stderr = real_streams
        sys.path[:] = base_path
        os.chdir(base_cwd)
        torch.set_default_dtype(base_dtype)

    def captured(stream):
        return stream.buffer.getvalue().decode("utf-8", errors="replace")

    return {"status": status, "stdout": captured(stdout), "stderr": captured(stderr)}


while True:
    head = read_exact(4)
    if head is None:
        break
    body = read_exact(struct.unpack(">I", head)[0])
    if body is None:
        break
    reply = json.dumps(run(json.loads(body))).encode("utf-8")
    replies.write(struct.pack(">I", len(reply)) + reply)
    replies.flush()
