// Rejoinder page: one WebRTC call to `rejoinder serve`, a live transcript, and latency as heard here.
//
// Contract with the server: POST /offer {sdp, type:"offer"} -> {sdp, type:"answer"}; our microphone
// goes up, the agent's voice comes down, and a data channel "events" carries JSON both ways.
// Perceived latency: Web Audio analysers on the local mic and the remote track; the time from the
// user's last voiced audio to the agent's first audible sample, in this page's own clock.
"use strict";

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const STAGES = ["endpoint", "stt_final", "llm_ttft", "first_phrase", "tts_ttfa", "playout"];
const STAGE_NAMES = {endpoint: "endpoint", stt_final: "STT final", llm_ttft: "LLM first token",
  first_phrase: "first phrase", tts_ttfa: "TTS first audio", playout: "playout", other: "other"};
const VOICED_DB = -48;       // level above which a 10 ms window counts as voiced
const REMOTE_GAP_MS = 300;   // the agent's silence that separates two replies

// Exposed for tests and the curious: everything the page measured.
const rj = window.rejoinder = {connected: false, state: "idle", events: [], turns: {}, clientV2V: {},
  connectMs: null, remoteVoiced: 0};

let pc = null, channel = null, localStream = null, audioCtx = null, meterTimer = null, clicked = 0;
let lastLocalVoiced = null, lastRemoteVoiced = -Infinity, awaitingReply = false, lastFinalTurn = null;
let agentBubble = null, userInterim = null;

// --- setup -------------------------------------------------------------------------------------
for (const [id, key] of [["ec", "ec"], ["ns", "ns"], ["agc", "agc"]]) {
  if (params.get(key) === "0") $(id).checked = false;
}
// built with the DOM, not innerHTML: the Content-Security-Policy allows no inline style attributes
for (const [color, text, width] of [...[...STAGES, "other"].map((s) => [`var(--s-${s})`, STAGE_NAMES[s]]),
                                    ["var(--ink)", "heard here", "2px"]]) {
  const item = document.createElement("span"), swatch = document.createElement("i");
  swatch.style.background = color;
  if (width) swatch.style.width = width;
  item.append(swatch, text);
  $("legend").appendChild(item);
}
$("connect").addEventListener("click", () => (pc ? hangUp() : connect()));
$("mute").addEventListener("click", toggleMute);
$("mic").addEventListener("change", switchMic);
listMics();
if (params.get("autoconnect") === "1") connect();

function notice(text) {
  $("notice").textContent = text || "";
  $("notice").hidden = !text;
}

function setState(state) {
  rj.state = state;
  const el = $("state");
  el.className = "state " + state;
  el.textContent = state.replace("_", " ");
}

async function listMics() {
  if (!navigator.mediaDevices?.enumerateDevices) return;
  const devices = await navigator.mediaDevices.enumerateDevices();
  const sel = $("mic"), current = sel.value;
  sel.innerHTML = '<option value="">default</option>';
  devices.filter((d) => d.kind === "audioinput" && d.deviceId && d.deviceId !== "default").forEach((d, i) => {
    const o = document.createElement("option");
    o.value = d.deviceId;
    o.textContent = d.label || `microphone ${i + 1}`;
    sel.appendChild(o);
  });
  sel.value = current;
}

function audioConstraints() {
  const c = {echoCancellation: $("ec").checked, noiseSuppression: $("ns").checked, autoGainControl: $("agc").checked};
  if ($("mic").value) c.deviceId = {exact: $("mic").value};
  return {audio: c, video: false};
}

