// audiofan console: plain JavaScript, no build step. Two feeds (Server-Sent
// Events): the call list, and the page of the call shown. Listening in is a
// WebSocket of binary PCM frames played with the Web Audio API.
"use strict";

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
};
const fmtMs = (ms) => {
  const s = Math.max(0, Math.round(ms / 1000));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return (h ? h + ":" + String(m).padStart(2, "0") : m) + ":" + String(r).padStart(2, "0");
};
const fmtBytes = (b) => {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return b.toFixed(i ? 1 : 0) + " " + u[i];
};
// A participant's raw id made readable: a phone number without its "4:", a
// Teams or ACS user by the end of its id. The raw id stays in the title.
const who = (id) => {
  if (id === "") return "mixed";
  const phone = id.match(/^4:(\+?\d+)$/);
  if (phone) return phone[1];
  const user = id.match(/^8:(acs|orgid|teamsvisitor|gcch|dod):(.+)$/);
  if (user) {
    const rest = user[2].replace(/_0+$/, "");
    return user[1] + " …" + rest.slice(-6);
  }
  return id;
};

// What tests and curious people can read: counters of what the page did.
window.audiofan = { calls: [], call: null, updates: 0, csp: 0, listen: { frames: 0, samples: 0, late: 0, rms: 0, running: false } };
// Anything the Content-Security-Policy refused is a bug of the page.
document.addEventListener("securitypolicyviolation", (e) => { window.audiofan.csp++; console.error("CSP", e.violatedDirective, e.blockedURI); });

// ---------- the call list ----------
let listFeed = null;
function openList() {
  if (listFeed) return;
  listFeed = new EventSource("api/calls/feed");
  listFeed.addEventListener("calls", (ev) => { window.audiofan.calls = JSON.parse(ev.data); renderList(); setConn(true); });
  listFeed.onerror = () => setConn(false);
}
function closeList() { if (listFeed) { listFeed.close(); listFeed = null; } }
function setConn(ok) {
  const c = $("#conn");
  c.textContent = ok ? "live" : "reconnecting…";
  c.className = "pill " + (ok ? "ok" : "bad");
}

function renderList() {
  const calls = window.audiofan.calls;
  const body = $("#calls tbody");
  body.replaceChildren(...calls.map((c) => {
    const stale = c.live && Date.now() - Date.parse(c.lastSeen) > 120000;
    const state = c.live ? el("span", { class: stale ? "live stale" : "live" }, stale ? "quiet" : "live") : el("span", { class: "muted" }, "ended");
    const audio = c.sampleRate ? (c.sampleRate / 1000) + " kHz" + (c.mixed === null ? "" : c.mixed ? " mixed" : " unmixed") : "";
    const tr = el("tr", { class: "call", "data-token": c.token, onclick: () => { location.hash = "#/call/" + encodeURIComponent(c.token); } },
      el("td", {}, c.id), el("td", {}, state), el("td", {}, c.started ? new Date(c.started).toLocaleTimeString() : ""),
      el("td", {}, fmtMs(c.durationMs)), el("td", {}, audio),
      el("td", { class: "nparts" }, c.participants.filter((p) => p !== "").length || (c.participants.length ? "mixed" : "")),
      el("td", {}, (c.receivers || []).join(", ")), el("td", { class: "fps" }, c.live ? c.framesPerSec.toFixed(0) : ""),
      el("td", {}, c.drops || ""), el("td", {}, c.hits || ""));
    return tr;
  }));
  $("#nocalls").hidden = calls.length > 0;
}

// ---------- bus health ----------
let healthTimer = null;
async function pollHealth() {
  try {
    const r = await fetch("api/health");
    if (r.ok) renderHealth(await r.json());
  } catch (e) { /* shown as stale */ }
}
// A bar filled to pct: the width is set through the DOM, not a style
// attribute, which the console's Content-Security-Policy refuses.
function fill(pct) {
  const inner = el("div");
  inner.style.width = pct + "%";
  return el("div", { class: "fill" }, inner);
}
function renderHealth(h) {
  const s = h.stream;
  const cards = [];
  const pct = s.maxBytes > 0 ? Math.min(100, (100 * s.bytes) / s.maxBytes) : 0;
  cards.push(el("div", { class: "card" }, el("h4", {}, "Stream " + (s.name || "")),
    h.error ? el("div", { class: "stale" }, h.error) : "",
    el("div", {}, s.messages.toLocaleString() + " messages, " + fmtBytes(s.bytes) + (s.maxBytes > 0 ? " of " + fmtBytes(s.maxBytes) : "")),
    fill(pct),
    el("div", { class: "muted" }, "R" + s.replicas + (s.leader ? ", leader " + s.leader : "") + ", NATS " + h.nats.toLowerCase())));
  for (const r of h.roles || []) {
    cards.push(el("div", { class: "card role", "data-role": r.role }, el("h4", {}, "Role " + r.role),
      r.present ? el("div", {}, r.held + " of " + r.partitions + " partitions held, " + r.inFlight + " messages in work") : el("div", { class: "muted" }, "not running"),
      el("div", { class: r.lag > 500 ? "stale" : "muted" }, "lag " + r.lag.toLocaleString() + " messages")));
  }
  const recv = Object.entries(h.receivers || {}).sort();
  cards.push(el("div", { class: "card" }, el("h4", {}, "Receivers"),
    recv.length ? el("div", {}, ...recv.map(([n, c]) => el("div", {}, n + ": " + c + " open calls"))) : el("div", { class: "muted" }, "no open calls")));
  $("#health").replaceChildren(...cards);
}

