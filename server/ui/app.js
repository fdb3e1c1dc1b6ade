// The Gannet dashboard. Plain JavaScript, no dependencies: it calls the
// broker's admin API (/api/v1/...) with the API key the operator gives,
// kept in sessionStorage (this tab only; never a cookie or a URL), and
// builds every element with textContent, never HTML from data, since
// client ids, topics and payloads come from clients.
//
// Rates: the page asks GET /api/v1/stats every POLL_MS and keeps the
// samples of the last WINDOW_MS in memory; the charts are drawn from them
// as inline SVG. Nothing is kept across reloads.
'use strict';

(() => {
  const KEY_STORE = 'gannet.apikey';
  const POLL_MS = 2000;
  const WINDOW_MS = 5 * 60 * 1000;
  const LIST_EVERY = 3; // the open list is read again every third poll
  const PAGE = 200;
  const VIEWS = ['overview', 'clients', 'subscriptions', 'retained', 'bans'];
  const SVG = 'http://www.w3.org/2000/svg';

  const $ = (id) => document.getElementById(id);
  let key = sessionStorage.getItem(KEY_STORE) || '';
  let running = false;
  let pollTimer = 0;
  let ticks = 0;
  let samples = []; // {t, conns, in, out, stats}
  let cluster = null;

  class AuthError extends Error {}

  // ---- API ----

  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    if (key) headers.Authorization = 'Bearer ' + key;
    const init = { method, headers, cache: 'no-store', credentials: 'omit' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    if (r.status === 401) throw new AuthError(await reason(r));
    if (!r.ok) throw new Error(await reason(r));
    return r.status === 204 ? null : r.json();
  }

  async function reason(r) {
    try {
      const j = await r.json();
      if (j && j.error) return j.error;
    } catch (_) { /* not JSON */ }
    return r.status + ' ' + r.statusText;
  }

  // ---- DOM helpers ----

  function el(tag, props, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === 'text') e.textContent = v;
      else if (k === 'class') e.className = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const k of kids) e.append(k);
    return e;
  }

  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function row(cells) {
    return el('tr', {}, ...cells.map((c) => (c instanceof Node ? el('td', {}, c) : el('td', { text: c == null ? '' : String(c) }))));
  }

  function fill(tbody, rows, empty, cols) {
    tbody.replaceChildren(...(rows.length ? rows : [el('tr', {}, el('td', { colspan: cols, class: 'note', text: empty }))]));
  }

  // fillKeyed is fill for rows with a data-key: a row that has not
  // changed is kept as it is, so that a refresh does not take a button
  // from under the pointer or the keyboard focus.
  function fillKeyed(tbody, rows, empty, cols) {
    const old = new Map();
    for (const r of tbody.rows) if (r.dataset.key) old.set(r.dataset.key, r);
    fill(tbody, rows.map((r) => {
      const o = old.get(r.dataset.key);
      return o && o.textContent === r.textContent ? o : r;
    }), empty, cols);
  }

  function setStatus(msg, error) {
    const s = $('status');
    s.textContent = msg || '';
    s.classList.toggle('error', !!error);
  }

  const num = new Intl.NumberFormat();
  function fmtNum(n) { return num.format(Math.round(n)); }
  function fmtRate(n) { return n < 10 ? n.toFixed(1) : fmtNum(n); }
  function fmtAxis(v) { return Number.isInteger(v) ? fmtNum(v) : v.toFixed(v < 1 ? 2 : 1); }
  function fmtTime(s) {
    if (!s) return '';
    const d = new Date(s);
    const p = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  }
  function fmtUptime(s) {
    const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
    return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : `${m}m ${s % 60}s`;
  }

  function caption(id, n, res, what) {
    let t = `${n} ${what}`;
    if (res.next_cursor) t += ` shown; more match: narrow the search`;
    if (res.unreachable && res.unreachable.length) t += `. No answer from ${res.unreachable.join(', ')}`;
    $(id).textContent = t + '.';
  }

  // ---- confirmation ----

  function confirmAction(message, okLabel) {
    const d = $('confirm');
    $('confirm-msg').textContent = message;
    $('confirm-ok').textContent = okLabel;
    d.returnValue = '';
    return new Promise((resolve) => {
      d.addEventListener('close', () => resolve(d.returnValue === 'ok'), { once: true });
      d.showModal();
      $('confirm-cancel').focus();
    });
  }

  // ---- sign in and out ----

  function showLogin(msg) {
    stop();
    for (const v of VIEWS) $(v).hidden = true;
    $('nav').hidden = true;
    $('signout').hidden = true;
    $('login').hidden = false;
    $('login-error').textContent = msg || '';
    setStatus('');
    $('apikey').focus();
  }

  async function signIn(ev) {
    ev.preventDefault();
    key = $('apikey').value.trim();
    $('login-error').textContent = '';
    try {
      await api('GET', '/api/v1/stats?scope=node');
    } catch (e) {
      key = '';
      $('login-error').textContent = e instanceof AuthError ? 'The broker refused this key: ' + e.message : 'Cannot reach the API: ' + e.message;
      return;
    }
    sessionStorage.setItem(KEY_STORE, key);
    $('apikey').value = '';
    showApp();
  }

  function signOut() {
    key = '';
    sessionStorage.removeItem(KEY_STORE);
    samples = [];
    showLogin('Signed out.');
  }

  function failed(e) {
    if (e instanceof AuthError) {
      key = '';
      sessionStorage.removeItem(KEY_STORE);
      showLogin('The broker asks for a key: ' + e.message);
      return;
    }
    setStatus(e.message, true);
  }

  function showApp() {
    $('login').hidden = true;
    $('nav').hidden = false;
    $('signout').hidden = !key;
    if (!key) setStatus('The broker has no API keys: this page can read but not change anything.');
    else setStatus('');
    running = true;
    route();
    poll();
  }

  function stop() {
    running = false;
    clearTimeout(pollTimer);
  }

  // ---- views ----

  function current() {
    const v = location.hash.slice(1);
    return VIEWS.includes(v) ? v : 'overview';
  }

  function route() {
    if (!running) return;
    const v = current();
    for (const name of VIEWS) $(name).hidden = name !== v;
    for (const a of $('nav').querySelectorAll('a')) {
      if (a.getAttribute('href') === '#' + v) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    load(v);
  }

  function load(v) {
    const loaders = { overview: loadOverview, clients: loadClients, subscriptions: loadSubs, retained: loadRetained, bans: loadBans };
    loaders[v]().catch(failed);
  }

  async function poll() {
    clearTimeout(pollTimer);
    if (!running) return;
    try {
      const st = await api('GET', '/api/v1/stats');
      addSample(st);
      if (current() === 'overview') {
        drawOverview();
        if (ticks % LIST_EVERY === 0) cluster = await api('GET', '/api/v1/cluster');
        drawNodes();
      } else if (ticks % LIST_EVERY === 0 && !busy()) {
        load(current());
      }
      ticks++;
    } catch (e) {
      failed(e);
    }
    if (running) pollTimer = setTimeout(poll, POLL_MS);
  }

  // busy reports whether the operator is at a table's controls, which a
  // refresh would take away from under the keyboard focus.
  function busy() {
    const a = document.activeElement;
    return $('confirm').open || (a && a.closest && a.closest('tbody') !== null);
  }

  // ---- overview ----

  function nodesOf(st) { return [st, ...(st.peers || [])]; }

  function addSample(st) {
    const ns = nodesOf(st);
    const sum = (f) => ns.reduce((a, n) => a + (n[f] || 0), 0);
    const t = Date.now();
    samples.push({ t, conns: sum('connections'), in: sum('messages_in'), out: sum('messages_out'), nodes: ns.length, stats: st });
    while (samples.length && samples[0].t < t - WINDOW_MS) samples.shift();
  }

  // rates are the messages per second between consecutive samples; a
  // counter that went down (a node restarted or left) leaves a gap.
  function rates(field) {
    const out = [];
    for (let i = 1; i < samples.length; i++) {
      const a = samples[i - 1], b = samples[i];
      if (b.nodes !== a.nodes || b[field] < a[field]) continue;
      out.push({ t: b.t, v: ((b[field] - a[field]) * 1000) / (b.t - a.t) });
    }
    return out;
  }

  async function loadOverview() {
    cluster = await api('GET', '/api/v1/cluster');
    drawNodes();
    drawOverview();
  }

  function drawOverview() {
    const last = samples[samples.length - 1];
    if (!last) return;
    const st = last.stats, ns = nodesOf(st);
    const sum = (f) => ns.reduce((a, n) => a + (n[f] || 0), 0);
    const rin = rates('in'), rout = rates('out');
    const lastRate = (r) => (r.length ? r[r.length - 1].v : 0);
    const items = [
      ['Nodes', fmtNum(ns.length) + (st.unreachable && st.unreachable.length ? ` (${st.unreachable.length} silent)` : '')],
      ['Connections', fmtNum(sum('connections'))],
      ['Sessions', fmtNum(sum('sessions'))],
      ['Subscriptions', fmtNum(sum('subscriptions'))],
      ['Retained', fmtNum(st.retained)],
      ['Bans', fmtNum(st.bans)],
      ['Messages in/s', fmtRate(lastRate(rin))],
      ['Messages out/s', fmtRate(lastRate(rout))],
      ['Dropped', fmtNum(sum('messages_dropped'))],
      ['Uptime', fmtUptime(st.uptime_seconds)],
    ];
    $('totals').replaceChildren(...items.map(([k, v]) => el('div', {}, el('dt', { text: k }), el('dd', { text: v }))));
    const conns = samples.map((s) => ({ t: s.t, v: s.conns }));
    chart($('chart-conn'), [{ cls: 'conn', pts: conns }], fmtAxis,
      `${fmtNum(last.conns)} connections now, at most ${fmtNum(Math.max(...conns.map((p) => p.v)))} in the last five minutes.`);
    const peak = (r) => fmtRate(Math.max(0, ...r.map((p) => p.v)));
    chart($('chart-msg'), [{ cls: 'in', pts: rin }, { cls: 'out', pts: rout }], fmtAxis,
      `${fmtRate(lastRate(rin))} messages in and ${fmtRate(lastRate(rout))} out per second now; peaks ${peak(rin)} in and ${peak(rout)} out.`);
  }

  // nice rounds a chart's top up to 1, 2 or 5 times a power of ten.
  function nice(v) {
    if (v <= 0) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  function chart(box, series, fmt, description) {
    const W = Math.max(200, Math.round(box.clientWidth || 600)), H = 160;
    const L = 52, R = 8, T = 8, B = 20;
    const now = samples.length ? samples[samples.length - 1].t : Date.now();
    const t0 = now - WINDOW_MS;
    const top = nice(Math.max(0, ...series.flatMap((s) => s.pts.map((p) => p.v))));
    const x = (t) => L + ((t - t0) / WINDOW_MS) * (W - L - R);
    const y = (v) => T + (1 - v / top) * (H - T - B);
    const kids = [svg('desc', { id: box.id + '-desc' }, description)];
    for (let i = 0; i <= 4; i++) {
      const v = (top * i) / 4;
      kids.push(svg('line', { class: 'grid', x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      kids.push(svg('text', { class: 'axis', x: L - 6, y: y(v) + 4, 'text-anchor': 'end' }, fmt(v)));
    }
    for (let m = 5; m >= 0; m--) {
      kids.push(svg('text', { class: 'axis', x: x(now - m * 60000), y: H - 4, 'text-anchor': m === 5 ? 'start' : m === 0 ? 'end' : 'middle' },
        m === 0 ? 'now' : `-${m} min`));
    }
    for (const s of series) {
      if (s.pts.length < 1) continue;
      const pts = s.pts.filter((p) => p.t >= t0).map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`);
      kids.push(svg('polyline', { class: s.cls, points: pts.join(' ') }));
    }
    box.setAttribute('viewBox', `0 0 ${W} ${H}`);
    box.dataset.samples = String(samples.length);
    box.replaceChildren(...kids);
  }

  function drawNodes() {
    const last = samples[samples.length - 1];
    const byName = new Map();
    if (last) for (const n of nodesOf(last.stats)) byName.set(n.node || '', n);
    let members = cluster && cluster.enabled ? cluster.members : [{ name: '', state: 'alive', self: true }];
    const rows = members.map((m) => {
      const st = byName.get(m.name) || {};
      const state = el('span', { class: 'state-' + m.state, text: m.state });
      return row([
        (m.name || 'this node (no cluster)') + (m.self && m.name ? ' (this node)' : ''),
        state,
        m.interlink || '',
        m.self ? '' : m.lanes_up,
        m.self ? '' : m.queued,
        m.self || m.rtt_ms == null ? '' : m.rtt_ms.toFixed(m.rtt_ms < 10 ? 2 : 1) + ' ms',
        st.connections == null ? '' : fmtNum(st.connections),
        st.messages_in == null ? '' : fmtNum(st.messages_in),
        st.messages_out == null ? '' : fmtNum(st.messages_out),
      ]);
    });
    fill($('nodes-body'), rows, 'No node answered.', 9);
  }

  // ---- clients ----

  async function loadClients() {
    const q = new URLSearchParams({ limit: PAGE });
    const prefix = $('clients-prefix').value;
    if (prefix) q.set('prefix', prefix);
    const res = await api('GET', '/api/v1/clients?' + q);
    const rows = res.clients.map((c) => {
      const b = el('button', { type: 'button', class: 'danger', text: 'Disconnect', 'aria-label': 'Disconnect ' + c.client_id });
      b.addEventListener('click', () => disconnect(c.client_id));
      const r = row([c.client_id, c.username, c.ip, c.node, c.protocol, fmtTime(c.connected_at), b]);
      r.dataset.client = r.dataset.key = c.client_id;
      r.firstChild.className = 'mono';
      return r;
    });
    fillKeyed($('clients-body'), rows, prefix ? 'No connected client id starts with that.' : 'No client is connected.', 7);
    caption('clients-cap', res.clients.length, res, res.clients.length === 1 ? 'client' : 'clients');
  }

  async function disconnect(id) {
    if (!(await confirmAction(`Disconnect client “${id}”? Its session stays, and it may connect again unless banned.`, 'Disconnect'))) return;
    try {
      await api('DELETE', '/api/v1/clients/' + encodeURIComponent(id));
      setStatus(`Disconnected ${id}.`);
      await loadClients();
      $('clients-prefix').focus();
    } catch (e) {
      failed(e);
    }
  }

  // ---- subscriptions ----

  async function loadSubs() {
    const q = new URLSearchParams({ limit: PAGE });
    const id = $('subs-client').value;
    if (id) q.set('client_id', id);
    const res = await api('GET', '/api/v1/subscriptions?' + q);
    const rows = res.subscriptions.map((s) => {
      const r = row([s.client_id, s.filter, s.qos, s.no_local ? 'yes' : 'no', s.retain_as_published ? 'yes' : 'no', s.node]);
      r.children[0].className = 'mono';
      r.children[1].className = 'mono';
      return r;
    });
    fill($('subs-body'), rows, 'No subscription.', 6);
    caption('subs-cap', res.subscriptions.length, res, res.subscriptions.length === 1 ? 'subscription' : 'subscriptions');
  }

  // ---- retained ----

  async function loadRetained() {
    const q = new URLSearchParams({ limit: PAGE });
    const f = $('ret-filter').value.trim();
    if (f) q.set('filter', f);
    const res = await api('GET', '/api/v1/retained?' + q);
    const rows = res.retained.map((m) => {
      let p = m.payload;
      if (m.payload_encoding === 'base64') p = `(${Math.floor((p.length * 3) / 4)} bytes, binary)`;
      else if (p.length > 200) p = p.slice(0, 200) + '…';
      const r = row([m.topic, m.qos, p]);
      r.children[0].className = 'mono';
      r.children[2].className = 'mono';
      return r;
    });
    fill($('ret-body'), rows, 'No retained message.', 3);
    caption('ret-cap', res.retained.length, res, res.retained.length === 1 ? 'message' : 'messages');
  }

  // ---- bans ----

  async function loadBans() {
    const res = await api('GET', '/api/v1/bans');
    const rows = res.bans.map((b) => {
      const what = b.client_id || b.username || b.cidr;
      const lift = el('button', { type: 'button', text: 'Lift', 'aria-label': 'Lift the ban on ' + what });
      lift.addEventListener('click', () => liftBan(b.id, what));
      const r = row([b.client_id, b.username, b.cidr, b.reason, fmtTime(b.created), b.expires ? fmtTime(b.expires) : 'never', lift]);
      r.dataset.key = b.id;
      return r;
    });
    fillKeyed($('bans-body'), rows, 'No ban.', 7);
    $('bans-cap').textContent = `${res.bans.length} ${res.bans.length === 1 ? 'ban' : 'bans'}.`;
  }

  async function addBan(ev) {
    ev.preventDefault();
    const body = { [$('ban-kind').value]: $('ban-value').value.trim() };
    if ($('ban-reason').value.trim()) body.reason = $('ban-reason').value.trim();
    if ($('ban-expires').value.trim()) body.expires_in = $('ban-expires').value.trim();
    try {
      await api('POST', '/api/v1/bans', body);
      setStatus('Banned ' + body[$('ban-kind').value] + '.');
      $('ban-form').reset();
      await loadBans();
    } catch (e) {
      failed(e);
    }
  }

  async function liftBan(id, what) {
    if (!(await confirmAction(`Lift the ban on “${what}”?`, 'Lift'))) return;
    try {
      await api('DELETE', '/api/v1/bans/' + encodeURIComponent(id));
      setStatus(`Lifted the ban on ${what}.`);
      await loadBans();
    } catch (e) {
      failed(e);
    }
  }

  // ---- wiring ----

  function onSearch(form, fn) {
    $(form).addEventListener('submit', (ev) => {
      ev.preventDefault();
      fn().catch(failed);
    });
  }

  document.addEventListener('DOMContentLoaded', async () => {
    $('login-form').addEventListener('submit', signIn);
    $('signout').addEventListener('click', signOut);
    $('ban-form').addEventListener('submit', addBan);
    onSearch('clients-search', loadClients);
    onSearch('subs-search', loadSubs);
    onSearch('ret-search', loadRetained);
    window.addEventListener('hashchange', () => {
      route();
      $('main').focus();
    });
    window.addEventListener('resize', () => { if (running && current() === 'overview') drawOverview(); });
    // Without a stored key, a broker with no API keys answers reads
    // anyway: no sign-in is needed then.
    try {
      await api('GET', '/api/v1/stats?scope=node');
    } catch (e) {
      if (e instanceof AuthError) {
        key = '';
        sessionStorage.removeItem(KEY_STORE);
        showLogin('');
      } else {
        setStatus('Cannot reach the API: ' + e.message, true);
      }
      return;
    }
    showApp();
  });
})();
