(function () {
"use strict";
const D = JSON.parse(document.getElementById("sinkhole-data").textContent);
const $ = (id) => document.getElementById(id);
const S = { layer: 0, head: 0, token: 0, sqrt: true };
const API = { data: D, state: S, ready: false };
window.sinkhole = API;
API.range = (n) => Array.from({ length: n }, (_, i) => i);
// No mode bar: it floats over the figure's top right, where it covered legends and the top rows of heatmaps.
// Drag still zooms and a double click resets (tests/browser_geometry.py checks what a mode bar would cover).
const CFG = { displaylogo: false, responsive: true, displayModeBar: false };
const FONT = { family: "system-ui, sans-serif", size: 12 };
// Legends sit in a margin (top, or bottom for many entries), never over the data (tests/test_html_browser.py checks the boxes).
const LEGEND_ABOVE = { orientation: "h", x: 0, xanchor: "left", y: 1, yanchor: "top", yref: "container" };

// ---------- text helpers: plain text for the DOM, esc() for anything plotly renders ----------
function esc(s) {
  return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
    .replace(/"/g, "&#34;").replace(/'/g, "&#39;");  // plotly decodes numeric entities, not &quot;
}
function vis(s) { return String(s).replace(/\n/g, "\u21b5").replace(/\r/g, "\u240d").replace(/\t/g, "\u21e5"); }
function short(s, n) { s = vis(s); return s.length > n ? s.slice(0, n - 1) + "\u2026" : s; }
function label(t, n) { return "#" + t + " " + short(D.tokens[t], n || 16); }
function fmt(x) {
  if (x === null || x === undefined) return "\u2014";
  if (typeof x !== "number") return String(x);
  if (Number.isInteger(x)) return String(x);
  const a = Math.abs(x);
  return (a !== 0 && (a < 1e-3 || a >= 1e6)) ? x.toExponential(3) : String(+x.toPrecision(4));
}
function pct(x) { return x === null || x === undefined ? "\u2014" : (100 * x).toFixed(1) + "%"; }
function range(n) { return Array.from({ length: n }, (_, i) => i); }

// One colour per channel id on the whole page (html_data.channel_colours): every figure that draws a channel.
function chColour(c) { return (D.channel_colours || {})[String(c)] || D.other_channel || "#b8bec9"; }

API.h = { esc: esc, fmt: fmt, pct: pct, FONT: FONT, CFG: CFG, LEGEND_ABOVE: LEGEND_ABOVE, chColour: chColour };

// ---------- packed arrays (see html_data.pack) ----------
function half(h) {  // IEEE 754 binary16 -> number
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
  if (e === 0) return s * f * Math.pow(2, -24);
  if (e === 31) return f ? NaN : s * Infinity;
  return s * (1 + f / 1024) * Math.pow(2, e - 15);
}
function unpack(p) {
  const bin = atob(p.b64), u8 = p.dtype === "u8", n = u8 ? bin.length : bin.length / 2;
  if (p.dtype === "f16") {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = half(bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8));
    return out;
  }
  const top = u8 ? 255 : 65535, sq = p.scale === "sqrt", out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const q = u8 ? bin.charCodeAt(i) : (bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8));
    const v = q / top;
    out[i] = sq ? v * v : v;
  }
  return out;
}
const T = D.T, L = D.L, H = D.H;
const maps = D.maps ? unpack(D.maps) : null;     // (L, H, T(T+1)/2) lower triangles
const alpha = D.alpha ? unpack(D.alpha) : null;  // (L, H, T)
const TRI = T * (T + 1) / 2;
API.arrays = { maps: maps, alpha: alpha };
const spikeSet = new Set(D.spikes.map((s) => s.position));
const sinkSet = new Set(D.sinks.map((s) => s.position));

function tokenTicks(maxTicks) {
  const step = Math.max(1, Math.ceil(T / maxTicks)), vals = [];
  for (let t = 0; t < T; t += step) vals.push(t);
  return { tickvals: vals, ticktext: vals.map((t) => esc(label(t, 12))) };
}

