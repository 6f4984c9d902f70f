// The templates' block editor: GrapesJS with its MJML plugin (both vendored) over the body of the
// template's latest version. Saving copies the editor's MJML into the form, which stores a draft the
// same way the source editor does (validated by the service, every problem listed).
(function () {
  "use strict";

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("blocks-form");
    var body = document.getElementById("f-body");
    if (!form || !body || !window.grapesjs) { return; }
    var mjml = window["grapesjs-mjml"];
    var editor = window.grapesjs.init({
      container: "#blocks-editor",
      height: "700px",
      storageManager: false,
      telemetry: false,     // GrapesJS reports usage to its vendor unless told not to
      cssIcons: "",         // its default loads Font Awesome from a CDN: the panels use their own icons

      fromElement: false,
      components: body.value,
      plugins: [mjml.default || mjml],
      // No web fonts: the canvas would fetch them from a font host (and the page's CSP refuses it).
      pluginsOpts: (function () { var o = {}; o[mjml.default || mjml] = { fonts: {} }; return o; })()
    });
    window.nurtureBlocks = editor;   // tests and power users reach the editor's API here
    form.addEventListener("submit", function () {
      body.value = editor.getHtml();
    });
  });
})();
