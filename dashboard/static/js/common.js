// Shared by the pages' scripts: POST with the session's CSRF token, answer as JSON.
"use strict";

window.farmPost = async function farmPost(url, body) {
  const token = document.querySelector('meta[name="csrf-token"]').content;
  const response = await fetch(url, {
    method: "POST",
    body,
    headers: { "X-CSRF-Token": token, Accept: "application/json" },
    credentials: "same-origin",
  });
  let data = {};
  try {
    data = await response.json();
  } catch (_) {
    data = { error: `the server answered ${response.status}` };
  }
  return { ok: response.ok, data };
};
