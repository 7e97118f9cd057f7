// Printing shows the data tables that sit in closed <details> on screen; closing them again afterwards.
(function () {
  var opened = [];
  window.addEventListener("beforeprint", function () {
    opened = [];
    document.querySelectorAll("details.table-alt:not([open])").forEach(function (d) {
      d.setAttribute("open", "");
      opened.push(d);
    });
  });
  window.addEventListener("afterprint", function () {
    opened.forEach(function (d) { d.removeAttribute("open"); });
    opened = [];
  });
})();

// Inside an LMS frame: tell the LMS how tall the page is, so the frame fits it instead of scrolling inside
// ("lti.frameResize", which Canvas and the sandbox LMS honour). Only a height is sent.
(function () {
  if (window.parent === window) return;
  var last = 0, queued = false;
  function send() {
    queued = false;
    var height = Math.ceil(document.documentElement.scrollHeight);
    if (height === last) return;
    last = height;
    window.parent.postMessage({ subject: "lti.frameResize", height: height }, "*");
  }
  function soon() { if (!queued) { queued = true; window.requestAnimationFrame(send); } }
  window.addEventListener("load", soon);
  if (window.ResizeObserver) new ResizeObserver(soon).observe(document.body);
  document.addEventListener("toggle", soon, true);  // <details> opening or closing
})();

// The sandbox LMS: fit its tool frame to the height the tool reports, as Canvas does.
(function () {
  var frame = document.querySelector("iframe.tool-frame");
  if (!frame) return;
  window.addEventListener("message", function (event) {
    var data = event.data;
    if (event.source !== frame.contentWindow || !data || data.subject !== "lti.frameResize") return;
    var height = Number(data.height);
    var borders = frame.offsetHeight - frame.clientHeight;  // the frame's own borders (border-box sizing)
    if (height > 0 && height < 100000) frame.style.height = Math.max(height, 320) + borders + "px";
  });
})();