// ---------- token strip + per-token chart ----------
function buildStrip() {
  const strip = $("strip"), top = Math.max(...D.mass.map((m) => m || 0)) || 1;
  D.tokens.forEach((txt, t) => {
    const el = document.createElement("span"), a = Math.sqrt(Math.max(D.mass[t] || 0, 0) / top);
    el.className = "tok" + (spikeSet.has(t) ? " spike" : "") + (sinkSet.has(t) ? " sink" : "");
    el.textContent = vis(txt) || "\u2205";
    el.style.background = "rgba(214,69,65," + a.toFixed(3) + ")";
    if (a > 0.65) el.style.color = "#fff";
    el.title = "#" + t + "  id " + D.ids[t] + "\nattention mass " + pct(D.mass[t]) + "\nsink rate " +
      pct(D.sink_rate[t]) + " of heads\nspike score " + fmt(D.score ? D.score[t] : null) + "\u00d7";
    el.dataset.pos = String(t);
    el.addEventListener("click", () => selectToken(t));
    strip.appendChild(el);
  });
}

function drawTokensChart() {
  const x = range(T), text = x.map((t) => esc(label(t, 24)));
  const traces = [{ type: "bar", x: x, y: D.mass, name: "attention mass", marker: { color: "#d64541" },
    customdata: text, hovertemplate: "%{customdata}<br>attention mass %{y:.2%}<extra></extra>" }];
  if (D.score) traces.push({ type: "scatter", mode: "lines", x: x, y: D.score, name: "spike score", yaxis: "y2",
    line: { color: "#1f6feb", width: 1.5 }, customdata: text,
    hovertemplate: "%{customdata}<br>spike score %{y:.1f}\u00d7<extra></extra>" });
  // The spike tokens' scores as markers on top: at a spike that is also the sink (often #0) the line's
  // peak runs along the sink's bar and would hide behind it. cliponaxis: the marker at the top is whole.
  if (D.score && D.spikes.length) traces.push({ type: "scatter", mode: "markers", x: D.spikes.map((s) => s.position),
    y: D.spikes.map((s) => D.score[s.position]), name: "spike token", yaxis: "y2", cliponaxis: false,
    marker: { color: "#1f6feb", size: 9, symbol: "diamond", line: { color: "#fff", width: 1.5 } },
    customdata: D.spikes.map((s) => text[s.position]), hovertemplate: "%{customdata}<br>spike score %{y:.1f}\u00d7<extra></extra>" });
  const ticks = T <= 64 ? tokenTicks(64) : {};
  // Long inputs: bars are ~1 px wide, so name the sink / spike tokens next to their bars.
  const notes = T > 64 ? focusKeys().map((t) => ({ x: t, y: D.mass[t], xref: "x", yref: "y", text: esc(label(t, 14)) + " " + pct(D.mass[t]),
    showarrow: true, arrowhead: 0, ax: 40, ay: -8, xanchor: "left", font: { size: 11 }, bgcolor: "rgba(255,255,255,0.8)" })) : [];
  $("fig-tokens").style.height = T <= 64 ? "300px" : "";  // token labels under the bars need ~100 px of it
  Plotly.newPlot("fig-tokens", traces, {
    annotations: notes,
    font: FONT, margin: { l: 50, r: 50, t: 34, b: T <= 64 ? 80 : 40 }, bargap: 0.1, showlegend: true,
    legend: LEGEND_ABOVE,
    xaxis: Object.assign({ title: { text: T <= 64 ? "" : "token position" }, tickangle: T <= 64 ? -60 : 0, tickfont: { size: 10 },
      range: [-0.5, T - 0.5], automargin: true }, ticks),
    yaxis: { title: { text: "mass" }, tickformat: ".0%", rangemode: "tozero" },
    yaxis2: { title: { text: "spike score \u00d7" }, overlaying: "y", side: "right", rangemode: "tozero", showgrid: false, tickmode: "auto" },
  }, CFG);
  $("fig-tokens").on("plotly_click", (ev) => selectToken(ev.points[0].x));
}