// ---------- a call's page ----------
let callFeed = null;
let view = null; // the call's state on this page
function openCall(tok) {
  closeCall();
  view = { tok, parts: [], segs: [], texts: [], hits: [], callMs: 0, call: null };
  $("#call-title").textContent = "";
  $("#transcript").replaceChildren();
  $("#hits").replaceChildren();
  $("#finished").hidden = true;
  $("#recordings").replaceChildren();
  const url = "api/calls/" + encodeURIComponent(tok);
  fetch(url).then((r) => {
    if (r.status === 404 && view && view.tok === tok) {
      // Not (or no longer) in the list: older than the console's history.
      $("#call-title").textContent = "No such call";
      $("#call-info").textContent = "It is not among the calls of the last AUDIOFAN_CONSOLE_HISTORY.";
      closeCall();
    }
  }).catch(() => {});
  callFeed = new EventSource(url + "/feed");
  callFeed.addEventListener("update", (ev) => { applyUpdate(JSON.parse(ev.data)); setConn(true); });
  callFeed.onerror = () => setConn(false);
}
function closeCall() {
  if (callFeed) { callFeed.close(); callFeed = null; }
  player.stop();
  view = null;
}

function applyUpdate(u) {
  window.audiofan.updates++;
  if (u.snapshot) { view.segs = []; view.texts = []; view.hits = []; }
  view.callMs = u.callMs;
  view.parts = u.parts;
  if (u.call) view.call = u.call;
  view.segs.push(...(u.segments || []));
  for (const t of u.transcripts || []) {
    view.texts = view.texts.filter((x) => x.final || x.participant !== t.participant);
    view.texts.push(t);
  }
  view.texts = view.texts.slice(-200);
  view.hits.push(...(u.hits || []));
  window.audiofan.call = view;
  renderCall();
}

function renderCall() {
  const c = view.call || {};
  $("#call-title").textContent = c.id || view.tok;
  $("#call-info").textContent = [c.live ? "live" : "ended" + (c.reason ? " (" + c.reason + ")" : ""),
    c.started ? "started " + new Date(c.started).toLocaleString() : "", fmtMs(c.live ? view.callMs : c.durationMs),
    c.sampleRate ? c.sampleRate / 1000 + " kHz" : "", (c.receivers || []).length ? "on " + c.receivers.join(", ") : ""]
    .filter(Boolean).join(" · ");
  $("#listen-all").disabled = !c.live;
  const total = view.parts.reduce((a, p) => a + p.talkMs, 0);
  const body = $("#parts tbody");
  while (body.rows.length > view.parts.length) body.deleteRow(-1);
  view.parts.forEach((p, i) => {
    let tr = body.rows[i];
    if (!tr || tr.dataset.token !== p.token) {
      const btn = el("button", { type: "button", class: "listen-one", onclick: () => player.start(view.tok, p.token, who(p.id)) }, "▶ Listen");
      tr = el("tr", { "data-token": p.token }, el("td", { class: "who", title: p.id }, who(p.id)),
        el("td", {}, el("div", { class: "meter" }, el("div", { class: "bar" }), el("div", { class: "peak" }))),
        el("td", { class: "talk" }), el("td", { class: "share" }), el("td", {}, btn));
      if (body.rows[i]) body.rows[i].replaceWith(tr); else body.append(tr);
    }
    const w = (db) => Math.max(0, Math.min(100, ((db + 60) / 60) * 100));
    tr.querySelector(".bar").style.width = w(p.level) + "%";
    tr.querySelector(".meter").dataset.level = p.level.toFixed(1);
    tr.querySelector(".peak").style.left = w(p.peak) + "%";
    const talk = tr.querySelector(".talk");
    talk.textContent = fmtMs(p.talkMs) + (p.talking ? " speaking" : "");
    talk.className = "talk" + (p.talking ? " talking" : "");
    tr.querySelector(".share").textContent = total ? Math.round((100 * p.talkMs) / total) + "%" : "";
    tr.querySelector(".listen-one").disabled = !c.live;
  });
  renderTimeline();
  const ol = $("#transcript");
  ol.replaceChildren(...view.texts.slice(-60).map((t) => el("li", { class: t.final ? "final" : "partial" },
    el("span", { class: "who" }, who(t.participant)), t.text)));
  ol.scrollTop = ol.scrollHeight;
  $("#hits").replaceChildren(...view.hits.slice(-60).map((h) => el("li", {},
    fmtMs(h.atMs) + " " + h.rule + " (" + h.kind + ")" + (h.participant ? " " + who(h.participant) : "") +
    (h.evidence !== undefined && h.evidence !== null ? ": " + (typeof h.evidence === "string" ? h.evidence : JSON.stringify(h.evidence)) : ""))));
  renderFinished(c);
}