// --- the call ----------------------------------------------------------------------------------
async function connect() {
  notice("");
  clicked = performance.now();
  setState("connecting");
  $("connect").disabled = true;
  try {
    if (!navigator.mediaDevices?.getUserMedia) {
      throw new Error("this page has no microphone access: open it on https:// or http://localhost");
    }
    localStream = await navigator.mediaDevices.getUserMedia(audioConstraints());
    listMics();
    audioCtx = new AudioContext();
    await audioCtx.resume();
    const headers = {"Content-Type": "application/json"};
    if (params.get("token")) headers.Authorization = "Bearer " + params.get("token");
    const config = await fetch("/config", {headers}).then((r) => (r.ok ? r.json() : {iceServers: []}));
    pc = new RTCPeerConnection({iceServers: config.iceServers || []}); // the server's --ice-server list
    if (config.recording) notice("This call is recorded (audio and transcript) by the server.");
    localStream.getAudioTracks().forEach((t) => pc.addTrack(t, localStream));
    channel = pc.createDataChannel("events");
    channel.onmessage = (e) => onEvent(JSON.parse(e.data));
    pc.ontrack = (e) => onRemoteTrack(e.streams[0] || new MediaStream([e.track]));
    pc.onconnectionstatechange = onConnectionState;
    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringComplete(pc);
    const resp = await fetch("/offer", {method: "POST", headers,
      body: JSON.stringify({sdp: pc.localDescription.sdp, type: pc.localDescription.type})});
    const body = await resp.json().catch(() => ({}));
    if (resp.status === 503) {  // every session is in use: say so plainly, the person can retry
      throw new Error("the agent is busy, try again in a minute (" + (body.error || "every session is in use") + ")");
    }
    if (!resp.ok) throw new Error(body.error || `the server answered ${resp.status}`);
    await pc.setRemoteDescription(body);
    startMeters();
    $("connect").textContent = "Hang up";
    $("connect").classList.add("hangup");
    $("mute").disabled = false;
  } catch (err) {
    notice("Could not connect: " + (err.message || err));
    hangUp();
  } finally {
    $("connect").disabled = false;
  }
}

function iceGatheringComplete(peer) {
  // no trickle ICE: the server answers one complete offer
  if (peer.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (peer.iceGatheringState === "complete") resolve(); };
    peer.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, 3000); // a missing candidate type must not hang the page
  });
}

function onConnectionState() {
  if (!pc) return;
  const s = pc.connectionState;
  if (s === "connected" && !rj.connected) {
    rj.connected = true;
    rj.connectMs = Math.round(performance.now() - clicked);
    $("connect-ms").textContent = rj.connectMs + " ms";
    setState("listening");
  } else if (s === "failed" || s === "closed") {
    notice(s === "failed" ? "The connection failed (network or firewall). Try again, or configure a TURN server." : "");
    hangUp();
  }
}

function hangUp() {
  if (channel && channel.readyState === "open") {
    try { channel.send(JSON.stringify({type: "bye"})); } catch (e) { /* closing anyway */ }
  }
  if (pc) pc.close();
  pc = channel = null;
  if (localStream) localStream.getTracks().forEach((t) => t.stop());
  localStream = null;
  clearInterval(meterTimer);
  if (audioCtx) audioCtx.close();
  audioCtx = null;
  rj.connected = false;
  setState("idle");
  $("state").textContent = "not connected";
  $("connect").textContent = "Connect";
  $("connect").classList.remove("hangup");
  $("mute").disabled = true;
  $("mute").setAttribute("aria-pressed", "false");
  $("mute").textContent = "Mute";
}

function toggleMute() {
  if (!localStream) return;
  const muted = $("mute").getAttribute("aria-pressed") !== "true";
  localStream.getAudioTracks().forEach((t) => (t.enabled = !muted));
  $("mute").setAttribute("aria-pressed", String(muted));
  $("mute").textContent = muted ? "Unmute" : "Mute";
}

async function switchMic() {
  if (!pc || !localStream) return;
  const next = await navigator.mediaDevices.getUserMedia(audioConstraints());
  const track = next.getAudioTracks()[0];
  const sender = pc.getSenders().find((s) => s.track && s.track.kind === "audio");
  if (sender) await sender.replaceTrack(track);
  localStream.getTracks().forEach((t) => t.stop());
  localStream = next;
  track.enabled = $("mute").getAttribute("aria-pressed") !== "true";
  startMeters();
}

function onRemoteTrack(stream) {
  const el = $("remote");
  el.srcObject = stream;
  el.muted = false;
  el.play().catch(() => notice("Click anywhere to let the agent's voice play."));
  document.addEventListener("click", () => el.play(), {once: true});
  rj.remoteStream = stream;
  startMeters();
}

// --- perceived latency -------------------------------------------------------------------------
function analyser(stream) {
  const node = audioCtx.createAnalyser();
  node.fftSize = 512; // ~10 ms at 48 kHz
  audioCtx.createMediaStreamSource(stream).connect(node); // not to the destination: <audio> plays it
  return node;
}