// ---------- heads grid ----------
function drawHeads() {
  const gd = $("fig-heads");
  if (!D.heads) { gd.textContent = "This report has no per-head data (heads.mass_on_top_sink)."; return; }
  const top = D.top_sink, tl = esc(label(top.position, 20));
  $("cap-heads").textContent = "\u03b1 on the top sink token " + label(top.position, 24);
  Plotly.newPlot(gd, [{ type: "heatmap", z: D.heads, x: range(H), y: range(L), zmin: 0, zmax: 1,
    colorscale: "Viridis", colorbar: { title: { text: "\u03b1", side: "right" }, thickness: 12 },
    hovertemplate: "layer %{y} \u00b7 head %{x}<br>\u03b1 on " + tl + ": %{z:.3f}<extra></extra>", xgap: 1, ygap: 1 }], {
    font: FONT, margin: { l: 50, r: 10, t: 30, b: 40 },
    xaxis: { title: { text: "head" }, dtick: 1 }, yaxis: { title: { text: "layer" }, autorange: "reversed", dtick: Math.max(1, Math.ceil(L / 30)) },
    shapes: [headShape()],
  }, CFG);
  gd.on("plotly_click", (ev) => { const p = ev.points[0]; selectHead(p.y, p.x); });
}
function headShape() {
  return { type: "rect", x0: S.head - 0.5, x1: S.head + 0.5, y0: S.layer - 0.5, y1: S.layer + 0.5,
    line: { color: "#ff3b30", width: 2.5 } };
}

// ---------- attention of the selected head ----------
function headMap(l, h) {  // (T, T) rows = queries, null above the diagonal (causal mask)
  const base = (l * H + h) * TRI, z = [];
  for (let q = 0; q < T; q++) {
    const row = new Array(T).fill(null), off = base + q * (q + 1) / 2;
    for (let k = 0; k <= q; k++) row[k] = maps[off + k];
    z.push(row);
  }
  return z;
}
function sqrtBar(title) {
  const ps = [0, 0.01, 0.05, 0.2, 0.5, 1];
  return S.sqrt ? { title: { text: title, side: "right" }, thickness: 12, tickvals: ps.map(Math.sqrt), ticktext: ps.map(String) }
    : { title: { text: title, side: "right" }, thickness: 12 };
}
function colourOf(z) { return S.sqrt ? z.map((r) => r.map((v) => (v === null ? null : Math.sqrt(v)))) : z; }

// The log alpha line's floor: keys below it (noise near 1e-7 at hundreds of tokens) sit on the axis.
const ALPHA_FLOOR = 1e-5;
function focusKeys() {  // sink tokens (else the top sink), then spike tokens, at most 6, in position order
  const keys = D.sinks.map((s) => s.position);
  if (!keys.length) keys.push(D.top_sink.position);
  D.spikes.forEach((s) => { if (!keys.includes(s.position)) keys.push(s.position); });
  return keys.slice(0, 6).sort((a, b) => a - b);
}

