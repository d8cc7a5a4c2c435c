// The dataset page's charts: label (or tag) counts and length percentiles, from the stats kept at upload.
(function () {
  const source = document.getElementById("dataset-chart-data");
  if (!source || !window.Chart) return;
  const data = JSON.parse(source.textContent);
  const options = { animation: false, responsive: true, plugins: { legend: { display: false } } };

  document.querySelectorAll("canvas[data-chart=counts]").forEach((canvas) => {
    const counts = data.counts[canvas.dataset.title];
    new Chart(canvas, {
      type: "bar",
      data: { labels: Object.keys(counts), datasets: [{ label: canvas.dataset.title, data: Object.values(counts) }] },
      options,
    });
  });

  const canvas = document.querySelector("canvas[data-chart=lengths]");
  if (canvas) {
    const points = ["min", "p50", "p90", "p99", "max", "mean"];
    const datasets = Object.entries(data.lengths).map(([name, summary]) => ({
      label: name, data: points.map((point) => summary[point] ?? null),
    }));
    new Chart(canvas, {
      type: "bar",
      data: { labels: points, datasets },
      options: { ...options, plugins: { legend: { display: datasets.length > 1, position: "bottom" } } },
    });
  }
})();
