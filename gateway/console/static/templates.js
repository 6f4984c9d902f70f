// The template editor: insert a variable or a dynamic block at the cursor of the field last edited,
// list the problems as you type (the service validates: nothing stored), and refresh the live previews
// (the form posted into the two sandboxed iframes by its preview buttons).
(function () {
  "use strict";

  function debounce(fn, ms) {
    var timer = null;
    return function () {
      clearTimeout(timer);
      timer = setTimeout(fn, ms);
    };
  }

  function start(form) {
    var last = form.querySelector("#f-body");
    var list = document.getElementById("problems");
    var valid = document.getElementById("valid");
    var url = form.getAttribute("data-validate");

    form.querySelectorAll("input[name], textarea[name]").forEach(function (field) {
      field.addEventListener("focus", function () {
        if (field.name !== "lead_id") { last = field; }
      });
    });

    function insert(text) {
      var start = last.selectionStart || 0;
      var end = last.selectionEnd || 0;
      last.value = last.value.slice(0, start) + text + last.value.slice(end);
      last.focus();
      last.selectionStart = last.selectionEnd = start + text.length;
      last.dispatchEvent(new Event("input", { bubbles: true }));
    }

    document.querySelectorAll("[data-insert]").forEach(function (button) {
      button.addEventListener("click", function () { insert(button.getAttribute("data-insert")); });
    });

    function check() {
      var body = new URLSearchParams(new FormData(form));
      fetch(url, { method: "POST", body: body, credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (result) {
          if (!result) { return; }
          list.replaceChildren.apply(list, result.problems.map(function (p) {
            var li = document.createElement("li");
            li.textContent = p;
            return li;
          }));
          valid.hidden = !result.valid;
          valid.textContent = result.valid ? "No problem found." : "";
          if (result.valid) { refresh(); }
        });
    }

    // One preview after the other: a form has one planned navigation at a time, so a second submission
    // made before the first has started cancels it (HTML's "planned navigation"), and the desktop preview
    // stayed blank while the phone one followed every edit. The phone's goes once the desktop's loaded.
    function refresh() {
      var desktop = document.getElementById("preview-desktop-button");
      var phone = document.getElementById("preview-phone-button");
      var frame = document.getElementById("live-desktop");
      if (!desktop || !frame) {
        if (phone) { form.requestSubmit(phone); }
        return;
      }
      if (phone) {
        frame.addEventListener("load", function () { form.requestSubmit(phone); }, { once: true });
      }
      form.requestSubmit(desktop);
    }

    form.addEventListener("input", debounce(check, 600));
    refresh();
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("template-form");
    if (form) { start(form); }
  });
})();