function drawAttention() {
  const gd = $("fig-attn"), l = S.layer, h = S.head;
  $("maps-note").textContent = D.maps_note;
  $("cap-attn").textContent = maps ? "layer " + l + ", head " + h + ": attention A[query, key]"
    : alpha ? "layer " + l + ": \u03b1(k) per head, the mean attention key k receives; line: head " + h : "";
  if (maps) {
    const z = headMap(l, h), labels = range(T).map((t) => esc(label(t, 20)));
    const cd = z.map((r, q) => r.map((v, k) => [labels[q], labels[k], v === null ? "masked" : fmt(v)]));
    const ticks = tokenTicks(48);
    Plotly.react(gd, [{ type: "heatmap", z: colourOf(z), customdata: cd, zmin: 0, zmax: 1, colorscale: "Viridis",
      colorbar: sqrtBar("A"), hoverongaps: false,
      hovertemplate: "query %{customdata[0]}<br>key %{customdata[1]}<br>A = %{customdata[2]}<extra></extra>" }], {
      font: FONT, margin: { l: 110, r: 10, t: 30, b: 110 },
      xaxis: Object.assign({ title: { text: "key" }, tickangle: -60, tickfont: { size: 9 }, automargin: true }, ticks),
      yaxis: Object.assign({ title: { text: "query" }, autorange: "reversed", tickfont: { size: 9 }, automargin: true }, ticks),
    }, CFG);
  } else if (alpha) {
    // All keys on the right; the sink (and spike) keys again on the left, each as wide as a cell,
    // because at hundreds of tokens a key's column is ~1 px wide and the sink would vanish.
    const z = [], base = l * H * T, labels = range(T).map((t) => esc(label(t, 20)));
    for (let hh = 0; hh < H; hh++) z.push(Array.from(alpha.subarray(base + hh * T, base + (hh + 1) * T)));
    const cd = z.map((r) => r.map((v, k) => [labels[k], fmt(v)]));
    const ticks = T <= 96 ? tokenTicks(48) : {};
    const keep = focusKeys(), kx = keep.map((k) => "#" + k);  // short: the panel is narrow, hover names the token
    const line = z[h].map((v) => Math.max(v, ALPHA_FLOOR));
    const lo = Math.log10(ALPHA_FLOOR);
    Plotly.react(gd, [
      { type: "heatmap", z: colourOf(z.map((r) => keep.map((k) => r[k]))), x: kx, y: range(H), zmin: 0, zmax: 1,
        coloraxis: "coloraxis", customdata: z.map((r) => keep.map((k) => [labels[k], fmt(r[k])])),
        hovertemplate: "head %{y}<br>key %{customdata[0]}<br>\u03b1 = %{customdata[1]}<extra></extra>", xgap: 1 },
      { type: "heatmap", z: colourOf(z), customdata: cd, y: range(H), xaxis: "x3", coloraxis: "coloraxis",
        hovertemplate: "head %{y}<br>key %{customdata[0]}<br>\u03b1 = %{customdata[1]}<extra></extra>" },
      { type: "scatter", mode: T > 200 ? "lines" : "lines+markers", x: range(T), y: line, xaxis: "x2", yaxis: "y2",
        line: { color: "#d64541", width: 1 }, marker: { size: 3 }, customdata: labels.map((t, k) => [t, fmt(z[h][k])]),
        name: "head " + h, hovertemplate: "head " + h + "<br>key %{customdata[0]}<br>\u03b1 = %{customdata[1]}<extra></extra>" },
      { type: "scatter", mode: "markers+text", x: keep, y: keep.map((k) => line[k]), xaxis: "x2", yaxis: "y2", cliponaxis: false,
        text: keep.map((k) => "#" + k), textposition: "middle right", marker: { color: "#111", size: 6 }, hoverinfo: "skip" },
    ], {
      font: FONT, margin: { l: 60, r: 10, t: 30, b: 40 }, showlegend: false,
      coloraxis: { cmin: 0, cmax: 1, colorscale: "Viridis", colorbar: Object.assign(sqrtBar("\u03b1"), { len: 0.6, y: 1, yanchor: "top" }) },
      xaxis: { domain: [0, 0.16], type: "category", tickangle: keep.length > 2 ? -90 : 0, tickfont: { size: 9 }, title: { text: "sink keys", standoff: 2 } },
      xaxis3: Object.assign({ domain: [0.19, 1], anchor: "y", tickangle: T <= 96 ? -60 : 0, tickfont: { size: 9 }, title: { text: T <= 96 ? "" : "all keys", standoff: 2 } }, ticks),
      xaxis2: { anchor: "y2", title: { text: "key position" }, range: [-0.5, T - 0.5] },
      yaxis: { title: { text: "head" }, domain: [T <= 96 ? 0.5 : 0.46, 1], autorange: "reversed", dtick: 1 },
      yaxis2: S.sqrt ? { title: { text: "\u03b1, head " + h + " (log)" }, domain: [0, 0.3], type: "log", dtick: 1,
        exponentformat: "power", range: [lo, 0.05] }
        : { title: { text: "\u03b1, head " + h }, domain: [0, 0.3], rangemode: "tozero" },
      shapes: [{ type: "rect", xref: "paper", yref: "y", x0: 0, x1: 1, y0: h - 0.5, y1: h + 0.5,
        line: { color: "#ff3b30", width: 2 } }],
    }, CFG);
  } else {
    gd.textContent = "";
  }
}

