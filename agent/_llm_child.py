"""Child-process entry point that hosts xllamacpp's OpenAI-compatible server.

Run by `agent.llm_server.EmbeddedLLMServer` as ``python -m agent._llm_child ...``. llama.cpp lives
in its own process so a crash or a long decode can never stall the agent's event loop, and so the
agent talks to it over HTTP exactly as it would to vLLM or OpenAI. The child exits on SIGTERM/SIGINT
and, because an orphaned model would hold a core forever, as soon as its parent process is gone.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

# Printed on --ready-fd once the server listens; the parent reads the base address from it.
READY_PREFIX = "LISTENING "


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m agent._llm_child", description=__doc__)
    ap.add_argument("--model", required=True, help="path of the GGUF file")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 lets the server pick a free port")
    ap.add_argument("--threads", type=int, default=1, help="threads for generation and prompt batches")
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--alias", default="local", help="model name the server answers to")
    ap.add_argument("--parent-pid", type=int, default=0, help="exit when this process is no longer our parent")
    ap.add_argument("--ready-fd", type=int, default=-1, help="pipe fd to write 'LISTENING <url>' to")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    import xllamacpp as xlc  # imported late: a bad install shows up in the log, after the arguments

    p = xlc.CommonParams()
    p.model.path = args.model
    p.model_alias = {args.alias}
    p.hostnames = [args.host]
    p.port = args.port
    p.n_ctx = args.ctx
    p.n_parallel = args.parallel
    # xllamacpp's defaults (-1: "all cores", many HTTP threads) ran at 1-5 tok/s here; pinning
    # both thread pools and using one HTTP thread is what makes it fast on a small CPU.
    p.cpuparams.n_threads = args.threads
    p.cpuparams_batch.n_threads = args.threads
    p.n_threads_http = 1
    p.cache_prompt = True  # reuse the KV cache of the shared prefix (system prompt + history)
    p.warmup = True

    t0 = time.monotonic()
    server = xlc.Server(p)  # loads the model, then serves HTTP on its own threads
    address = server.listening_address
    print(f"rejoinder llm child: listening on {address} after {time.monotonic() - t0:.2f} s "
          f"(threads={args.threads}, ctx={args.ctx})", flush=True)
    if args.ready_fd >= 0:
        os.write(args.ready_fd, f"{READY_PREFIX}{address}\n".encode())
        os.close(args.ready_fd)

    while not stop.wait(0.5):
        if args.parent_pid and os.getppid() != args.parent_pid:
            print("rejoinder llm child: parent is gone, exiting", flush=True)
            break
    del server  # ~Server stops the HTTP and main loops
    print("rejoinder llm child: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
