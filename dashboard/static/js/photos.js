// The new-character form: each dropped or chosen photo is checked by the server at once and
// shown with the face it found (a box over the photo) or the reason it cannot be used. Only
// accepted photos stay in the form's file input, so "Create" sends exactly those.
"use strict";

(function () {
  const form = document.querySelector("form[data-photos]");
  if (!form) return;
  const input = form.querySelector("[data-photo-input]");
  const zone = form.querySelector("[data-dropzone]");
  const list = form.querySelector("[data-photo-list]");
  const summary = form.querySelector("[data-photo-summary]");
  const max = Number(form.dataset.max);
  const accepted = new Map(); // card -> File
  const SVG = "http://www.w3.org/2000/svg";

  function syncInput() {
    const transfer = new DataTransfer();
    for (const file of accepted.values()) transfer.items.add(file);
    input.files = transfer.files;
    const rejected = list.querySelectorAll(".photo-card.rejected").length;
    const checking = list.querySelectorAll(".photo-card.checking").length;
    summary.textContent =
      `${accepted.size} photo(s) accepted` +
      (rejected ? `, ${rejected} rejected (not sent)` : "") +
      (checking ? `, ${checking} being checked…` : "");
    summary.className = `preview ${accepted.size && !checking ? "ok" : ""}`;
  }

  function card(file) {
    const figure = document.createElement("figure");
    figure.className = "photo-card checking";
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("preserveAspectRatio", "xMidYMid slice");
    const image = document.createElementNS(SVG, "image");
    image.setAttribute("href", URL.createObjectURL(file));
    svg.append(image);
    const meta = document.createElement("figcaption");
    meta.className = "meta";
    meta.textContent = `${file.name}: checking…`;
    figure.append(svg, meta);
    list.append(figure);
    return { figure, svg, image, meta };
  }

  function removeButton(figure) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "secondary";
    button.textContent = "Remove";
    button.addEventListener("click", () => {
      accepted.delete(figure);
      figure.remove();
      syncInput();
    });
    return button;
  }

  async function check(file) {
    const { figure, svg, image, meta } = card(file);
    syncInput();
    const body = new FormData();
    body.append("photo", file);
    const { ok, data } = await window.farmPost(form.dataset.checkUrl, body);
    figure.classList.remove("checking");
    if (ok && data.ok) {
      const [x0, y0, x1, y1] = data.box;
      svg.setAttribute("viewBox", `0 0 ${data.width} ${data.height}`);
      image.setAttribute("width", data.width);
      image.setAttribute("height", data.height);
      const rect = document.createElementNS(SVG, "rect");
      rect.setAttribute("class", "face");
      for (const [name, value] of [["x", x0], ["y", y0], ["width", x1 - x0], ["height", y1 - y0]]) {
        rect.setAttribute(name, value);
      }
      svg.append(rect);
      meta.textContent = `${file.name}: face found`;
      figure.dataset.state = "accepted";
      accepted.set(figure, file);
    } else {
      figure.classList.add("rejected");
      figure.dataset.state = "rejected";
      meta.textContent = data.reason || data.error || "cannot be used";
    }
    meta.append(document.createElement("br"), removeButton(figure));
    syncInput();
  }

  function take(files) {
    for (const file of files) {
      if (accepted.size + list.querySelectorAll(".checking").length >= max) {
        summary.textContent = `A character takes at most ${max} photos.`;
        summary.className = "preview bad";
        break;
      }
      check(file);
    }
  }

  input.addEventListener("change", () => {
    const chosen = [...input.files];
    syncInput(); // the input holds accepted photos only; new ones join once checked
    take(chosen);
  });
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    take([...e.dataTransfer.files]);
  });
})();
