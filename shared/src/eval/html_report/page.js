// The sample browser: decodes the embedded data (gzipped JSON, base64) and shows one prompt's
// samples per model. Text goes in through textContent only, never as HTML.
(async function () {
  'use strict';
  const app = document.getElementById('app');
  const status = document.getElementById('status');
  let data;
  try {
    const bin = atob(document.getElementById('data').textContent.trim());
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
    data = JSON.parse(await new Response(stream).text());
  } catch (e) {
    status.textContent = 'The embedded samples cannot be read: ' + e;
    return;
  }
  // Row fields (see browser_data.rs).
  const MODEL = 0, PROMPT = 1, K = 2, RESPONSE = 3, BASELINE = 4, P_WIN = 5, EOS = 6,
    CHARS = 7, TOKENS = 8, SCORE = 9, SCORE_BASELINE = 10, P_FORWARD = 11, P_SWAPPED = 12;
  const S = data.strings;
  const byPrompt = data.prompts.map(() => []);
  for (const r of data.rows) byPrompt[r[PROMPT]].push(r);
  const turns = (p) => {
    const t = data.prompts[p][1], out = [];
    for (let i = 0; i < t.length; i += 2) out.push([t[i], S[t[i + 1]]]);
    return out;
  };
  const haystack = data.prompts.map((p, i) =>
    (p[0] + '\n' + turns(i).map((t) => t[1]).join('\n')).toLowerCase());
  const idIndex = new Map(data.prompts.map((p, i) => [p[0], i]));
  const fixed = (x, d) => (x === null || x === undefined ? '–' : x.toFixed(d));

  function el(tag, className, text) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function option(select, value, text) {
    const o = el('option', '', text);
    o.value = value;
    select.appendChild(o);
  }

  const controls = el('div', 'controls');
  const search = el('input');
  search.type = 'search';
  search.id = 'search';
  search.placeholder = 'Search ' + data.prompts.length + ' prompts by id or text';
  const shown = el('select');
  shown.id = 'models';
  option(shown, 'all', 'all models');
  const beside = el('select');
  beside.id = 'beside';
  data.models.forEach((m, i) => { option(shown, String(i), m); option(beside, String(i), m); });
  const count = el('span', 'note');
  const lab = (text, input) => { const l = el('label', '', text + ' '); l.appendChild(input); return l; };
  controls.append(search, lab('show', shown), lab('beside', beside), count);
  const list = el('ul');
  list.id = 'prompt-list';
  const view = el('div');
  view.id = 'prompt-view';
  status.remove();
  app.append(controls, list, view);

  let current = -1;
  const LIST_LIMIT = 200;

  function renderList() {
    const q = search.value.trim().toLowerCase();
    const matches = [];
    for (let i = 0; i < haystack.length; i++) if (!q || haystack[i].includes(q)) matches.push(i);
    list.replaceChildren();
    for (const i of matches.slice(0, LIST_LIMIT)) {
      const li = el('li', i === current ? 'current' : '');
      li.append(el('span', 'pid', data.prompts[i][0]), document.createTextNode(turns(i).map((t) => t[1]).join(' ')));
      li.addEventListener('click', () => select(i));
      list.appendChild(li);
    }
    count.textContent = matches.length + ' of ' + data.prompts.length + ' prompts' +
      (matches.length > LIST_LIMIT ? ' (first ' + LIST_LIMIT + ' listed)' : '');
    return matches;
  }

  function judgeDetails(r, meta) {
    if (r[SCORE] !== null) {
      meta.append(el('span', '', 'score ' + fixed(r[SCORE], 3) + ' vs baseline ' + fixed(r[SCORE_BASELINE], 3)));
    }
    if (r[P_FORWARD] !== null && r[P_SWAPPED] !== null) {
      meta.append(el('span', '', 'P(win) with the response shown first ' + fixed(r[P_FORWARD], 3) +
        ', second ' + fixed(r[P_SWAPPED], 3)));
      if ((r[P_FORWARD] > 0.5) !== (r[P_SWAPPED] > 0.5)) meta.append(el('span', 'badge bias', 'orders disagree'));
    }
  }

  function sampleCard(r) {
    const card = el('div', 'sample');
    const meta = el('div', 'meta');
    const bar = el('span', 'bar');
    const fill = el('span');
    fill.style.width = (100 * r[P_WIN]).toFixed(1) + '%';
    bar.appendChild(fill);
    const win = el('span');
    win.append(document.createTextNode('P(win) '), el('b', '', fixed(r[P_WIN], 3)), document.createTextNode(' '), bar);
    meta.append(el('span', '', 'sample ' + r[K]), win,
      el('span', r[EOS] ? 'badge' : 'badge length', r[EOS] ? 'eos' : 'length limit'),
      el('span', '', r[CHARS] + ' chars · ' + r[TOKENS] + ' tokens'));
    judgeDetails(r, meta);
    card.append(meta, el('div', 'text', S[r[RESPONSE]]));
    if (data.baseline !== 'reference') {
      const d = el('details');
      d.append(el('summary', '', 'baseline sample ' + r[K]), el('div', 'text', S[r[BASELINE]]));
      card.appendChild(d);
    }
    return card;
  }

  function modelBlock(p, m) {
    const rows = byPrompt[p].filter((r) => r[MODEL] === m)
      .sort((a, b) => b[P_WIN] - a[P_WIN] || a[K] - b[K]);
    const block = el('div', 'model');
    const mean = rows.reduce((s, r) => s + r[P_WIN], 0) / Math.max(rows.length, 1);
    const h = el('h4', '', data.models[m]);
    h.appendChild(el('span', 'stat', rows.length + ' samples · mean P(win) ' + (100 * mean).toFixed(1) + ' %'));
    block.appendChild(h);
    for (const r of rows) block.appendChild(sampleCard(r));
    return block;
  }

  function renderPrompt() {
    view.replaceChildren();
    if (current < 0) return;
    const box = el('div', 'prompt');
    box.appendChild(el('div', 'meta', 'prompt ' + data.prompts[current][0]));
    for (const [role, text] of turns(current)) {
      const t = el('div', 'turn');
      t.append(el('span', 'role', role + ':'), document.createTextNode(text));
      box.appendChild(t);
    }
    const first = byPrompt[current][0];
    if (data.baseline === 'reference' && first) {
      const t = el('div', 'turn');
      t.append(el('span', 'role', 'reference answer:'), document.createTextNode(S[first[BASELINE]]));
      box.appendChild(t);
    }
    view.appendChild(box);
    const b = Number(beside.value);
    const left = el('div', 'column');
    left.append(el('h3', '', 'beside'), modelBlock(current, b));
    const right = el('div', 'column');
    right.appendChild(el('h3', '', 'models'));
    data.models.forEach((_, m) => {
      if (m !== b && (shown.value === 'all' || Number(shown.value) === m)) right.appendChild(modelBlock(current, m));
    });
    const cols = el('div', 'columns');
    cols.append(left, right);
    view.appendChild(cols);
  }

  function select(i) {
    current = i;
    const hash = '#prompt=' + encodeURIComponent(data.prompts[i][0]);
    if (location.hash !== hash) history.replaceState(null, '', hash);
    renderList();
    renderPrompt();
  }

  function fromHash() {
    const m = /^#prompt=(.*)$/.exec(location.hash);
    if (!m) return false;
    const id = decodeURIComponent(m[1]);
    if (!idIndex.has(id)) return false;
    search.value = id;
    select(idIndex.get(id));
    return true;
  }

  search.addEventListener('input', () => {
    const matches = renderList();
    const exact = idIndex.get(search.value.trim());
    if (exact !== undefined) select(exact);
    else if (matches.length === 1) select(matches[0]);
  });
  shown.addEventListener('change', renderPrompt);
  beside.addEventListener('change', renderPrompt);
  window.addEventListener('hashchange', fromHash);
  if (!fromHash()) {
    renderList();
    if (data.prompts.length) select(0);
  }
})();
