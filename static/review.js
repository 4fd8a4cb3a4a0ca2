// Keyboard-first review. Keys act on the buttons of the current item, so mouse and keyboard share one path.
(function () {
  "use strict";
  function item() { return document.getElementById("item"); }
  function typing(el) {
    return el && (el.tagName === "INPUT" || el.tagName === "TEXTAREA" || el.tagName === "SELECT" || el.isContentEditable);
  }
  function startCorrect() {
    var box = document.querySelector("#item .correct-box");
    if (!box) return;
    box.hidden = false;
    var input = box.querySelector("input[name=value]");
    input.focus();
    input.select();
  }
  function cancelCorrect() {
    var box = document.querySelector("#item .correct-box");
    if (!box || box.hidden) return;
    box.hidden = true;
    var accept = document.getElementById("btn-accept");
    if (accept) accept.focus();
  }
  // A key acts only on a settled item: not while a request is in flight, nor on content htmx has not yet
  // wired up (a second 'a' must not post the previous item again, or submit a form natively).
  function ready() {
    var it = item();
    return !document.querySelector(".htmx-request") && document.body.dataset.ready === (it.dataset.field || "empty");
  }
  function markReady() { var it = item(); if (it) document.body.dataset.ready = it.dataset.field || "empty"; }
  function click(id) { var b = document.getElementById(id); if (b && !b.disabled) b.click(); }

  document.addEventListener("click", function (e) {
    if (e.target.closest("[data-correct]")) { startCorrect(); }
    if (e.target.closest("[data-cancel]")) { cancelCorrect(); }
  });

  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    var help = document.getElementById("help");
    if (typing(e.target)) {
      if (e.key === "Escape") { e.preventDefault(); cancelCorrect(); }
      return; // Enter in the correction input submits the form natively (action=correct is its default button)
    }
    if (!item() || !ready()) return;
    switch (e.key) {
      case "a": e.preventDefault(); click("btn-accept"); break;
      case "c": case "e": e.preventDefault(); startCorrect(); break;
      case "r": e.preventDefault(); click("btn-reject"); break;
      case "j": e.preventDefault(); click("btn-next"); break;
      case "k": e.preventDefault(); click("btn-prev"); break;
      case "?": e.preventDefault(); if (help.open) { help.close(); } else { help.showModal(); } break;
      case "Escape": cancelCorrect(); break;
    }
  });

  // Enter in the correction input must send action=correct, not the first submit button (accept).
  document.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && e.target.name === "value" && e.target.closest("#decide-form")) {
      e.preventDefault();
      click("btn-save");
    }
  }, true);

  // Focus is never lost after a swap: focus the autofocus element of the new item, and show the evidence.
  document.addEventListener("htmx:afterSettle", function (e) {
    var it = item();
    if (!it) return;
    var target = it.querySelector("[autofocus]") || it;
    target.focus({ preventScroll: true });
    var ev = it.querySelector("#evidence");
    if (ev && ev.textContent) ev.scrollIntoView({ block: "center" });
    markReady();
  });
  document.addEventListener("DOMContentLoaded", function () {
    markReady();
    var ev = document.getElementById("evidence");
    if (ev && ev.textContent) ev.scrollIntoView({ block: "center" });
  });
})();
