"""Figures, targets and the chart of `rejoinder bench` (the measuring itself is `agent/benches/call.py`)."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import numpy as np

from agent.benches.stats import machine, summary

STAGES = ["endpoint", "stt_final", "llm_ttft", "first_phrase", "tts_ttfa", "playout"]  # the server's
# The chart stacks the critical path from the user's last voiced sample: what the reply waited
# for before the LLM's first token (endpoint and STT; with a preemptive start they overlap the
# LLM, so the server's own endpoint/stt_final figures would double-count), then the rest.
CHART_STAGES = ["uplink", "listening", "llm_ttft", "first_phrase", "tts_ttfa", "playout", "downlink"]
TARGETS = {"v2v_client_p50_ms": 800, "v2v_client_p95_ms": 1200, "barge_in_to_silence_p95_ms": 250,
           "self_interruptions": 0, "underruns": 0}


# --- CPU ------------------------------------------------------------------------------------------
def _descendants_cpu() -> float:
    """CPU seconds of this process's live descendants (the embedded LLM server), from /proc."""
    me, tick = os.getpid(), os.sysconf("SC_CLK_TCK")
    parent, cpu = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(d)] = int(fields[1])
        cpu[int(d)] = (int(fields[11]) + int(fields[12])) / tick
    total = 0.0
    for pid in cpu:
        p = pid
        while p in parent and p != me and p > 1:
            p = parent[p]
        if p == me and pid != me:
            total += cpu[pid]
    return total


