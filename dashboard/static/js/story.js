// The new-story form: a table editor that writes the scene lines, a hint naming the words every
// prompt needs, and a preview of how many renders and shards the story makes, asked of the
// server (the same validation as the submit) as the form changes.
"use strict";

(function () {
  const form = document.querySelector("form[data-story]");
  if (!form) return;
  const textarea = form.querySelector("[data-scenes]");
  const tableBox = form.querySelector("[data-scene-table]");
  const tbody = tableBox.querySelector("tbody");
  const preview = form.querySelector("[data-preview]");
  const character = form.querySelector("[data-character]");
  const hint = form.querySelector("[data-trigger-hint]");
  const aspect = form.querySelector("[data-aspect]");
  const preset = form.querySelector("[data-preset]");
  const presetNote = form.querySelector("[data-preset-note]");

  // --- scenes as lines <-> as a table ---------------------------------------------------
  // A line's settings (`outfit: coat | shot: wide`, as stories.py's SCENE_SETTING reads them)
  // share the table's last column; the other parts after the prompt are caption and variants.
  const SETTING = /^(outfit|location|shot|control)\s*:/i;
  const PLACEHOLDERS = {
    prompt: "prompt", caption: "caption", variants: "variants",
    settings: "outfit: coat | shot: wide",
  };

  function linesToRows() {
    tbody.replaceChildren();
    for (const line of textarea.value.split("\n")) {
      if (!line.trim()) continue;
      const [prompt, ...parts] = line.split("|").map((part) => part.trim());
      const settings = parts.filter((part) => SETTING.test(part));
      const [caption, variants] = parts.filter((part) => !SETTING.test(part));
      addRow([prompt, caption, variants, settings.join(" | ")]);
    }
    if (!tbody.children.length) addRow([]);
  }

  function rowsToLines() {
    textarea.value = [...tbody.rows]
      .map((row) => [...row.querySelectorAll("input")].map((i) => i.value.trim()))
      .filter(([prompt]) => prompt)
      .map(([prompt, caption, variants, settings]) => {
        const line = [prompt, caption, variants].join(" | ").replace(/( \| )+$/, "");
        return settings ? `${line} | ${settings}` : line;
      })
      .join("\n");
    schedulePreview();
  }

  function addRow([prompt = "", caption = "", variants = "", settings = ""]) {
    const row = tbody.insertRow();
    const cells = [[prompt, "prompt"], [caption, "caption"], [variants, "variants"],
      [settings, "settings"]];
    for (const [value, kind] of cells) {
      const cell = row.insertCell();
      cell.className = kind;
      const field = document.createElement("input");
      field.type = kind === "variants" ? "number" : "text";
      field.value = value;
      field.placeholder = PLACEHOLDERS[kind];
      field.addEventListener("input", rowsToLines);
      cell.append(field);
    }
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "secondary";
    remove.textContent = "×";
    remove.addEventListener("click", () => {
      row.remove();
      rowsToLines();
    });
    const cell = row.insertCell();
    cell.className = "remove";
    cell.append(remove);
  }

  for (const button of form.querySelectorAll("[data-mode]")) {
    button.addEventListener("click", () => {
      const table = button.dataset.mode === "table";
      if (table) linesToRows();
      tableBox.hidden = !table;
      textarea.hidden = table;
      for (const other of form.querySelectorAll("[data-mode]")) {
        other.setAttribute("aria-pressed", String(other === button));
      }
    });
  }
  form.querySelector("[data-add-scene]").addEventListener("click", () => addRow([]));

  // --- hints --------------------------------------------------------------------------
  function showHint() {
    const option = character.selectedOptions[0];
    if (!option) return;
    hint.textContent = `one per line: prompt | caption | variants — each prompt must say ` +
      `“${option.dataset.classWord} ${option.dataset.trigger}”, e.g. ` +
      `a ${option.dataset.classWord} ${option.dataset.trigger} reading in a library | Chapter 1 | 2`;
  }

  function showSize() {
    for (const box of form.querySelectorAll("[data-custom-size]")) {
      box.hidden = aspect.value !== "custom";
    }
  }

  // --- preset: its own size, steps and guidance, and whether a worker serves it -------------
  function choosePreset() {
    const option = preset.selectedOptions[0];
    for (const name of ["width", "height", "steps", "guidance"]) {
      form.querySelector(`#${name}`).value = option.dataset[name];
    }
    aspect.value = "custom";
    showSize();
    showPresetNote();
  }

  function showPresetNote() {
    const note = preset.selectedOptions[0].dataset.note;
    presetNote.textContent = note;
    presetNote.hidden = !note;
  }

  // --- preview ------------------------------------------------------------------------
  function estimate(seconds) {
    if (seconds === null || seconds === undefined) return "";
    const whole = Math.round(seconds);
    const text = whole < 60 ? `${whole} s` : `${Math.floor(whole / 60)} min ${whole % 60} s`;
    return `, about ${text} on the farm now`;
  }

  let timer = null;
  async function showPreview() {
    if (!textarea.value.trim()) {
      preview.textContent = "";
      return;
    }
    const body = new FormData(form);
    body.delete("control_images"); // judged on submit: not sent again at every keystroke
    const { ok, data } = await window.farmPost(form.dataset.previewUrl, body);
    if (ok) {
      preview.textContent = `${data.renders} render(s) in ${data.shards} shard(s), ` +
        `${data.width} × ${data.height}, preset ${data.preset}${estimate(data.estimated_s)}` +
        data.warnings.map((warning) => `; ${warning}`).join("");
      preview.className = data.warnings.length ? "preview warn" : "preview ok";
    } else {
      preview.textContent = data.error;
      preview.className = "preview bad";
    }
  }

  function schedulePreview() {
    clearTimeout(timer);
    timer = setTimeout(showPreview, 400);
  }

  character.addEventListener("change", showHint);
  aspect.addEventListener("change", showSize);
  preset.addEventListener("change", choosePreset);
  form.addEventListener("input", schedulePreview);
  form.addEventListener("change", schedulePreview);
  form.querySelector('[data-action="preview"]').addEventListener("click", showPreview);
  showHint();
  showSize();
})();
