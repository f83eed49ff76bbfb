// Pylon's dashboard. Reads the admin API every few seconds and draws it; no library. Text from
// the configuration is only ever set as text (never as HTML). The admin token, once asked for,
// lives in this page's memory only: reloading the page forgets it.
'use strict';

const EVERY_MS = 3000;
let token = null;

const $ = (selector) => document.querySelector(selector);

// An element with attributes (`data-*`, `class`, `onclick`...) and children (nodes or text).
function el(tag, attributes = {}, ...children) {
  const node = tag === 'svg' || tag === 'polyline'
    ? document.createElementNS('http://www.w3.org/2000/svg', tag)
    : document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null) continue;
    if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const pill = (text, cls) => el('span', { class: `pill ${cls ?? ''}` }, text);
const cell = (label, ...children) => el('td', { 'data-label': label }, ...children);
const num = (label, text) => el('td', { class: 'num', 'data-label': label }, text);

function problem(text) {
  const box = $('#problem');
  box.hidden = !text;
  box.textContent = text ?? '';
}

async function read(path) {
  const answer = await fetch(path, { cache: 'no-store' });
  if (!answer.ok) throw new Error(`${path} answered ${answer.status}`);
  return answer.json();
}

// A small line chart of `values` (one per slot, oldest first) over the 15-minute window.
function chart(kind, values, slots) {
  const top = Math.max(...values.filter((v) => v !== null), 0) || 1;
  const x0 = slots - values.length;
  const points = values
    .map((v, i) => (v === null ? null : `${x0 + i},${(26 - (v / top) * 24).toFixed(1)}`))
    .filter((p) => p !== null)
    .join(' ');
  const seen = values.filter((v) => v !== null && v > 0).length;
  return el('svg', {
    class: `chart ${kind}`, viewBox: `0 0 ${slots} 28`, preserveAspectRatio: 'none',
    'data-chart': kind, 'data-points': seen, role: 'img',
    'aria-label': `${kind}, highest ${top.toFixed(kind === 'p99' ? 1 : 2)}`,
  }, el('polyline', { points }));
}

function matchRules(route) {
  const rules = [];
  for (const host of route.hosts ?? []) rules.push(pill(`host ${host}`));
  for (const path of route.paths ?? []) rules.push(pill(`path ${path}`));
  if ((route.methods ?? []).length) rules.push(pill(route.methods.join(' ')));
  for (const [name, value] of Object.entries(route.headers ?? {})) rules.push(pill(`${name}: ${value}`));
  if (route.priority) rules.push(pill(`priority ${route.priority}`));
  return rules.length ? rules : [pill('any request')];
}

function sendsTo(route) {
  if (route.upstream) return [pill(`upstream ${route.upstream}`)];
  if (route.split) return route.split.map((b) => pill(`${b.upstream} ${b.weight ?? 1}`));
  if (route.respond) return [pill(`responds ${route.respond.status ?? 200}`)];
  if (route.aggregate) return [pill(`aggregate of ${route.aggregate.parts.length}`)];
  return [];
}

function drawRoutes(config, stats) {
  const body = $('#routes tbody');
  const global = config.server?.global_policies ?? [];
  const step = stats.step_seconds;
  body.replaceChildren(...config.routes.map((route) => {
    const slots = stats.routes[route.name] ?? [];
    const minute = slots.slice(-Math.round(60 / step));
    const requests = minute.reduce((n, s) => n + s.requests, 0);
    const errors = minute.reduce((n, s) => n + s.errors, 0);
    const last = [...minute].reverse().find((s) => s.requests > 0);
    const ms = (v) => (v === null || v === undefined ? '–' : `${v.toFixed(v < 10 ? 1 : 0)} ms`);
    const chain = [
      ...global.map((p) => pill(`${p} (${config.policies[p]?.kind ?? '?'}, global)`, 'muted')),
      ...(route.policies ?? []).map((p) => pill(`${p} (${config.policies[p]?.kind ?? '?'})`)),
    ];
    return el('tr', { 'data-route': route.name },
      cell('Route', el('strong', {}, route.name)),
      cell('Match', matchRules(route)),
      cell('Policies', chain.length ? chain : el('span', { class: 'muted' }, 'none')),
      cell('Sends to', sendsTo(route)),
      num('req/s', (requests / (minute.length * step || 1)).toFixed(1)),
      num('errors', requests ? `${((100 * errors) / requests).toFixed(1)} %` : '–'),
      num('p50', ms(last?.p50_ms)),
      num('p99', ms(last?.p99_ms)),
      cell('last 15 min',
        el('div', { class: 'spark' }, el('span', {}, 'req/s'),
          chart('requests', slots.map((s) => s.requests / step), stats.slots)),
        el('div', { class: 'spark' }, el('span', {}, 'p99'),
          chart('p99', slots.map((s) => s.p99_ms), stats.slots))));
  }));
}

async function change(upstream, target, action) {
  if (!token) {
    token = window.prompt('Admin token (kept in this page only)');
    if (!token) return;
  }
  const path = `/upstreams/${upstream}/targets/${target}/${action}`;
  const answer = await fetch(path, { method: 'POST', headers: { authorization: `Bearer ${token}` } });
  if (answer.status === 401 || answer.status === 403) {
    token = null;
    problem(`The admin token was refused: ${target} was not changed.`);
  } else if (!answer.ok) {
    problem(`${action} ${target}: the API answered ${answer.status}.`);
  } else {
    problem(null);
  }
  await refresh();
}