class CpuMeter:
    """CPU used between construction and `read()`: this process (client, server, models) and children."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.own0 = time.process_time()
        self.kids0 = self._kids()

    @staticmethod
    def _kids() -> float:
        dead = resource.getrusage(resource.RUSAGE_CHILDREN)
        live = _descendants_cpu() if Path("/proc").is_dir() else 0.0
        return dead.ru_utime + dead.ru_stime + live

    def read(self) -> dict:
        wall = time.monotonic() - self.t0
        own, kids = time.process_time() - self.own0, self._kids() - self.kids0
        cores = os.cpu_count() or 1
        return {"wall_s": round(wall, 1), "process_cpu_s": round(own, 1), "children_cpu_s": round(kids, 1),
                "utilization_pct": round(100 * (own + kids) / max(wall, 1e-9) / cores, 1)}


# --- figures -------------------------------------------------------------------------------------
def summarize(conversations: list[dict]) -> dict:
    turns = [t for c in conversations for t in c["turns"]]
    server = [t["server"] for t in turns if t.get("server")]
    barges = [t["barge_in"] for t in turns if t.get("barge_in")]
    speaking = [b for b in barges if b.get("agent_was_speaking") and not b.get("reply_ending")]
    echo_turns = [t for t in turns if t["echo"]]
    answered = [t for t in turns if t.get("v2v_client_ms") is not None]
    stages = {"uplink": summary(t.get("uplink_ms") for t in turns),
              **{s: summary(m["timings_ms"].get(s) for m in server) for s in STAGES},
              "downlink": summary(t.get("downlink_ms") for t in turns)}
    return {
        "turns": len(turns),
        "answered": len(answered),
        "v2v_client_ms": summary(t["v2v_client_ms"] for t in turns if not t.get("barge_after_s")),
        "v2v_client_after_barge_in_ms": summary(t["v2v_client_ms"] for t in turns if t.get("barge_after_s")),
        "v2v_server_ms": summary(m["timings_ms"].get("voice_to_voice") for m in server),
        "stages_ms": stages,
        "barge_ins": len(barges),
        "barge_ins_while_speaking": len(speaking),
        "barge_ins_as_the_reply_ended": sum(bool(b.get("reply_ending")) for b in barges),
        "barge_ins_detected": sum(b["detected"] for b in speaking),
        "barge_in_to_silence_client_ms": summary(b.get("client_ms") for b in speaking),
        "barge_in_to_silence_server_ms": summary(b.get("server_ms") for b in speaking),
        "echo_turns": len(echo_turns),
        "self_interruptions": sum(t["self_interruptions"] for t in turns),
        "self_interruptions_in_echo_turns": sum(t["self_interruptions"] for t in echo_turns),
        "underruns_client": sum(t.get("client_underruns", 0) for t in turns),
        "underrun_ms_client": summary(t.get("client_underrun_ms") for t in turns if t.get("client_underruns")),
        "underruns_server_tts": sum((m.get("tts_underruns") or 0) for m in server),
        "underruns_server_playout": sum((m.get("playout_underruns") or 0) for m in server),
        "errors": [m["error"] for m in server if m.get("error")],
        "connect_ms": summary(c["connect_ms"] for c in conversations),
    }


def verdict(s: dict) -> dict:
    """Which targets are met; where not, the stage that holds us back (largest median)."""
    v2v, b2s = s["v2v_client_ms"], s["barge_in_to_silence_client_ms"]
    met = {
        "v2v_client_p50_ms": v2v["p50"] is not None and v2v["p50"] <= TARGETS["v2v_client_p50_ms"],
        "v2v_client_p95_ms": v2v["p95"] is not None and v2v["p95"] <= TARGETS["v2v_client_p95_ms"],
        "barge_in_to_silence_p95_ms": b2s["p95"] is not None and b2s["p95"] <= TARGETS["barge_in_to_silence_p95_ms"],
        "self_interruptions": s["echo_turns"] > 0 and s["self_interruptions"] == 0,
        # the client's gaps include the voice's own pauses: the server's ledger decides
        "underruns": s["underruns_server_playout"] == 0 and s["underruns_server_tts"] == 0,
    }
    medians = {k: v["p50"] for k, v in s["stages_ms"].items() if v["p50"] is not None}
    worst = max(medians, key=medians.__getitem__) if medians else None
    out = {"targets": TARGETS, "met": met, "all_met": all(met.values())}
    if not out["all_met"]:
        out["held_back_by"] = {"stage": worst, "median_ms": medians.get(worst)}
    return out


def build(results: dict[str, list[dict]], cpu: dict, load: dict | None, browser: dict | None, **options) -> dict:
    """The JSON document: machine, options, per-configuration figures and turns, load, browser."""
    cfg = options.pop("config")
    configs = []
    for label, convs in results.items():
        s = summarize(convs)
        configs.append({"label": label, "summary": s, "verdict": verdict(s), "conversations": convs})
    doc = {
        "machine": machine(),
        "options": options,
        "stack": {"stt_model": cfg.stt.model, "llm": cfg.llm.base_url or "embedded qwen2.5-0.5b (llama.cpp)",
                  "llm_threads": cfg.embedded_llm.threads, "preemptive": cfg.turns.preemptive,
                  "tts_voice": cfg.tts.voice},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "summary": configs[0]["summary"] if configs else None,
        "verdict": configs[0]["verdict"] if configs else None,
        "cpu": cpu,
        "configs": configs,
    }
    if load is not None:
        doc["load"] = {"sessions": load["sessions"], "cpu": load["cpu"],
                       "summary": summarize(load["conversations"]), "single_session": doc["summary"],
                       "v2v_client_values": [t["v2v_client_ms"] for cv in load["conversations"] for t in cv["turns"]
                                             if t.get("v2v_client_ms") is not None]}
    if browser is not None:
        doc["browser"] = {**browser, "v2v_client": summary(browser["v2v_client_ms"]),
                          "v2v_server": summary(browser["v2v_server_ms"])}
    return doc


def summary_lines(doc: dict) -> list[str]:
    m = doc["machine"]
    lines = [f"machine: {m['cores']} cores, {m['cpu_model']}; cpu {doc['cpu']}"]
    f = lambda d: f"p50 {d['p50']} / p95 {d['p95']} / max {d['max']} ms (n={d['n']})"  # noqa: E731
    for c in doc["configs"]:
        s, v = c["summary"], c["verdict"]
        lines += [f"[{c['label']}] {s['turns']} turns, {s['answered']} answered",
                  f"  voice-to-voice, client: {f(s['v2v_client_ms'])}",
                  f"  voice-to-voice, server: {f(s['v2v_server_ms'])}",
                  f"  barge-in → silence, client: {f(s['barge_in_to_silence_client_ms'])}; detected "
                  f"{s['barge_ins_detected']}/{s['barge_ins_while_speaking']} (and "
                  f"{s.get('barge_ins_as_the_reply_ended', 0)} as the reply ended by itself)",
                  f"  self-interruptions: {s['self_interruptions']} ({s['echo_turns']} echo turns); underruns: "
                  f"server playout {s['underruns_server_playout']} frames, TTS {s['underruns_server_tts']}; "
                  f"client silence gaps {s['underruns_client']} (include the voice's own pauses)",
                  "  stage medians: " + ", ".join(f"{k} {d['p50']}" for k, d in s["stages_ms"].items()),
                  f"  targets met: {v['met']}" + (f"; held back by {v['held_back_by']}" if "held_back_by" in v else "")]
    if "load" in doc:
        s = doc["load"]["summary"]
        lines.append(f"[{doc['load']['sessions']} sessions] v2v client {f(s['v2v_client_ms'])}; "
                     f"cpu {doc['load']['cpu']}")
    if "browser" in doc:
        lines.append(f"[browser] v2v client {f(doc['browser']['v2v_client'])}")
    return lines


# --- chart ---------------------------------------------------------------------------------------
def plot(doc: dict, path: Path) -> None:
    """Per-stage stacked bars per turn (server), client/server voice-to-voice marks, and the
    voice-to-voice distribution per configuration (and under load)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'rejoinder[bench]' (or matplotlib>=3.8)") from None
    cmap = plt.get_cmap("tab10")  # cmap(i): the i-th of its 10 colors
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(14, 5.5), gridspec_kw={"width_ratios": [3, 1]})
    x = 0
    ticks, labels = [], []
    for c in doc["configs"]:
        for conv in c["conversations"]:
            for t in conv["turns"]:
                m = {**((t.get("server") or {}).get("timings_ms") or {}),
                     "uplink": t.get("uplink_ms"), "downlink": t.get("downlink_ms")}
                if m.get("voice_to_voice") is not None:
                    m["listening"] = m["voice_to_voice"] - sum(m.get(k) or 0.0 for k in CHART_STAGES[2:6])
                bottom = 0.0
                for si, s in enumerate(CHART_STAGES):
                    h = max(0.0, m.get(s) or 0.0)
                    ax.bar(x, h, bottom=bottom, color=cmap(si), label=s if x == 0 else None, width=0.8)
                    bottom += h
                if t.get("v2v_client_ms") is not None:
                    ax.plot(x, t["v2v_client_ms"], "k_", markersize=14, mew=2, label="client v2v" if x == 0 else None)
                if m.get("voice_to_voice") is not None:
                    ax.plot(x, m["voice_to_voice"], "kx", label="server v2v" if x == 0 else None)
                ticks.append(x)
                prefix = f"{c['label'].split('=')[-1][:8]} " if len(doc["configs"]) > 1 else ""
                labels.append(f"{prefix}{t['conversation'][0]}{t.get('barge_after_s') or ''}")
                x += 1
        x += 1
    ax.axhline(800, color="g", ls="--", lw=1)
    ax.axhline(1200, color="r", ls="--", lw=1)
    ax.set_xticks(ticks, labels, rotation=90, fontsize=7)
    ax.set_ylabel("ms")
    ax.set_title("per turn: where voice-to-voice goes (d dialogue, b barge-in conv. [s into the reply], e echo)",
                 fontsize=10)
    ax.legend(fontsize=8, ncol=3)
    groups = [(c["label"], [t["v2v_client_ms"] for cv in c["conversations"] for t in cv["turns"]
                            if t.get("v2v_client_ms") is not None]) for c in doc["configs"]]
    if "load" in doc:
        groups.append((f"{doc['load']['sessions']} sessions", doc["load"]["v2v_client_values"]))
    groups = [(k, v) for k, v in groups if v]
    if groups:
        bx.boxplot([v for _, v in groups], whis=(5, 95))
        bx.set_xticks(range(1, len(groups) + 1), [k for k, _ in groups])
        for i, (_, v) in enumerate(groups):
            bx.plot(np.full(len(v), i + 1) + np.random.default_rng(i).uniform(-0.12, 0.12, len(v)), v, "k.", alpha=0.5)
    bx.axhline(800, color="g", ls="--", lw=1, label="p50 target")
    bx.axhline(1200, color="r", ls="--", lw=1, label="p95 target")
    bx.set_title("client voice-to-voice (ms)")
    bx.tick_params(axis="x", labelrotation=20, labelsize=8)
    bx.legend(fontsize=8)
    m = doc["machine"]
    fig.suptitle(f"rejoinder bench — {m['cores']} cores, {m['cpu_model']}, {doc['stack']['stt_model']}, "
                 f"{doc['stack']['llm']}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
