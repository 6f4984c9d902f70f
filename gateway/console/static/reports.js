// Bar charts of the report pages (attribution, ROI, A/B): each canvas[data-chart] holds its labels and
// series as JSON in a data attribute (the CSP allows no inline script); the table beside it has the figures.
"use strict";

(function () {
  function barChart(canvas) {
    if (typeof Chart === "undefined") return;
    var spec = JSON.parse(canvas.getAttribute("data-chart"));
    if (!spec.labels.length) return;
    new Chart(canvas, {
      type: "bar",
      data: {
        labels: spec.labels,
        datasets: spec.series.map(function (s) { return { label: s.label, data: s.values }; })
      },
      options: { animation: false, responsive: true, maintainAspectRatio: false }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("canvas[data-chart]").forEach(barChart);
  });
})();