// ---------- residual lifecycle ----------
function drawResidual() {
  const gd = $("fig-resid");
  if (!D.resid_norm) { gd.textContent = "This report has no residual norms (residual.norm)."; return; }
  const rows = (D.embed_norm ? [D.embed_norm] : []).concat(D.resid_norm);
  const y = (D.embed_norm ? [-1] : []).concat(range(L));
  const labels = range(T).map((t) => esc(label(t, 20)));
  const z = rows.map((r) => r.map((v) => (v > 0 ? Math.log10(v) : null)));
  const cd = rows.map((r) => r.map((v, t) => [labels[t], fmt(v)]));
  let lo = Infinity, hi = -Infinity;
  z.forEach((r) => r.forEach((v) => { if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); } }));
  const tv = []; for (let e = Math.floor(lo); e <= Math.ceil(hi); e++) tv.push(e);
  const ticks = T <= 64 ? tokenTicks(64) : {};
  // Long inputs: the spike / sink tokens again on the left, wide enough to see (a column is ~1 px at 500 tokens).
  const focus = T > 96 ? focusKeys() : [], split = focus.length > 0;
  const colorbar = { title: { text: "\u2016h\u2016", side: "right" }, thickness: 12, tickvals: tv, ticktext: tv.map((e) => fmt(Math.pow(10, e))) };
  const hover = "%{customdata[0]}<br>layer %{y}<br>\u2016h\u2016 = %{customdata[1]}<extra></extra>";
  const traces = [{ type: "heatmap", z: z, x: range(T), y: y, customdata: cd, colorscale: "Inferno", zmin: lo, zmax: hi,
    colorbar: colorbar, hovertemplate: hover }];
  if (split) traces.push({ type: "heatmap", z: z.map((r) => focus.map((t) => r[t])), x: focus.map((t) => "#" + t), y: y,
    customdata: cd.map((r) => focus.map((t) => r[t].concat([t]))), xaxis: "x2", colorscale: "Inferno", zmin: lo, zmax: hi,
    showscale: false, hovertemplate: hover, xgap: 2 });
  Plotly.newPlot(gd, traces, {
    font: FONT, margin: { l: 50, r: 10, t: 30, b: T <= 64 ? 90 : 60 },
    xaxis: Object.assign({ title: { text: T <= 64 ? "" : "token position", standoff: 2 }, tickangle: T <= 64 ? -60 : 0, tickfont: { size: 10 },
      domain: [split ? 0.13 : 0, 1], automargin: true }, ticks),
    xaxis2: { domain: [0, 0.1], type: "category", anchor: "y", tickangle: focus.length > 2 ? -90 : 0, tickfont: { size: 9 },
      title: { text: "spikes, sinks", standoff: 2 } },
    yaxis: { title: { text: "layer" }, anchor: split ? "x2" : "x", autorange: "reversed", tickvals: y.filter((v) => (v > 0 && v % 5 === 0) || v === -1),
      ticktext: y.filter((v) => (v > 0 && v % 5 === 0) || v === -1).map((v) => (v === -1 ? "emb" : String(v))) },
    shapes: [tokenLine()],
  }, CFG);
  gd.on("plotly_click", (ev) => {
    const p = ev.points[0];
    selectToken(p.data.xaxis === "x2" ? p.customdata[2] : p.x);
  });

  const ln = D.layers || {}, tr = [];
  // greys: the palette's colours mean channels on this page
  if (ln.max_norm) tr.push({ type: "scatter", mode: "lines+markers", y: ln.max_norm, x: range(L), name: "max over tokens",
    line: { color: "#333" }, marker: { color: "#333" } });
  if (ln.median_norm) tr.push({ type: "scatter", mode: "lines+markers", y: ln.median_norm, x: range(L), name: "median over tokens",
    line: { color: "#999", dash: "dash" }, marker: { color: "#999" } });
  Plotly.newPlot("fig-layers", tr, {
    font: FONT, margin: { l: 60, r: 10, t: 34, b: 40 }, legend: LEGEND_ABOVE,
    xaxis: { title: { text: "layer" } }, yaxis: { title: { text: "\u2016h\u2016 (log)" }, type: "log", dtick: 1 },
  }, CFG);
}
function tokenLine() {  // a marker in the margin above the selected column: it never hides the data
  return { type: "path", xref: "x", yref: "paper", xsizemode: "pixel", xanchor: S.token, ysizemode: "pixel", yanchor: 1,
    path: "M -6 14 L 6 14 L 0 3 Z", fillcolor: "#1f6feb", line: { color: "#1f6feb", width: 1 } };
}

function drawChannels() {
  const t = S.token, tr = [], C = D.channels;
  $("cap-channels").textContent = label(t, 24) + ": " + (C ? "spike channels h_l[t, c] across layers" : "\u2016h\u2016 across layers");
  if (D.resid_norm) tr.push({ type: "scatter", mode: "lines", x: range(L), y: D.resid_norm.map((r) => r[t]),
    name: "\u2016h\u2016", line: { color: "#888", dash: "dot" }, hovertemplate: "layer %{x}<br>\u2016h\u2016 = %{y:.4g}<extra></extra>" });
  if (C) {
    C.channels.forEach((c, ci) => {
      const ys = C.values[t][ci];
      tr.push({ type: "scatter", mode: "lines+markers", x: range(L), y: ys, name: "channel " + c, legendgroup: "c" + c,
        line: { color: chColour(c) }, marker: { color: chColour(c) },
        connectgaps: false, hovertemplate: "layer %{x}<br>channel " + c + " = %{y:.4g}<extra></extra>" });
    });
  }
  Plotly.react("fig-channels", tr, {
    // up to 9 entries: below the axis title (in the bottom margin), clear of the plot and the modebar
    font: FONT, margin: { l: 60, r: 10, t: 30, b: 96 },
    legend: { orientation: "h", x: 0, xanchor: "left", y: 0, yanchor: "bottom", yref: "container" },
    xaxis: { title: { text: "layer" } }, yaxis: { title: { text: "value" } },
  }, CFG);
  $("channels-note").textContent = C
    ? "Channels: " + C.why + ". A gap in a line: the channel is below the token's top-" + C.k +
      " entries at that layer, so its value was not recorded (not a zero)."
    : "Channel values need the run's Capture; this page shows the token's residual norm only.";
}