function renderTimeline() {
  const cv = $("#timeline");
  const dpr = window.devicePixelRatio || 1;
  const lanes = Math.max(1, view.parts.length);
  const cssW = cv.clientWidth || 800, cssH = 24 * lanes + 20;
  cv.style.height = cssH + "px";
  cv.width = cssW * dpr; cv.height = cssH * dpr;
  const g = cv.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, cssW, cssH);
  const span = Math.max(view.callMs, 1000);
  const x = (ms) => 90 + ((cssW - 100) * ms) / span;
  g.font = "11px system-ui";
  view.parts.forEach((p, i) => {
    const y = 6 + i * 24;
    g.fillStyle = "#8b94a3";
    g.fillText(who(p.id).slice(0, 12), 4, y + 13);
    g.fillStyle = "#232a33";
    g.fillRect(90, y, cssW - 100, 18);
  });
  g.fillStyle = "#3ecf8e";
  const draw = (part, s, e) => { g.fillRect(x(s), 6 + part * 24, Math.max(1, x(e) - x(s)), 18); };
  for (const s of view.segs) draw(s.p, s.s, s.e);
  for (const p of view.parts) if (p.talking && p.openFromMs >= 0) draw(p.index, p.openFromMs, view.callMs);
  g.fillStyle = "#ff5d5d";
  for (const h of view.hits) g.fillRect(x(h.atMs) - 1, 2, 3, cssH - 4);
  g.fillStyle = "#8b94a3";
  g.fillText(fmtMs(span), cssW - 40, cssH - 3);
}

let shownRecording = null;
function renderFinished(c) {
  const rec = c.recording, an = c.analytics;
  $("#finished").hidden = c.live || (!rec && !an);
  if (rec && shownRecording !== view.tok + rec.durationMs) {
    shownRecording = view.tok + rec.durationMs;
    const base = "api/calls/" + encodeURIComponent(view.tok) + "/recordings/";
    $("#recordings").replaceChildren(...(rec.files || []).map((f) => el("li", { "data-file": f.name },
      el("span", {}, f.mix ? "whole call" : f.outbound ? "played into the call" : who(f.participant)), el("audio", { controls: "", preload: "metadata", src: base + encodeURIComponent(f.name) }),
      el("a", { href: base + encodeURIComponent(f.name) + "?download" }, "download"),
      el("span", { class: "muted" }, fmtMs(f.durationMs) + ", " + fmtBytes(f.bytes)),
      ...(f.object && f.object.includes("://") ? [el("code", { class: "muted blob", title: "where the recorder stored it" }, f.object)] : []))));
  }
  if (an && an.final) {
    const rows = (an.participants || []).map((p) => el("tr", {}, el("td", {}, who(p.participant)), el("td", {}, fmtMs(p.talkMs)),
      el("td", {}, Math.round(100 * p.talkShare) + "%"), el("td", {}, p.turns), el("td", {}, fmtMs(p.longestMonologueMs)),
      el("td", {}, p.speechLevelDbfs + " dBFS"), el("td", {}, p.level)));
    $("#summary").replaceChildren(el("p", {}, "Duration " + fmtMs(an.durationMs) + ", overtalk " + fmtMs(an.overtalkMs) +
      " (" + an.overtalkCount + "), dead air " + fmtMs(an.deadAirMs) + " (" + an.deadAirCount + ")"),
      el("table", { class: "summary" }, el("thead", {}, el("tr", {}, ...["Participant", "Talk", "Share", "Turns", "Longest", "Speech level", ""].map((h) => el("th", {}, h)))),
        el("tbody", {}, ...rows)));
  }
}

