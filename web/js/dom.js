// Small DOM helpers. Text always goes in as text nodes (never innerHTML), so
// message bodies and names cannot inject markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === false || v === null || v === undefined) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'value') el.value = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

// Keeps `parent`'s children in the order of `items`, reusing the element of
// each key (so focus and scroll survive updates). `create(item)` makes a new
// element, `update(el, item)` refreshes one.
export function syncList(parent, items, keyOf, create, update) {
  const existing = new Map();
  for (const el of [...parent.children]) existing.set(el.dataset.key, el);
  let prev = null;
  const keep = new Set();
  for (const item of items) {
    const key = String(keyOf(item));
    keep.add(key);
    let el = existing.get(key);
    if (!el) {
      el = create(item);
      el.dataset.key = key;
    }
    update(el, item);
    const want = prev ? prev.nextSibling : parent.firstChild;
    if (want !== el) parent.insertBefore(el, want);
    prev = el;
  }
  for (const [key, el] of existing) if (!keep.has(key)) el.remove();
}

export function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

export function visuallyHidden(text) {
  return h('span', { class: 'sr-only' }, text);
}
