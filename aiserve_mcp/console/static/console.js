// The console's behaviour beyond plain forms (which all work without JavaScript).
"use strict";

// A form with data-confirm="..." asks before it is submitted (destroying an instance, revoking a key).
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
  }
});