function levelDb(node, buf) {
  node.getFloatTimeDomainData(buf);
  let sum = 0;
  for (let i = 0; i < buf.length; i++) sum += buf[i] * buf[i];
  const rms = Math.sqrt(sum / buf.length);
  return rms > 0 ? 20 * Math.log10(rms) : -120;
}

function startMeters() {
  if (!audioCtx || !localStream) return;
  clearInterval(meterTimer);
  const local = analyser(localStream);
  const remote = rj.remoteStream ? analyser(rj.remoteStream) : null;
  const buf = new Float32Array(local.fftSize);
  meterTimer = setInterval(() => {
    const now = performance.now();
    const muted = $("mute").getAttribute("aria-pressed") === "true";
    const ldb = levelDb(local, buf);
    $("lvl-local").value = Math.max(-70, ldb);
    if (!muted && ldb > VOICED_DB && now - lastRemoteVoiced > 150) { // not the agent echoing back
      lastLocalVoiced = now;
      awaitingReply = true;
    }
    if (!remote) return;
    const rdb = levelDb(remote, buf);
    $("lvl-remote").value = Math.max(-70, rdb);
    if (rdb > VOICED_DB) {
      rj.remoteVoiced += 1;
      // a reply that starts while the user is still talking has no voice-to-voice to measure
      // (it would read 0 ms): only a reply heard after the user fell silent counts
      if (now - lastRemoteVoiced > REMOTE_GAP_MS && awaitingReply && lastLocalVoiced !== null
          && lastLocalVoiced < now) {
        replyHeard(now);
      }
      lastRemoteVoiced = now;
    }
  }, 10);
}

function replyHeard(now) {
  // the agent's first audible sample after the user's last voiced audio: voice-to-voice as heard
  awaitingReply = false;
  const turn = lastFinalTurn;
  if (turn === null || rj.clientV2V[turn] !== undefined) return;
  const ms = Math.round(now - lastLocalVoiced);
  rj.clientV2V[turn] = ms;
  send({type: "client_v2v", turn, ms});
  renderLatency();
}

function send(event) {
  if (channel && channel.readyState === "open") channel.send(JSON.stringify(event));
}

// --- events from the server --------------------------------------------------------------------
function onEvent(e) {
  rj.events.push(e);
  switch (e.type) {
    case "state":
      setState(e.state);
      if (e.state === "speaking" && !agentBubble) agentBubble = bubble("agent", "", false);
      break;
    case "transcript":
      if (e.final) {
        lastFinalTurn = e.turn;
        if (userInterim) userInterim.remove();
        userInterim = null;
        if (e.text) bubble("user", e.text, false);
      } else if (e.text) {
        if (!userInterim) userInterim = bubble("user", "", true);
        userInterim.firstChild.textContent = e.text;
      }
      break;
    case "agent_heard":
      if (!agentBubble) agentBubble = bubble("agent", "", false);
      agentBubble.firstChild.textContent = e.text;
      break;
    case "turn": {
      const m = e.metrics;
      rj.turns[m.index] = m;
      if (agentBubble || m.heard_text) {
        const b = agentBubble || bubble("agent", "", false);
        b.firstChild.textContent = m.heard_text || m.agent_text;
        if (m.interrupted) b.classList.add("interrupted");
        b.dataset.turn = m.index;
        b.querySelector(".meta").textContent = m.error ? "LLM error: " + m.error : turnMeta(m.index);
      }
      agentBubble = null;
      renderLatency();
      break;
    }
    case "v2v": {
      const b = document.querySelector(`#transcript li[data-turn="${e.turn}"] .meta`);
      if (b) b.textContent = turnMeta(e.turn);
      break;
    }
    case "connected":
      rj.serverConnectMs = e.connect_ms;
      break;
    case "tool":  // the agent used a tool: shown as a line of its own
      if (e.state === "done") {
        const args = Object.entries(e.arguments || {}).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(", ");
        bubble("tool", `${e.name}(${args}) → ${e.ok ? JSON.stringify(e.result) : "failed: " + e.error}`, false);
      }
      break;
    case "transfer":
      notice(`The agent transferred the call to ${e.target}.`);
      break;
    case "dtmf":
      notice(`The agent pressed keys: ${e.digits}`);
      break;
    case "hangup":
      notice(`The agent ended the call${e.reason ? " (" + e.reason + ")" : ""}.`);
      break;
    case "error":
    case "closing":
      notice(e.message || e.reason);
      break;
  }
}

