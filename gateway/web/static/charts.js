// Charts drawn as SVG by our own code: grouped bars, one group per day, with a legend and a
// title per bar (what a screen reader and a hover tell).

const NS = "http://www.w3.org/2000/svg";
const COLORS = ["#2456c7", "#f08c2e", "#1d7a3a", "#9b3dbd"];

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

// rows: [{label, values: {seriesName: number}}]; series: names in order.
export function barChart(rows, series, title) {
  const width = 720;
  const height = 240;
  const pad = { left: 40, right: 10, top: 24, bottom: 36 };
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": title });
  root.append(svg("title", {}, title));
  const max = Math.max(1, ...rows.flatMap((r) => series.map((s) => r.values[s] || 0)));
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const group = rows.length ? plotW / rows.length : plotW;
  const bar = Math.max(1, Math.min(24, (group * 0.8) / series.length));
  for (const tick of [0, 0.5, 1]) {
    const y = pad.top + plotH * (1 - tick);
    root.append(svg("line", { x1: pad.left, x2: width - pad.right, y1: y, y2: y, stroke: "#d9dde5" }));
    root.append(svg("text", { x: pad.left - 6, y: y + 4, "text-anchor": "end" }, String(Number.isInteger(max * tick) ? max * tick : (max * tick).toFixed(1))));
  }
  rows.forEach((row, i) => {
    const x0 = pad.left + i * group + (group - bar * series.length) / 2;
    series.forEach((name, j) => {
      const value = row.values[name] || 0;
      const h = (value / max) * plotH;
      const rect = svg("rect", {
        x: x0 + j * bar, y: pad.top + plotH - h, width: bar - 1, height: Math.max(h, 0), fill: COLORS[j % COLORS.length],
        "data-series": name, "data-label": row.label, "data-value": value,
      });
      rect.append(svg("title", {}, `${row.label}: ${value} ${name}`));
      root.append(rect);
    });
    if (rows.length <= 16 || i % Math.ceil(rows.length / 16) === 0) {
      root.append(svg("text", { x: pad.left + i * group + group / 2, y: height - pad.bottom + 14, "text-anchor": "middle" },
        row.label.slice(5)));
    }
  });
  series.forEach((name, j) => {
    const x = pad.left + j * 150;
    root.append(svg("rect", { x, y: 6, width: 10, height: 10, fill: COLORS[j % COLORS.length] }));
    root.append(svg("text", { x: x + 14, y: 15 }, name));
  });
  if (!rows.length) root.append(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, "no requests this month"));
  return root;
}