// ---------- selection ----------
function selectHead(l, h) {
  S.layer = Math.max(0, Math.min(L - 1, l | 0)); S.head = Math.max(0, Math.min(H - 1, h | 0));
  $("sel-layer").value = String(S.layer); $("sel-head").value = String(S.head);
  if (D.heads) Plotly.relayout("fig-heads", { shapes: [headShape()] });
  drawAttention();
}
function selectToken(t) {
  S.token = Math.max(0, Math.min(T - 1, t | 0));
  $("sel-token").value = String(S.token);
  document.querySelectorAll(".tok.sel").forEach((e) => e.classList.remove("sel"));
  const el = document.querySelector('.tok[data-pos="' + S.token + '"]');
  if (el) el.classList.add("sel");
  if (D.resid_norm) Plotly.relayout("fig-resid", { shapes: [tokenLine()] });
  drawChannels();
}
API.selectHead = selectHead; API.selectToken = selectToken;

function fillSelect(id, n, text, onchange) {
  const sel = $(id);
  for (let i = 0; i < n; i++) { const o = document.createElement("option"); o.value = String(i); o.textContent = text(i); sel.appendChild(o); }
  sel.addEventListener("change", () => onchange(parseInt(sel.value, 10)));
}

// ---------- definitions dialog ----------
function openDef(anchor) {
  const dlg = $("defs");
  if (!dlg.open) dlg.showModal();
  const target = document.getElementById(anchor);
  if (target) target.scrollIntoView({ block: "start" });
}
document.querySelectorAll("button.def").forEach((b) => b.addEventListener("click", () => openDef(b.dataset.def)));

