// The job page's training curves: polls the job's metric events and draws them with Chart.js.
(function () {
  const box = document.getElementById("charts");
  if (!box || !window.Chart) return;
  const groups = { loss: [], lr: [], eval: [] };
  const series = new Map(); // metric name -> {chart, dataset}
  const charts = {
    loss: newChart("chart-loss"), lr: newChart("chart-lr"), eval: newChart("chart-eval"),
  };
  let cursor = 0;
  let ended = box.dataset.ended === "true";

  function newChart(id) {
    return new Chart(document.getElementById(id), {
      type: "line",
      data: { datasets: [] },
      options: {
        animation: false, parsing: false, responsive: true,
        scales: { x: { type: "linear", title: { display: true, text: "step" } } },
        plugins: { legend: { position: "bottom" } },
        elements: { point: { radius: 2 } },
      },
    });
  }

  function groupOf(name) {
    if (name === "learning_rate") return "lr";
    if (name.includes("loss")) return "loss";
    if (name.startsWith("eval_") && !/runtime|per_second/.test(name)) return "eval";
    return null; // epoch, grad_norm, throughput: not charted
  }

  function add(step, data) {
    for (const [name, value] of Object.entries(data)) {
      const group = groupOf(name);
      if (group === null || typeof value !== "number") continue;
      if (!series.has(name)) {
        const dataset = { label: name, data: [], borderWidth: 2 };
        charts[group].data.datasets.push(dataset);
        series.set(name, { chart: charts[group], dataset });
      }
      series.get(name).dataset.data.push({ x: step, y: value });
    }
  }

  async function poll() {
    try {
      const response = await fetch(`${box.dataset.metricsUrl}?after=${cursor}`, { credentials: "same-origin" });
      if (response.ok) {
        const page = await response.json();
        for (const item of page.items) add(item.step, item.data);
        cursor = page.next_cursor;
        if (page.items.length) {
          Object.values(charts).forEach((chart) => {
            chart.canvas.closest("figure").hidden = chart.data.datasets.length === 0;
            chart.update();
          });
          document.getElementById("charts-empty").hidden = true;
          box.dataset.points = String(series.size ? [...series.values()].reduce((n, s) => n + s.dataset.data.length, 0) : 0);
        }
      }
    } finally {
      // The live panel tells us when the job has ended; poll once more after that, then stop.
      const status = document.querySelector("#job-live [data-testid=status]");
      const done = status && ["succeeded", "failed", "cancelled"].includes(status.textContent.trim());
      if (done && box.dataset.ended !== "true") {
        location.reload(); // the job ended while we watched: load its evaluation and downloads
      } else if (!(ended && done)) {
        ended = done;
        setTimeout(poll, 2000);
      }
    }
  }
  poll();
})();