// ---------- listening in ----------
// Frames are scheduled at capture time + a jitter delay on one AudioContext;
// what plays at the same moment is summed by the graph, so every participant
// of an unmixed call is heard together. A frame that arrives after its time
// is dropped (counted), and a long stretch of them restarts the schedule.
const JITTER = 0.2; // seconds
const player = {
  ctx: null, ws: null, gain: null, analyser: null, base: 0, t0: 0, lateRun: 0, meter: 0,
  start(tok, part, label) {
    this.stop();
    if (!this.ctx) {
      this.ctx = new AudioContext({ latencyHint: "interactive" });
      this.gain = this.ctx.createGain();
      this.analyser = this.ctx.createAnalyser();
      this.analyser.fftSize = 2048;
      this.gain.connect(this.analyser).connect(this.ctx.destination);
    }
    this.ctx.resume();
    this.base = 0;
    const q = part ? "?participant=" + encodeURIComponent(part) : "";
    const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host +
      location.pathname.replace(/[^/]*$/, "") + "api/calls/" + encodeURIComponent(tok) + "/listen" + q);
    ws.binaryType = "arraybuffer";
    ws.onmessage = (ev) => {
      if (typeof ev.data === "string") return;
      // Frames batched every 20 ms, each behind its length.
      const dv = new DataView(ev.data);
      for (let off = 0; off + 4 <= ev.data.byteLength;) {
        const n = dv.getUint32(off, true);
        this.frame(ev.data, off + 4, n);
        off += 4 + n;
      }
    };
    ws.onclose = () => { if (this.ws === ws) this.stop(); };
    this.ws = ws;
    window.audiofan.listen.running = true;
    $("#listen-stop").disabled = false;
    $("#listen-state").textContent = "listening to " + label;
    const buf = new Float32Array(this.analyser.fftSize);
    this.meter = setInterval(() => {
      this.analyser.getFloatTimeDomainData(buf);
      let s = 0;
      for (const v of buf) s += v * v;
      window.audiofan.listen.rms = Math.max(window.audiofan.listen.rms * 0.9, Math.sqrt(s / buf.length));
    }, 100);
  },
  frame(ab, off, len) {
    const dv = new DataView(ab, off, len);
    const at = dv.getFloat64(0, true) / 1000, rate = dv.getUint32(8, true), ch = dv.getUint16(14, true);
    const n = Math.floor((len - 16) / 2 / ch);
    if (!rate || n <= 0) return;
    const now = this.ctx.currentTime;
    if (!this.base || this.lateRun > 25) { this.base = now + JITTER; this.t0 = at; this.lateRun = 0; }
    const when = this.base + (at - this.t0);
    const st = window.audiofan.listen;
    if (when < now) { st.late++; this.lateRun++; return; }
    this.lateRun = 0;
    const buf = this.ctx.createBuffer(ch, n, rate);
    const pcm = new Int16Array(ab, off + 16, n * ch);
    for (let c = 0; c < ch; c++) {
      const out = buf.getChannelData(c);
      for (let i = 0; i < n; i++) out[i] = pcm[i * ch + c] / 32768;
    }
    const src = this.ctx.createBufferSource();
    src.buffer = buf;
    src.connect(this.gain);
    src.start(when);
    st.frames++; st.samples += n;
  },
  stop() {
    if (this.ws) { const ws = this.ws; this.ws = null; ws.close(); }
    clearInterval(this.meter);
    window.audiofan.listen.running = false;
    $("#listen-stop").disabled = true;
    $("#listen-state").textContent = "";
  },
};
$("#listen-all").addEventListener("click", () => view && player.start(view.tok, "", "the whole call"));
$("#listen-stop").addEventListener("click", () => player.stop());

// ---------- routing ----------
function route() {
  const m = location.hash.match(/^#\/call\/(.+)$/);
  if (m) {
    closeList();
    clearInterval(healthTimer); healthTimer = null;
    $("#home").hidden = true; $("#call").hidden = false;
    openCall(decodeURIComponent(m[1]));
  } else {
    closeCall();
    $("#call").hidden = true; $("#home").hidden = false;
    openList();
    if (!healthTimer) { pollHealth(); healthTimer = setInterval(pollHealth, 3000); }
  }
}
window.addEventListener("hashchange", route);
route();
