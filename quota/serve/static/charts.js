// Draws each [data-chart] element's series ({"x": [unix s], "y": [tokens]}) as bars.
document.querySelectorAll("[data-chart]").forEach((el) => {
  const data = JSON.parse(el.dataset.chart);
  const fmt = (n) => (n == null ? "" : Math.round(n).toLocaleString("en"));
  const opts = {
    width: Math.max(320, el.clientWidth),
    height: 220,
    legend: { show: false },
    scales: {
      // Half a day either side of the first and last bars: one bar is not stretched.
      x: { time: true, range: () => [data.x[0] - 43200, data.x[data.x.length - 1] + 43200] },
      y: { range: (u, min, max) => [0, Math.max(1, max) * 1.1] },
    },
    series: [
      {},
      {
        label: el.dataset.label || "tokens",
        stroke: "#2f6fb3",
        fill: "rgba(47, 111, 179, 0.35)",
        paths: uPlot.paths.bars({ size: [0.7, 48] }),
        points: { show: false },
      },
    ],
    axes: [{}, { values: (u, ticks) => ticks.map(fmt), size: 70 }],
  };
  new uPlot(opts, [data.x, data.y], el);
});