function turnMeta(i) {
  const m = rj.turns[i], server = m && m.timings_ms.voice_to_voice, client = rj.clientV2V[i];
  const parts = [];
  if (server != null) parts.push(`voice-to-voice ${Math.round(server)} ms`);
  if (client !== undefined) parts.push(`heard here ${client} ms`);
  return parts.join(" · ");
}

function bubble(who, text, interim) {
  $("transcript-empty").hidden = true;
  const li = document.createElement("li");
  li.className = who + (interim ? " interim" : "");
  li.appendChild(document.createTextNode(text));
  const meta = document.createElement("span");
  meta.className = "meta";
  li.appendChild(meta);
  $("transcript").appendChild(li);
  li.scrollIntoView({block: "end"});
  return li;
}

// --- latency panel -----------------------------------------------------------------------------
function median(xs) {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b), mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

function renderLatency() {
  const turns = Object.values(rj.turns).sort((a, b) => a.index - b.index);
  const serverV2V = turns.map((m) => m.timings_ms.voice_to_voice).filter((x) => x != null);
  const clientV2V = Object.values(rj.clientV2V);
  const ms = (x) => (x == null ? "–" : Math.round(x) + " ms");
  $("v2v-server").textContent = ms(median(serverV2V));
  $("v2v-client").textContent = ms(median(clientV2V));
  const turnIds = new Set([...turns.map((m) => m.index), ...Object.keys(rj.clientV2V).map(Number)]);
  const scale = Math.max(1000, ...serverV2V, ...clientV2V);
  const bars = $("bars");
  bars.innerHTML = "";
  for (const i of [...turnIds].sort((a, b) => a - b)) {
    const m = rj.turns[i], t = m ? m.timings_ms : {};
    const li = document.createElement("li");
    const bar = document.createElement("div");
    bar.className = "bar";
    for (const [stage, value] of stageSpans(t)) bar.appendChild(segment(stage, value, scale));
    if (rj.clientV2V[i] !== undefined) {
      const mark = document.createElement("span");
      mark.className = "client";
      mark.style.left = (100 * rj.clientV2V[i] / scale) + "%";
      mark.title = `heard here after ${rj.clientV2V[i]} ms`;
      bar.appendChild(mark);
    }
    const cv = rj.clientV2V[i];
    li.innerHTML = `<span>#${i + 1}</span>`;
    li.appendChild(bar);
    const nums = document.createElement("span");
    nums.className = "nums";
    nums.textContent = `${ms(t.voice_to_voice)} · here ${ms(cv)}`;
    li.appendChild(nums);
    bars.appendChild(li);
  }
}

function stageSpans(t) {
  // LLM first token → first phrase → TTS first audio → played is one chain ending at the first audio;
  // what precedes it (endpoint, STT) can overlap it when work starts speculatively at a pause, so the
  // bar lays the chain back from voice-to-voice and gives the endpoint/STT only the time left.
  const v2v = t.voice_to_voice;
  if (v2v == null) return STAGES.filter((s) => t[s] > 0).map((s) => [s, t[s]]);
  const chain = ["llm_ttft", "first_phrase", "tts_ttfa", "playout"].filter((s) => t[s] > 0).map((s) => [s, t[s]]);
  const pre = Math.max(0, v2v - chain.reduce((a, [, v]) => a + v, 0));
  const endpoint = Math.min(pre, Math.max(0, t.endpoint || 0));
  const spans = [["endpoint", endpoint]];
  if (pre - endpoint > 1) spans.push([t.stt_final > 0 ? "stt_final" : "other", pre - endpoint]);
  return spans.concat(chain).filter(([, v]) => v > 0);
}

function segment(stage, value, scale) {
  const span = document.createElement("span");
  span.style.width = (100 * value / scale) + "%";
  span.style.background = `var(--s-${stage})`;
  span.title = `${STAGE_NAMES[stage]}: ${Math.round(value)} ms`;
  return span;
}
