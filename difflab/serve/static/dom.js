// Small DOM helpers shared by the page's modules.

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

/** A new element: props set as properties where the node has them, else as attributes. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child != null) node.append(child);
  }
  return node;
}

/** Briefly highlight a control whose value the page just changed. */
export function flash(input) {
  input.classList.remove("flash");
  void input.offsetWidth; // restart the animation
  input.classList.add("flash");
}
