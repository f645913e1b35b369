// The gallery from the keyboard: arrows move between variants, P picks the variant in focus for
// its scene's comic panel, R re-rolls its scene. Every action is also a plain button.
(() => {
  const figures = () => Array.from(document.querySelectorAll("figure[data-render]"));
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const figure = document.activeElement && document.activeElement.closest("figure[data-render]");
    if (!figure) return;
    const all = figures();
    const here = all.indexOf(figure);
    const key = event.key.toLowerCase();
    if (key === "arrowright" || key === "arrowleft") {
      const next = all[here + (key === "arrowright" ? 1 : -1)];
      if (next) next.focus();
    } else if (key === "p" || key === "enter") {
      const form = figure.querySelector("form[data-pick-form]");
      if (form) form.requestSubmit();
    } else if (key === "r") {
      const scene = figure.closest("section[data-scene]").dataset.scene;
      const form = document.querySelector(`form[data-reroll-form="${scene}"]`);
      if (form) form.requestSubmit();
    } else {
      return;
    }
    event.preventDefault();
  });
})();