// ---------- generic sections (mechanism, eval, ...) ----------
let figId = 0;
function cell(v, td) {
  if (Array.isArray(v)) td.textContent = "[" + v.map(fmt).join(", ") + "]";
  else { td.textContent = fmt(v); if (typeof v === "number") td.className = "num"; }
}
function table(head, rows, more) {
  const tb = document.createElement("table"); tb.className = "gen";
  if (head) { const tr = tb.insertRow(); head.forEach((h) => { const th = document.createElement("th"); th.textContent = h; tr.appendChild(th); }); }
  rows.forEach((r) => { const tr = tb.insertRow(); r.forEach((v, i) => cell(v, tr.insertCell())); if (!head) tr.cells[0].className = "key"; });
  const wrap = document.createElement("div"); wrap.className = "scroll"; wrap.appendChild(tb);
  if (more) { const p = document.createElement("p"); p.className = "note"; p.textContent = "\u2026 " + more + " more rows not shown"; wrap.appendChild(p); }
  return wrap;
}
// generic series are no channels: colours outside the channel palette (html_data.CHANNEL_PALETTE)
const GENERIC_COLOURS = ["#333333", "#b2182b", "#2166ac", "#1b7837", "#762a83", "#e08214", "#35978f", "#c51b7d"];
function genFigure(n) {
  const box = document.createElement("div"), div = document.createElement("div");
  div.className = "fig gen-fig"; div.id = "gen-fig-" + (figId++);
  if (n.title) { const c = document.createElement("div"); c.className = "figcap"; c.textContent = n.title; box.appendChild(c); }
  box.appendChild(div);
  const draw = () => {
    const rows = n.kind === "series" ? [n.y] : (n.z.length <= 8 && n.z[0].length >= 8 ? n.z : null);
    if (rows) Plotly.newPlot(div, rows.map((y, i) => ({ type: "scatter", mode: y.length > 60 ? "lines" : "lines+markers", y: y,
      name: "[" + i + "]", hovertemplate: (rows.length > 1 ? "[" + i + "]" : "") + "[%{x}] %{y:.4g}<extra></extra>" })),
      { font: FONT, margin: { l: 60, r: 10, t: 10, b: 36 }, showlegend: rows.length > 1, xaxis: { title: { text: "index" } },
        colorway: GENERIC_COLOURS }, CFG);
    else Plotly.newPlot(div, [{ type: "heatmap", z: n.z, colorscale: "Viridis", hovertemplate: "[%{y}][%{x}] %{z:.4g}<extra></extra>" }],
      { font: FONT, margin: { l: 50, r: 10, t: 10, b: 36 }, yaxis: { autorange: "reversed" } }, CFG);
  };
  return { div: box, draw: draw };
}
function renderNodes(nodes, parent, depth, pending) {
  nodes.forEach((n) => {
    if (n.kind === "table") {
      if (n.title) { const h = document.createElement("h4"); h.textContent = n.title; parent.appendChild(h); }
      parent.appendChild(table(null, n.rows, n.more));
    } else if (n.kind === "records") {
      if (n.title) { const h = document.createElement("h4"); h.textContent = n.title; parent.appendChild(h); }
      parent.appendChild(table(n.columns, n.rows, n.more));
    } else if (n.kind === "series" || n.kind === "matrix") {
      const f = genFigure(n); parent.appendChild(f.div); pending.push(f);
    } else if (n.kind === "group") {
      const d = document.createElement("details"); d.className = "group"; d.open = depth < 3;
      const s = document.createElement("summary"); s.textContent = n.title || "\u2026"; d.appendChild(s);
      const inner = []; renderNodes(n.children, d, depth + 1, inner);
      if (d.open) inner.forEach((f) => pending.push(f));
      else d.addEventListener("toggle", () => { inner.splice(0).forEach((f) => f.draw()); });
      parent.appendChild(d);
    } else if (n.kind === "note") {
      const p = document.createElement("p"); p.className = "note"; p.textContent = n.text; parent.appendChild(p);
    } else {
      const pre = document.createElement("pre"); pre.className = "json"; pre.textContent = JSON.stringify(n.value, null, 1); parent.appendChild(pre);
    }
  });
}
function buildSections() {
  const root = $("sections"), pending = [];
  D.sections.forEach((sec) => {
    const raw = sec.key === "mechanism" && D.mechanism ? $("mech-raw") : null;
    if (raw) {  // the designed Mechanism section draws it; the full tree waits in a closed <details>
      const later = []; renderNodes(sec.nodes, raw, 1, later);
      raw.parentNode.addEventListener("toggle", () => { later.splice(0).forEach((f) => f.draw()); });
      return;
    }
    const s = document.createElement("section"); s.id = "section-" + sec.key;
    const h = document.createElement("h2"); h.textContent = sec.key.charAt(0).toUpperCase() + sec.key.slice(1); s.appendChild(h);
    renderNodes(sec.nodes, s, 0, pending);
    root.appendChild(s);
  });
  pending.forEach((f) => f.draw());
}

// ---------- start ----------
function start() {
  buildStrip();
  fillSelect("sel-layer", L, String, (l) => selectHead(l, S.head));
  fillSelect("sel-head", H, String, (h) => selectHead(S.layer, h));
  fillSelect("sel-token", T, (t) => label(t, 28) + (spikeSet.has(t) ? "  (spike)" : "") + (sinkSet.has(t) ? "  (sink)" : ""),
    (t) => selectToken(t));
  $("chk-sqrt").addEventListener("change", (e) => { S.sqrt = e.target.checked; drawAttention(); });
  if (D.heads) {  // start on the head that sinks hardest in the middle third of the network, if any
    let best = -1;
    for (let l = Math.floor(L / 3); l < Math.max(Math.floor(L / 3) + 1, Math.ceil(2 * L / 3)); l++)
      for (let h = 0; h < H; h++) if (D.heads[l][h] > best) { best = D.heads[l][h]; S.layer = l; S.head = h; }
  }
  S.token = D.spikes.length ? D.spikes[0].position : D.top_sink.position;
  drawTokensChart(); drawHeads(); drawResidual(); buildSections();
  (window.sinkholeSections || []).forEach((f) => f(API));  // designed sections (static/mechanism.js)
  selectHead(S.layer, S.head); selectToken(S.token);
  API.ready = true;
}
start();
})();
