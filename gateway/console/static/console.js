// The console's progressive script: lays out the journey graph with dagre and draws the score chart
// with Chart.js. Pages work without it (the graph's steps and the score table are server-rendered);
// data comes from data-* attributes, as the Content-Security-Policy allows no inline script.
"use strict";

(function () {
  var SVG = "http://www.w3.org/2000/svg";

  function layoutGraph(container) {
    if (typeof dagre === "undefined") return;
    var spec = JSON.parse(container.getAttribute("data-graph"));
    var g = new dagre.graphlib.Graph({ multigraph: true });
    g.setGraph({ rankdir: "TB", nodesep: 24, ranksep: 44, marginx: 12, marginy: 12 });
    g.setDefaultEdgeLabel(function () { return {}; });
    var elements = {};
    container.querySelectorAll("[data-step]").forEach(function (el) {
      elements[el.getAttribute("data-step")] = el;
    });
    container.classList.add("laid-out");
    spec.nodes.forEach(function (n) {
      var el = elements[n.id];
      if (!el) return;
      g.setNode(n.id, { width: el.offsetWidth, height: el.offsetHeight });
    });
    // Each edge's label is measured before the layout and given to dagre as a size, so that dagre makes
    // room for it (in the graph's width and between ranks) and places it: a label drawn after the
    // layout beside its edge's middle ran past the graph's right edge (clipped by the box that scrolls
    // it) and over the step boxes.
    var svg = container.querySelector("svg.edges");
    svg.replaceChildren();  // a redraw (the draft's graph as it is edited) starts from no edges
    spec.edges.forEach(function (e, i) {
      var text = ((e.label || "") + (e.share !== null && e.share !== undefined
        ? " " + (Math.round(e.share * 1000) / 10) + "%" : "")).trim();
      var edge = { label: text, labelpos: "c", width: 0, height: 0, text: null };
      if (text) {
        edge.text = document.createElementNS(SVG, "text");
        edge.text.setAttribute("class", "edge-label");
        edge.text.setAttribute("text-anchor", "middle");
        edge.text.setAttribute("dominant-baseline", "central");
        edge.text.textContent = text;
        svg.appendChild(edge.text);
        var box = edge.text.getBBox();
        edge.width = Math.ceil(box.width) + 8;
        edge.height = Math.ceil(box.height) + 4;
      }
      g.setEdge(e.source, e.target, edge, "e" + i);
    });
    dagre.layout(g);
    var size = g.graph();
    container.style.width = Math.ceil(size.width) + "px";
    container.style.height = Math.ceil(size.height) + "px";
    g.nodes().forEach(function (id) {
      var n = g.node(id);
      var el = elements[id];
      if (!el) return;  // an edge's end without a box on the page
      el.style.left = Math.round(n.x - n.width / 2) + "px";
      el.style.top = Math.round(n.y - n.height / 2) + "px";
    });
    svg.setAttribute("width", Math.ceil(size.width));
    svg.setAttribute("height", Math.ceil(size.height));
    g.edges().forEach(function (ref) {
      var e = g.edge(ref);
      var path = document.createElementNS(SVG, "polyline");
      path.setAttribute("points", e.points.map(function (p) { return p.x + "," + p.y; }).join(" "));
      path.setAttribute("class", "edge");
      svg.insertBefore(path, svg.firstChild);  // under every label
      if (e.text) {
        e.text.setAttribute("x", e.x);
        e.text.setAttribute("y", e.y);
      }
    });
  }

  function scoreChart(canvas) {
    if (typeof Chart === "undefined") return;
    var points = JSON.parse(canvas.getAttribute("data-points"));
    if (!points.length) return;
    new Chart(canvas, {
      type: "line",
      data: {
        labels: points.map(function (p) { return p.at.replace("T", " ").replace("Z", ""); }),
        datasets: [{ label: "score", data: points.map(function (p) { return p.score; }), stepped: true }]
      },
      options: { animation: false, responsive: true, maintainAspectRatio: false,
                 plugins: { legend: { display: false } } }
    });
  }

  function seriesChart(canvas) {
    if (typeof Chart === "undefined") return;
    var points = JSON.parse(canvas.getAttribute("data-points"));
    if (!points.length) return;
    new Chart(canvas, {
      type: "bar",
      data: {
        labels: points.map(function (p) { return String(p.t).slice(0, 10); }),
        datasets: [{ label: canvas.getAttribute("data-metric"), data: points.map(function (p) { return p.value; }) }]
      },
      options: { animation: false, responsive: true, maintainAspectRatio: false,
                 plugins: { legend: { display: false } } }
    });
  }

  // The draft's graph, rebuilt from a validation's answer: a box per step (text set as text, never
  // parsed as HTML), then laid out as the journey page's graph is.
  function redrawDraft(container, spec) {
    var svg = container.querySelector("svg.edges");
    var boxes = spec.nodes.map(function (n) {
      var box = document.createElement("div");
      box.className = "node type-" + n.type.replace(/[^a-z_-]/gi, "");
      box.setAttribute("data-step", n.id);
      box.setAttribute("data-stage", n.stage);
      var head = document.createElement("div");
      head.className = "node-head";
      var kind = document.createElement("span");
      kind.className = "step-type";
      kind.textContent = n.type;
      var id = document.createElement("span");
      id.className = "step-id";
      id.textContent = n.id;
      head.append(kind, " ", id);
      box.appendChild(head);
      if (n.label) {
        var label = document.createElement("div");
        label.className = "step-label";
        label.textContent = n.label;
        box.appendChild(label);
      }
      return box;
    });
    container.classList.remove("laid-out");
    container.replaceChildren.apply(container, [svg].concat(boxes));
    container.setAttribute("data-graph", JSON.stringify(spec));
    layoutGraph(container);
  }

  // As the editor types: the service's validation of the whole document, every problem listed.
  function liveValidation(area) {
    var url = area.getAttribute("data-validate");
    var csrf = area.form.querySelector("input[name=csrf]").value;
    var list = document.getElementById("problems");
    var valid = document.getElementById("valid");
    var timer = null;
    var sent = 0;
    function check() {
      var mine = ++sent;
      var body = new URLSearchParams({ csrf: csrf, document: area.value });
      fetch(url, { method: "POST", body: body, credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (result) {
          if (!result || mine !== sent) return;  // a later keystroke's answer supersedes this one
          list.replaceChildren.apply(list, result.problems.map(function (p) {
            var li = document.createElement("li");
            li.textContent = p;
            return li;
          }));
          valid.hidden = !result.valid;
          valid.textContent = result.valid ? "No problem found." : "";
          var drawn = document.getElementById("draft-graph");
          var state = document.getElementById("draft-graph-state");
          if (drawn && state) {
            if (result.graph) {
              redrawDraft(drawn, result.graph);
              state.setAttribute("data-state", "drawn");
              state.textContent = "Redrawn as you type, whenever the draft is valid.";
            } else {
              state.setAttribute("data-state", "stale");
              state.textContent = "The draft has problems: the graph shows its last valid version.";
            }
          }
        });
    }
    area.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(check, 500);
    });
  }

  // A form whose action reaches leads at once (a publish) asks first, unless its dry run is ticked:
  // one stray click must not change what every lead is sent. Cancel submits nothing.
  function confirmFirst(form) {
    form.addEventListener("submit", function (event) {
      var dryRun = form.querySelector("input[name=dry_run]");
      if (dryRun && dryRun.checked) return;
      if (!window.confirm(form.getAttribute("data-confirm"))) event.preventDefault();
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("form[data-confirm]").forEach(confirmFirst);
    var editor = document.querySelector("textarea[data-validate]");
    if (editor) liveValidation(editor);
    var graph = document.getElementById("graph");
    if (graph) layoutGraph(graph);
    var draft = document.getElementById("draft-graph");
    if (draft && draft.querySelector("[data-step]")) layoutGraph(draft);
    var chart = document.getElementById("score-chart");
    if (chart) scoreChart(chart);
    var series = document.getElementById("series-chart");
    if (series) seriesChart(series);
  });
})();
