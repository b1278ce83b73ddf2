// A model's page looks again every two seconds while the model is loading, until it is ready or failed.
"use strict";

if (document.querySelector("[data-loading]")) {
  window.setTimeout(() => window.location.reload(), 2000);
}