function drawUpstreams(upstreams) {
  const list = $('#upstreams .list');
  list.replaceChildren(...Object.entries(upstreams).map(([name, pool]) => {
    const rows = pool.targets.map((t) => {
      const state = t.drained ? pill('drained', 'warn') : t.healthy ? pill('healthy', 'ok') : pill('down', 'bad');
      const warming = t.weight < t.configured_weight ? pill('slow start', 'warn') : null;
      const action = t.drained ? 'enable' : 'drain';
      return el('tr', {
        'data-upstream': name, 'data-target': t.target, 'data-healthy': t.healthy,
        'data-drained': t.drained, 'data-breaker': t.breaker, 'data-inflight': t.inflight,
      },
      cell('Target', el('code', {}, t.target), t.address !== t.target ? el('span', { class: 'muted' }, ` ${t.address}`) : null),
      cell('State', state, warming),
      cell('Breaker', pill(t.breaker, t.breaker === 'closed' ? 'ok' : 'bad')),
      num('Weight', `${t.weight} / ${t.configured_weight}`),
      num('In flight', t.inflight),
      cell(null, el('button', {
        type: 'button', 'data-action': action, onclick: () => change(name, t.target, action),
      }, action === 'drain' ? 'Drain' : 'Enable')));
    });
    const found = pool.discovery ? ` (discovered by ${pool.discovery})` : '';
    return el('div', { 'data-pool': name },
      el('h3', {}, name, el('span', { class: 'muted' }, found)),
      el('div', { class: 'scroll' }, el('table', { class: 'stack' },
        el('thead', {}, el('tr', {}, ...['Target', 'State', 'Breaker', 'Weight', 'In flight', ''].map((h) => el('th', {}, h)))),
        el('tbody', {}, rows))));
  }));
}

function drawCaches(stats) {
  const list = $('#caches .list');
  const routes = Object.entries(stats.caches.routes);
  if (!routes.length) {
    list.replaceChildren(el('p', { class: 'muted' }, 'No route has a cache.'));
    return;
  }
  const tiers = Object.entries(stats.caches.tiers)
    .map(([tier, t]) => pill(`${tier}: ${((t.bytes ?? 0) / 1048576).toFixed(1)} MiB, ${t.entries ?? 0} entries`));
  list.replaceChildren(el('p', {}, tiers), ...routes.map(([route, counts]) => {
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    const hits = (counts.hit ?? 0) + (counts.stale ?? 0) + (counts.revalidated ?? 0);
    return el('p', { 'data-cache': route }, el('strong', {}, route),
      ` hit ratio ${total ? ((100 * hits) / total).toFixed(1) : '0.0'} % of ${total}`);
  }));
}

function drawReloads(reloads) {
  const list = $('#reloads .list');
  if (!reloads.reloads.length) {
    list.replaceChildren(el('p', { class: 'muted' }, 'No reload since the start.'));
    return;
  }
  list.replaceChildren(el('table', { class: 'stack' }, el('tbody', {}, reloads.reloads.map((r) => {
    const summary = r.result === 'success' ? describe(r.changes) : r.errors.join('\n');
    return el('tr', { 'data-reload': r.time },
      cell('Time', new Date(r.time).toLocaleString()),
      cell('By', r.trigger),
      cell('Result', pill(r.result, r.result === 'success' ? 'ok' : 'bad')),
      cell('Changes', summary));
  }))));
}

function describe(changes) {
  const parts = [];
  for (const family of ['routes', 'upstreams', 'targets', 'policies', 'consumers']) {
    const c = changes[family];
    const words = [...c.added.map((n) => `+${n}`), ...c.removed.map((n) => `-${n}`),
      ...Object.entries(c.changed).map(([n, keys]) => (keys.length ? `~${n} (${keys.join(', ')})` : `~${n}`))];
    if (words.length) parts.push(`${family} ${words.join(' ')}`);
  }
  if (changes.settings.length) parts.push(`settings ${changes.settings.join(' ')}`);
  return parts.length ? parts.join('; ') : 'no changes';
}

function drawCertificates(stats) {
  const list = $('#certificates .list');
  if (!stats.certificates.length) {
    list.replaceChildren(el('p', { class: 'muted' }, 'No TLS listener.'));
    return;
  }
  const now = Date.now() / 1000;
  list.replaceChildren(el('table', { class: 'stack' }, el('tbody', {}, stats.certificates.map((c) => {
    const days = Math.floor((c.not_after - now) / 86400);
    const cls = days < 0 ? 'bad' : c.not_after - now < c.warn_within_seconds ? 'warn' : 'ok';
    return el('tr', { 'data-certificate': c.name, 'data-state': cls },
      cell('Listener', el('code', {}, c.listener)),
      cell('Name', c.name),
      cell('Expires', new Date(c.not_after * 1000).toISOString().slice(0, 10)),
      cell('Left', pill(days < 0 ? 'expired' : `${days} days`, cls)));
  }))));
}

async function refresh() {
  try {
    const [config, upstreams, stats, reloads] = await Promise.all(
      ['/config', '/upstreams', '/stats', '/reloads'].map(read),
    );
    drawRoutes(config, stats);
    drawUpstreams(upstreams);
    drawCaches(stats);
    drawReloads(reloads);
    drawCertificates(stats);
    $('#updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.loaded = String(Number(document.body.dataset.loaded ?? 0) + 1);
    if (!$('#problem').textContent.startsWith('The admin token')) problem(null);
  } catch (error) {
    problem(`Cannot read the admin API: ${error.message}`);
  }
}

$('#token').addEventListener('click', () => {
  token = window.prompt('Admin token (kept in this page only)') || null;
});
refresh();
setInterval(refresh, EVERY_MS);
