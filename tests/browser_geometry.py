"""Layout checks that run in the real browser (tests/test_html_browser.py): what a person sees cut or covered,
measured from the rendered elements' geometry rather than from the figure specs.

`LAYOUT_PROBLEMS` (a script for selenium's execute_script) returns one line per problem on the page:
- a plotly mode bar box that intersects a legend or a plot area (`.nsewdrag`, the data's rectangle);
- a legend box that intersects a plot area;
- two texts of one figure that intersect, from different groups (axis titles, each axis's tick labels,
  each annotation, the legend, each trace's point labels; tick labels of one axis are plotly's own spacing
  and are not compared with each other);
- a text that reaches outside its figure's svg (the browser cuts it there).
Texts are compared as their real, possibly rotated rectangles (getBBox through getScreenCTM, separating
axes), not their axis-aligned bounding boxes, which would make a rotated label seem to cover its
neighbours. Overlaps under `TOL` px are ignored (glyph boxes include line spacing).
"""

TOL = 2.5

LAYOUT_PROBLEMS = """
const TOL = __TOL__;
const bad = [];
const rect = (e) => e.getBoundingClientRect();
const visible = (r) => r.width >= 1 && r.height >= 1;
const rnd = (r) => [r.left, r.top, r.right, r.bottom].map(Math.round).join(',');
function boxesMeet(a, b) {
  const ix = Math.min(a.right, b.right) - Math.max(a.left, b.left);
  const iy = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
  return ix > TOL && iy > TOL;
}
function corners(el) {  // the element's own rectangle (rotation kept) in viewport pixels
  const b = el.getBBox(), m = el.getScreenCTM();
  if (!m || b.width < 1 || b.height < 1) return null;
  return [[b.x, b.y], [b.x + b.width, b.y], [b.x + b.width, b.y + b.height], [b.x, b.y + b.height]]
    .map(([x, y]) => [m.a * x + m.c * y + m.e, m.b * x + m.d * y + m.f]);
}
function depth(p, q) {  // separating axes: the smallest overlap of two convex quads along their edge normals
  let best = Infinity;
  for (const poly of [p, q]) for (let i = 0; i < 4; i++) {
    const [x1, y1] = poly[i], [x2, y2] = poly[(i + 1) % 4], len = Math.hypot(x2 - x1, y2 - y1) || 1;
    const nx = (y1 - y2) / len, ny = (x2 - x1) / len;
    const pr = (pts) => pts.map(([x, y]) => x * nx + y * ny);
    const a = pr(p), b = pr(q);
    best = Math.min(best, Math.min(Math.max(...a), Math.max(...b)) - Math.max(Math.min(...a), Math.min(...b)));
  }
  return best;
}
const nth = (e, sel) => sel + [...e.closest('.js-plotly-plot').querySelectorAll(sel)].indexOf(e.closest(sel));
const GROUPS = [
  ['g[class^="g-"][class$="title"] text', (e) => 'title:' + e.closest('g').getAttribute('class')],
  ['g.xtick text, g.ytick text, g.x2tick text, g.y2tick text, g.x3tick text, g.y3tick text',
   (e) => 'ticks:' + e.closest('g').getAttribute('class')],
  ['.colorbar text', (e) => nth(e, '.colorbar')],
  ['g.annotation text', (e) => nth(e, 'g.annotation')],
  ['g.legend text', () => 'legend'],
  ['g.textpoint text, text.bartext', (e) => nth(e, 'g.trace')],
];
document.querySelectorAll('.js-plotly-plot').forEach((g) => {
  const name = g.id || g.className;
  const areas = [...g.querySelectorAll('.nsewdrag')].map(rect).filter(visible);
  const legends = [...g.querySelectorAll('g.legend rect.bg')].map(rect).filter(visible);
  g.querySelectorAll('.modebar').forEach((mb) => {
    const m = rect(mb);
    if (!visible(m)) return;
    const over = (what) => (b) => {
      if (boxesMeet(m, b)) bad.push(name + ': mode bar ' + rnd(m) + ' over ' + what + rnd(b));
    };
    legends.forEach(over('legend ')); areas.forEach(over('plot area '));
  });
  legends.forEach((l) => areas.forEach((p) => {
    if (boxesMeet(l, p)) bad.push(name + ': legend ' + rnd(l) + ' over plot area ' + rnd(p));
  }));
  const svg = rect(g.querySelector('svg.main-svg'));
  const texts = [];
  GROUPS.forEach(([sel, group]) => g.querySelectorAll(sel).forEach((e) => {
    const st = getComputedStyle(e);
    if (!e.textContent.trim() || st.visibility === 'hidden' || st.display === 'none') return;
    if (texts.some((t) => t.e === e)) return;
    const c = corners(e);
    if (c) texts.push({ e: e, c: c, group: group(e) });
  }));
  texts.forEach((t) => {
    const xs = t.c.map((p) => p[0]), ys = t.c.map((p) => p[1]);
    if (Math.min(...xs) < svg.left - TOL || Math.max(...xs) > svg.right + TOL ||
        Math.min(...ys) < svg.top - TOL || Math.max(...ys) > svg.bottom + TOL)
      bad.push(name + ': "' + t.e.textContent + '" (' + t.group + ') cut at the figure edge');
  });
  for (let i = 0; i < texts.length; i++) for (let j = i + 1; j < texts.length; j++) {
    const a = texts[i], b = texts[j];
    if (a.group === b.group) continue;
    if (depth(a.c, b.c) > TOL) bad.push(name + ': "' + a.e.textContent + '" (' + a.group + ') overlaps "' +
                                         b.e.textContent + '" (' + b.group + ')');
  }
});
return bad;
""".replace("__TOL__", str(TOL))


def layout_problems(driver) -> list[str]:
    return driver.execute_script(LAYOUT_PROBLEMS)
