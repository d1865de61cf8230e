// The copy button of the referrer's page: the link goes to the clipboard, and the page says so.
"use strict";
document.querySelectorAll("button[data-copy]").forEach(function (button) {
  var field = document.getElementById(button.getAttribute("data-copy"));
  var status = document.getElementById("copy-status");
  function done(ok) {
    if (status) status.textContent = ok ? "Link copied" : "Select the link and copy it";
  }
  button.addEventListener("click", function () {
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(field.value).then(function () { done(true); }, function () {
        field.select();
        done(document.execCommand("copy"));
      });
    } else {
      field.select();
      done(document.execCommand("copy"));
    }
  });
});
