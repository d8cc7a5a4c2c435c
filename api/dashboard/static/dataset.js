// The dataset page's charts: label (or tag) counts and length histograms, from the stats kept at upload.
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

  document.querySelectorAll("canvas[data-chart=lengths]").forEach((canvas) => {
    const lengths = data.lengths[canvas.dataset.name];
    let labels, values;
    if (lengths.edges) { // a histogram: bin i holds edges[i] <= length < edges[i + 1]
      labels = lengths.counts.map((_, i) => `${lengths.edges[i]}-${lengths.edges[i + 1] - 1}`);
      values = lengths.counts;
    } else { // stored before histograms were kept
      labels = ["min", "p50", "p90", "p99", "max", "mean"].filter((point) => point in lengths);
      values = labels.map((point) => lengths[point]);
    }
    new Chart(canvas, { type: "bar", data: { labels, datasets: [{ label: canvas.dataset.name, data: values }] }, options });
  });
})();
