// The dashboard's shell: sign-in, navigation and a hash router. Routes name views and sandbox
// ids only; credentials never appear in a URL.

import { credential, signIn, signOut } from './api';
import { h } from './dom';
import { operatorView } from './operator';
import { keysView, sandboxesView, sandboxView, usageView } from './tenant';

let current: AbortController | null = null;

function nav(): void {
  const el = document.getElementById('nav')!;
  const links: [string, string][] = [];
  if (credential('tenant')) {
    links.push(['#/sandboxes', 'Sandboxes'], ['#/usage', 'Usage'], ['#/keys', 'API keys']);
  }
  if (credential('operator')) links.push(['#/operator', 'Fleet']);
  const here = location.hash || '#/';
  el.replaceChildren(...links.map(([href, text]) =>
    h('a', { href, ...(here.startsWith(href) ? { 'aria-current': 'page' } : {}) }, text)));
  if (links.length) {
    el.append(h('button', { type: 'button', class: 'link', onclick: () => {
      signOut();
      location.hash = '#/';
      route();
    } }, 'Sign out'));
  }
}

function signInView(main: HTMLElement): void {
  const key = h('input', { id: 'api-key', name: 'apiKey', type: 'password', autocomplete: 'off',
                           required: true, placeholder: 'isr_local_…' });
  const token = h('input', { id: 'operator-token', name: 'operatorToken', type: 'password',
                             autocomplete: 'off', required: true, placeholder: 'isro_…' });
  const tenantForm = h('form', { 'aria-label': 'Sign in with an API key' },
    h('h2', {}, 'Tenant'), h('label', { for: 'api-key' }, 'API key'), key,
    h('button', { type: 'submit' }, 'Sign in'));
  const operatorForm = h('form', { 'aria-label': 'Sign in as an operator' },
    h('h2', {}, 'Operator'), h('label', { for: 'operator-token' }, 'Operator token'), token,
    h('button', { type: 'submit' }, 'Sign in as operator'));
  tenantForm.addEventListener('submit', (e) => {
    e.preventDefault();
    signIn('tenant', key.value);
    location.hash = '#/sandboxes';
  });
  operatorForm.addEventListener('submit', (e) => {
    e.preventDefault();
    signIn('operator', token.value);
    location.hash = '#/operator';
  });
  main.replaceChildren(h('h1', {}, 'Sign in'),
    h('p', {}, 'Keys stay in this tab only (session storage) and are sent in request headers.'),
    h('div', { class: 'cards' }, tenantForm, operatorForm));
}

function route(): void {
  current?.abort();
  current = new AbortController();
  const signal = current.signal;
  const main = document.getElementById('main')!;
  nav();
  const hash = location.hash || '#/';
  const sandbox = /^#\/sandboxes\/([A-Za-z0-9_-]+)$/.exec(hash);
  if (hash.startsWith('#/operator') && credential('operator')) {
    void operatorView(main, signal);
  } else if (!credential('tenant')) {
    signInView(main);
  } else if (sandbox) {
    void sandboxView(main, sandbox[1], signal);
  } else if (hash === '#/usage') {
    void usageView(main);
  } else if (hash === '#/keys') {
    void keysView(main);
  } else {
    void sandboxesView(main, signal);
  }
}

window.addEventListener('hashchange', route);
route();
