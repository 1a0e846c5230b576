// A few DOM helpers: no framework, the views are small.

type Child = Node | string | null | undefined | false;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | boolean | ((e: Event) => void)> = {},
  ...children: (Child | Child[])[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (typeof v === 'function') el.addEventListener(k.replace(/^on/, ''), v);
    else if (v === true) el.setAttribute(k, '');
    else if (v !== false) el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(typeof c === 'string' ? document.createTextNode(c) : c);
  }
  return el;
}

let sayTimer: ReturnType<typeof setTimeout> | undefined;

// A short-lived message in the page's status region (announced by screen readers).
export function say(message: string): void {
  const status = document.getElementById('status');
  if (!status) return;
  status.textContent = message;
  clearTimeout(sayTimer);
  sayTimer = setTimeout(() => (status.textContent = ''), 4000);
}

export function ago(iso: string | undefined, now = Date.now()): string {
  if (!iso) return '';
  return duration((now - Date.parse(iso)) / 1000);
}

export function until(iso: string | undefined, now = Date.now()): string {
  if (!iso) return '—';
  const s = (Date.parse(iso) - now) / 1000;
  return s <= 0 ? 'now' : duration(s);
}

export function duration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

export function pct(part: number, whole: number): string {
  return whole > 0 ? `${Math.round((100 * part) / whole)}%` : '—';
}

// A <table> with a caption, column headers and rows of cells.
export function table(caption: string, headers: string[], rows: (Node | string)[][],
                      label?: string): HTMLTableElement {
  return h('table', label ? { 'aria-label': label } : {},
    h('caption', {}, caption),
    h('thead', {}, h('tr', {}, headers.map((x) => h('th', { scope: 'col' }, x)))),
    h('tbody', {}, rows.map((r) => h('tr', {}, r.map((c) => h('td', {}, c))))));
}

// Asks for confirmation in a modal <dialog>; resolves true when confirmed.
export function confirmDialog(title: string, text: string, action: string): Promise<boolean> {
  return new Promise((resolve) => {
    const dialog = h('dialog', { 'aria-labelledby': 'confirm-title', class: 'confirm' },
      h('h2', { id: 'confirm-title' }, title),
      h('p', {}, text),
      h('div', { class: 'actions' },
        h('button', { type: 'button', onclick: () => done(false) }, 'Cancel'),
        h('button', { type: 'button', class: 'danger', onclick: () => done(true) }, action)));
    function done(ok: boolean) {
      dialog.close();
      dialog.remove();
      resolve(ok);
    }
    dialog.addEventListener('cancel', () => done(false));
    document.body.append(dialog);
    dialog.showModal();
  });
}
