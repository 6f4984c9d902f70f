/* BorderBridge Nurture website snippet (docs/API.md "Website tracking"). Hand-written, no dependencies.
   <script src="https://<gateway>/t/nurture.js" data-site-key="<site key>" async></script>
   Calls made before it loads: window.nurture = window.nurture || []; nurture.push(["track", type, props]).
   It never breaks the page: every entry point catches its errors and reports them with console.warn. */
(function (w, d) {
  "use strict";
  var script = d.currentScript || d.querySelector("script[data-site-key]");
  if (!script || (w.nurture && w.nurture.loaded)) { return; }
  var KEY = script.getAttribute("data-site-key") || "";
  var BASE = (script.src || "").replace(/\/t\/nurture\.js([?#].*)?$/, "");
  var REQUIRE_CONSENT = script.hasAttribute("data-require-consent");
  var HONOR_DNT = script.getAttribute("data-honor-dnt") !== "false";
  var AUTO_PAGE = script.getAttribute("data-auto-page") !== "false";
  var ID_KEY = "nurture_vid", CONSENT_KEY = "nurture_consent", COOKIE = "_nurture_vid", LINK = "nurture_id";
  var ID_RE = /^[A-Za-z0-9_-]{16,64}$/;
  var queued = (w.nurture && typeof w.nurture.length === "number") ? Array.prototype.slice.call(w.nurture) : [];
  var pending = [], heldLink = null, vid = null, seq = 0, lastPath = null, timer = null, chain = Promise.resolve();

  function report(where, err) {
    try { if (w.console && console.warn) { console.warn("nurture: " + where + ": " + ((err && err.message) || err)); } } catch (e) { /* nothing left to do */ }
  }
  function safe(name, fn) {
    return function () {
      try { return fn.apply(null, arguments); } catch (e) { report(name, e); }
    };
  }
  function load(k) { try { return w.localStorage.getItem(k); } catch (e) { return null; } }
  function store(k, v) {
    try { if (v === null) { w.localStorage.removeItem(k); } else { w.localStorage.setItem(k, v); } } catch (e) { /* storage off */ }
  }
  function setCookie(v) {
    try {
      d.cookie = COOKIE + "=" + (v || "") + "; path=/; max-age=" + (v ? 31536000 : 0) + "; SameSite=Lax" +
        (w.location.protocol === "https:" ? "; Secure" : "");
    } catch (e) { /* cookies off */ }
  }
  function readCookie() {
    var m = (d.cookie || "").match(/(?:^|;\s*)_nurture_vid=([A-Za-z0-9_-]{16,64})/);
    return m ? m[1] : null;
  }
  function newId() {
    var a = new Uint8Array(16), s = "", i;
    w.crypto.getRandomValues(a);
    for (i = 0; i < a.length; i++) { s += ("0" + a[i].toString(16)).slice(-2); }
    return s;
  }
  function blocked() {
    return HONOR_DNT && (navigator.doNotTrack === "1" || w.doNotTrack === "1" || navigator.globalPrivacyControl === true);
  }
  function consented() { return !REQUIRE_CONSENT || load(CONSENT_KEY) === "yes"; }
  /* The first-party anonymous id: none is made or kept before consent (where the site asks for it)
     or when the visitor asked not to be tracked. */
  function visitor() {
    if (vid) { return vid; }
    if (blocked() || !consented()) { return null; }
    vid = load(ID_KEY) || readCookie();
    if (!ID_RE.test(vid || "")) { vid = newId(); }
    store(ID_KEY, vid);
    setCookie(vid);
    return vid;
  }
  function url(path, extra) {
    return BASE + "/t/v1/" + path + "?k=" + encodeURIComponent(KEY) + (extra || "");
  }
  function send(method, target, body) {
    var init = { method: method, credentials: "omit", mode: "cors" };
    if (body !== undefined) { init.body = body; init.keepalive = true; init.headers = { "Content-Type": "text/plain" }; }
    return w.fetch(target, init).then(function (r) {
      return r.json().then(function (j) {
        if (!r.ok) {
          var e = new Error((j && j.error && j.error.message) || ("HTTP " + r.status));
          e.status = r.status;
          throw e;
        }
        return j;
      });
    });
  }
  /* One request at a time, in order: an identification follows the events sent before it. */
  function serial(fn) {
    var p = chain.then(fn);
    chain = p.then(null, function () { return null; });
    return p;
  }
  function flush(beacon) {
    timer = null;
    var id = visitor();
    if (!id || !pending.length) { return; } /* before consent: kept in this page's memory only */
    var batch = pending.splice(0, 50), body = JSON.stringify({ visitor_id: id, events: batch });
    if (beacon === true && navigator.sendBeacon) {
      try { if (navigator.sendBeacon(url("collect"), new Blob([body], { type: "text/plain" }))) { return; } } catch (e) { /* fall back to fetch */ }
    }
    serial(function () { return send("POST", url("collect"), body); }).then(null, function (e) {
      if (!e.status || e.status >= 500 || e.status === 429) { pending = batch.concat(pending).slice(0, 200); }
      report("collect", e);
    });
    if (pending.length) { schedule(); }
  }
  function schedule() { if (!timer) { timer = w.setTimeout(safe("flush", flush), 50); } }
  function enqueue(type, props) {
    if (blocked()) { return; }
    pending.push({ id: Date.now().toString(36) + "-" + (seq++) + "-" + Math.random().toString(36).slice(2, 8),
                   type: String(type), properties: props || {} });
    if (pending.length > 200) { pending.shift(); }
    schedule();
  }
  function meta(name) {
    var m = d.querySelector('meta[name="nurture:' + name + '"]');
    return m ? m.getAttribute("content") : null;
  }
  function page(props) {
    var p = { page: w.location.pathname, title: (d.title || "").slice(0, 200),
              url: w.location.origin + w.location.pathname, referrer: d.referrer || "" };
    var names = ["category", "country", "topic"], i, k;
    for (i = 0; i < names.length; i++) { if (meta(names[i])) { p[names[i]] = meta(names[i]); } }
    for (k in (props || {})) { if (Object.prototype.hasOwnProperty.call(props, k)) { p[k] = props[k]; } }
    lastPath = w.location.pathname + w.location.search;
    enqueue("page_viewed", p);
  }
  function navigated() {
    if (w.location.pathname + w.location.search !== lastPath) { page(); }
  }
  function identify(traits) {
    var id = visitor(), body = { visitor_id: id }, names = ["email", "first_name", "last_name"], i;
    if (!id) { return Promise.resolve({ identified: false }); }
    for (i = 0; i < names.length; i++) { if (traits && traits[names[i]] != null) { body[names[i]] = traits[names[i]]; } }
    flush();
    return serial(function () { return send("POST", url("identify"), JSON.stringify(body)); })
      .then(null, function (e) { report("identify", e); return { identified: false, error: e.message }; });
  }
  function personalization() {
    var id = visitor();
    if (!id) { return Promise.resolve(null); }
    flush();
    return serial(function () { return send("GET", url("personalization", "&v=" + id)); })
      .then(null, function (e) { report("personalization", e); return null; });
  }
  function formFields(limit) {
    var id = visitor();
    if (!id) { return Promise.resolve([]); }
    return serial(function () { return send("GET", url("form", "&v=" + id + (limit ? "&limit=" + limit : ""))); })
      .then(function (j) { return j.fields; }, function (e) { report("form", e); return []; });
  }
  function submitForm(answers) {
    var id = visitor();
    if (!id) { return Promise.resolve({ stored: 0 }); }
    flush();
    return serial(function () { return send("POST", url("form"), JSON.stringify({ visitor_id: id, answers: answers })); })
      .then(null, function (e) { report("form", e); return { stored: 0, error: e.message, status: e.status }; });
  }
  function consent(yes) {
    if (yes) {
      store(CONSENT_KEY, "yes");
      if (visitor()) {
        schedule();
        if (heldLink) { var token = heldLink; heldLink = null; identifyLink(token); }
      }
    } else {
      store(CONSENT_KEY, null); store(ID_KEY, null); setCookie(null); vid = null; pending = []; heldLink = null;
    }
  }
  function identifyLink(token) {
    flush(); /* the events before it go first: the merge takes them in order */
    serial(function () { return send("POST", url("identify"), JSON.stringify({ visitor_id: vid, link: token })); })
      .then(null, function (e) { report("identify", e); });
  }
  /* An email click lands with ?nurture_id=<signed token>: the visitor is that person. The token leaves the
     address bar at once, so it is not bookmarked or shared; before consent it waits in this page's memory. */
  function fromLink() {
    var m = w.location.search.match(/[?&]nurture_id=([^&#]+)/), token, u;
    if (!m) { return; }
    token = decodeURIComponent(m[1]);
    u = new URL(w.location.href);
    u.searchParams.delete(LINK);
    w.history.replaceState(w.history.state, "", u.pathname + u.search + u.hash);
    lastPath = w.location.pathname + w.location.search;
    if (visitor()) { identifyLink(token); } else if (!blocked()) { heldLink = token; } /* until consent, in memory */
  }

  var api = {
    loaded: true,
    page: safe("page", page),
    track: safe("track", function (type, props) { enqueue(type, props); }),
    identify: function (traits) { try { return identify(traits); } catch (e) { report("identify", e); return Promise.resolve({ identified: false }); } },
    personalization: function () { try { return personalization(); } catch (e) { report("personalization", e); return Promise.resolve(null); } },
    formFields: function (limit) { try { return formFields(limit); } catch (e) { report("form", e); return Promise.resolve([]); } },
    submitForm: function (answers) { try { return submitForm(answers); } catch (e) { report("form", e); return Promise.resolve({ stored: 0 }); } },
    consent: safe("consent", consent),
    visitorId: safe("visitorId", function () { return visitor(); }),
    push: safe("push", function (call) { run(call); })
  };
  function run(call) {
    var name = call && call[0];
    if (typeof name === "string" && name !== "push" && typeof api[name] === "function") {
      return api[name].apply(null, Array.prototype.slice.call(call, 1));
    }
    report("queue", "unknown call " + name);
  }

  safe("start", function () {
    w.nurture = api;
    var push = w.history.pushState;
    w.history.pushState = function () {
      var r = push.apply(this, arguments);
      safe("navigate", navigated)();
      return r;
    };
    w.addEventListener("popstate", safe("navigate", navigated));
    w.addEventListener("pagehide", safe("unload", function () { flush(true); }));
    d.addEventListener("visibilitychange", safe("unload", function () { if (d.visibilityState === "hidden") { flush(true); } }));
    if (AUTO_PAGE) { page(); }
    safe("link", fromLink)();
    for (var i = 0; i < queued.length; i++) { safe("queue", run)(queued[i]); }
  })();
}(window, document));
