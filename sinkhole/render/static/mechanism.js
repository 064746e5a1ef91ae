window.sinkholeSections = (window.sinkholeSections || []).concat([function (API) {
  const M = API.data.mechanism; if (!M) return;
  const h = API.h, esc = h.esc, fmt = h.fmt, $ = (id) => document.getElementById(id);
  const base = (extra) => Object.assign({ font: h.FONT, margin: { l: 60, r: 10, t: 40, b: 50 }, legend: h.LEGEND_ABOVE }, extra);
  const plot = (id, traces, layout) => Plotly.newPlot(id, traces, base(layout), h.CFG);
  M.story.forEach((s) => { const li = document.createElement("li"); li.textContent = s; $("mech-story").appendChild(li); });

  const measured = (t) => t.norm.some((x) => x !== null);
  if (M.lifecycle.length && !M.lifecycle.some(measured))
    $("mech-lifecycle").textContent = "Not measured: this model's attention and FFN contributions could not be told apart (its blocks were not split by discovery).";
  else if (M.lifecycle.length) {
    // blocks that were not measured (null) are gaps: markers keep isolated points visible
    // tokens, not channels: dark shades of viridis, so no line shares a colour with a channel on this page.
    // The same token in several prompts often has the same trace: earlier lines are wider, so each shows.
    const VIR = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779"], n = M.lifecycle.length;
    const tokColour = (i) => VIR[n > 1 ? Math.round(i * (VIR.length - 1) / (n - 1)) : 0];
    const tokWidth = (i) => (n > 1 ? 1.5 + 3 * (n - 1 - i) / (n - 1) : 2);
    plot("mech-lifecycle", M.lifecycle.map((t, i) => ({ type: "scatter", mode: t.norm.includes(null) ? "lines+markers" : "lines",
      line: { color: tokColour(i), width: tokWidth(i) }, marker: { color: tokColour(i) }, x: t.blocks.map((b, i) => i), y: t.norm,
      name: esc(t.label), customdata: t.blocks, hovertemplate: "%{customdata}<br>\u2016r\u2016 = %{y:.4g}<extra>" + esc(t.label) + "</extra>" })),
      { xaxis: { title: { text: "block (2l = attention of layer l, 2l+1 = its FFN)" } },
        yaxis: { title: { text: "\u2016r_b\u2016 (log)" }, type: "log", dtick: 1 } });
  } else $("mech-lifecycle").textContent = "No traced tokens in this report.";

  const C = M.channels, Lc = C.values.length ? C.values[0].length : 0;
  plot("mech-channels", C.channels.map((c, i) => ({ type: "scatter", mode: "lines+markers", x: API.range(Lc), y: C.values[i],
    name: "channel " + c, line: { color: h.chColour(c) }, marker: { color: h.chColour(c) }, connectgaps: false, hovertemplate: "layer %{x}<br>channel " + c + " = %{y:.4g}<extra></extra>" })),
    { xaxis: { title: { text: "layer" } }, yaxis: { title: { text: "h_l[t, c] (mean over spike tokens)" } },
      shapes: [{ type: "line", xref: "x", yref: "paper", x0: M.step_up, x1: M.step_up, y0: 0, y1: 1, line: { dash: "dot", color: "#888" } }] });

  const A = M.amplifier, spikeC = new Set(C.channels);
  if (A.top_channels) {
    const ev = A.per.map((p) => ({ type: "bar", x: (p.top_eigenvalues || []).map((v, i) => "\u03bb" + (i + 1)), y: p.top_eigenvalues,
      name: "S_" + p.channel, marker: { color: h.chColour(p.channel) }, xaxis: "x2", yaxis: "y2", hovertemplate: "%{x} = %{y:.4g}<extra>S_" + p.channel + "</extra>" }));
    // the spike channels always appear, after the largest 8 when they are not among them (with their rank)
    const extra = A.per.filter((p) => !A.top_channels.includes(p.channel) && p.fro_norm !== null);
    const bx = A.top_channels.map((c) => "ch " + c).concat(extra.map((p) => "ch " + p.channel + " (rank " + p.fro_rank + ")"));
    const by = A.top_values.concat(extra.map((p) => p.fro_norm));
    const bc = A.top_channels.concat(extra.map((p) => p.channel));
    plot("mech-amplifier", [{ type: "bar", x: bx, y: by, name: "\u2016U_k\u2016_F",
      marker: { color: bc.map((c) => (spikeC.has(c) ? h.chColour(c) : h.chColour(null))) }, showlegend: false,
      hovertemplate: "%{x}: %{y:.4g}<extra></extra>" }].concat(ev), {
      margin: { l: 60, r: 10, t: 40, b: 60 },
      xaxis: { domain: [0, 0.52], type: "category", tickangle: -90, automargin: true,
        title: { text: "output channel<br>(rank 1 = largest of " + A.n_channels + ")", standoff: 6 } },
      yaxis: { title: { text: "\u2016U_k\u2016_F" }, rangemode: "tozero" },
      xaxis2: { domain: [0.64, 1], anchor: "y2", automargin: true, title: { text: "eigenvalue of S_k<br>(largest |\u03bb| first)", standoff: 6 } },
      yaxis2: { anchor: "x2", title: { text: "\u03bb", standoff: 2 } },
      shapes: [{ type: "line", xref: "x domain", yref: "y", x0: 0, x1: 1, y0: A.median, y1: A.median, line: { dash: "dot", color: "#555" } }],
      annotations: [{ xref: "x domain", yref: "y", x: 1, y: A.median, text: "median", showarrow: false, xanchor: "right", yanchor: "bottom", font: { size: 10 } }] });
  } else $("mech-amplifier").textContent = A.why;

  const N = M.norm;
  if (N.why) $("mech-norm").textContent = N.why;
  else plot("mech-norm", [{ type: "bar", x: N.labels, y: N.spike, name: "spike tokens", marker: { color: "#d64541" }, hovertemplate: "%{y:.1%}<extra>spike tokens</extra>" },
    { type: "bar", x: N.labels, y: N.other, name: "other tokens", marker: { color: "#8da0cb" }, hovertemplate: "%{y:.1%}<extra>other tokens</extra>" }],
    { barmode: "group", yaxis: { title: { text: "share of squared mass in spike channels" }, tickformat: ".0%", range: [0, 1] } });

  const K = M.keys;
  if (K.sink_pr) {
    const tr = [{ type: "scatter", mode: "lines+markers", x: API.range(K.sink_pr.length), y: K.sink_pr, name: "sink keys (PR)", line: { color: "#d64541" } },
      { type: "scatter", mode: "lines+markers", x: API.range(K.other_pr.length), y: K.other_pr, name: "other keys (PR)", line: { color: "#8da0cb" } }];
    if (K.energy) tr.push({ type: "scatter", mode: "lines", x: API.range(K.energy.length), y: K.energy, name: "query energy in sink subspace", yaxis: "y2", line: { color: "#0f766e" } });
    if (K.random) tr.push({ type: "scatter", mode: "lines", x: API.range(K.random.length), y: K.random, name: "random subspace", yaxis: "y2", line: { color: "#0f766e", dash: "dot" } });
    plot("mech-keys", tr, { margin: { l: 60, r: 60, t: 60, b: 50 }, xaxis: { title: { text: "layer" } },
      yaxis: { title: { text: "participation ratio" }, rangemode: "tozero" },
      yaxis2: { title: { text: "query energy share" }, overlaying: "y", side: "right", rangemode: "tozero", tickformat: ".0%", showgrid: false } });
  } else $("mech-keys").textContent = "No sink keys were gathered.";

  const G = M.heads, Lh = G.grid.length, Hh = Lh ? G.grid[0].length : 0;
  plot("mech-heads", [{ type: "heatmap", z: G.grid, x: API.range(Hh), y: API.range(Lh), zmin: 0, zmax: 1, xgap: 1, ygap: 1,
    colorscale: [[0, "#eef0f4"], [0.5, "#eef0f4"], [0.5, "#d64541"], [1, "#d64541"]], showscale: false,
    hovertemplate: "layer %{y} \u00b7 head %{x}: %{z}<extra></extra>" }],
    { margin: { l: 60, r: 10, t: 40, b: 50 }, title: { text: G.n + " of " + G.total + " heads sink (\u03b1 > " + G.epsilon + ")", font: { size: 12 }, x: 0.01, y: 0.98 },
      xaxis: { title: { text: "head" }, dtick: 1 }, yaxis: { title: { text: "layer" }, autorange: "reversed" } });

  const I = M.interventions;
  if (I) {
    const ticks = I.labels.map((l) => esc(l).replace(" = ", "<br>= ").replace(" (", "<br>("));
    plot("mech-interventions", [{ type: "bar", x: ticks, y: I.ppl, text: I.ppl.map(fmt), textposition: "outside",
      marker: { color: I.keys.map((k) => (k === "none" ? "#888" : k === "sink_masked" ? "#1f6feb" : k === "random_zero" ? "#8da0cb" : "#d64541")) },
      hovertemplate: "%{x}: perplexity %{y:.4g}<extra></extra>" }],
      { yaxis: { title: { text: "perplexity (" + I.n_tokens + " tokens, log)" }, type: "log", dtick: 1 }, xaxis: { tickangle: 0 }, showlegend: false });
  } else $("mech-interventions").textContent = "Interventions were skipped (--no-interventions).";
}]);
