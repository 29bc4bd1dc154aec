// flotilla dashboard: renders the hub's snapshot (status, trust, journal,
// checks, as the API reports them) and follows it over server-sent events.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const DAY = 86400e3;
  // Same threshold as `flotilla check` (expiryWarning in server/check.go).
  const INTERMEDIATE_WARNING = 30 * DAY;
  const NO_CHANGE = new Set(["unchanged", "skipped", "none", "validated", ""]);

  let snap = null;
  // Render records, for the browser test and the benchmark.
  window.flotilla = { renders: [], firstRender: null };

  // ---- DOM helpers ----
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    return fill(e, attrs, kids);
  }
  function sv(tag, attrs, ...kids) {
    const e = document.createElementNS(SVG, tag);
    return fill(e, attrs, kids);
  }
  function fill(e, attrs, kids) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "text") e.textContent = v;
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const k of kids.flat()) {
      if (k === null || k === undefined) continue;
      e.append(k instanceof Node ? k : document.createTextNode(String(k)));
    }
    return e;
  }
  function $(id) { return document.getElementById(id); }
  function replace(id, ...kids) { $(id).replaceChildren(...kids.flat().filter((k) => k)); }

  function fmtTime(t) {
    if (!t) return "—";
    const d = new Date(t);
    if (isNaN(d) || d.getUTCFullYear() < 2) return "—";
    return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }
  function daysLeft(t, now) {
    const ms = new Date(t) - now;
    if (ms < 0) return "expired";
    if (ms < DAY) return Math.max(0, Math.round(ms / 3600e3)) + " h";
    return Math.floor(ms / DAY) + " d";
  }
  function short(s, n) { return s && s.length > n ? s.slice(0, n) + "…" : (s || ""); }
  function ago(t, now) {
    const s = Math.round((now - new Date(t)) / 1000);
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.round(s / 60) + " min ago";
    if (s < 86400) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }
  function table(head, rows, cls) {
    return el("table", { class: cls },
      el("thead", {}, el("tr", {}, head.map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows));
  }

  // ---- the model ----
  // links: every remote secret a cluster holds or should hold.
  function links(status, trust, now) {
    const tokens = {};
    for (const r of (trust && trust.readers) || []) for (const by of r.heldBy || []) tokens[r.cluster + "\u0000" + by] = r;
    const out = [];
    for (const c of status.clusters || []) {
      for (const rs of c.remoteSecrets || []) {
        const l = { from: c.name, to: rs.target, secret: rs.namespace + "/" + rs.name };
        const tok = tokens[rs.target + "\u0000" + c.name];
        if (tok && tok.expiresAt) l.expiresAt = tok.expiresAt;
        if (!rs.expected) { l.health = "stray"; l.detail = "the topology does not ask for it"; }
        else if (!rs.healthy) { l.health = "failing"; l.detail = rs.error || "does not authenticate"; }
        else if (tok && tok.expiresAt && expiringSoon(tok, now)) {
          l.health = "expiring"; l.detail = "authenticates; token expires " + fmtTime(tok.expiresAt);
        } else { l.health = "ok"; l.detail = "authenticates" + (l.expiresAt ? "; token expires " + fmtTime(l.expiresAt) : ""); }
        out.push(l);
      }
      (c.missingTargets || []).forEach((to, i) => {
        out.push({ from: c.name, to: to, health: "failing", secret: (c.missingRemoteSecrets || [])[i], detail: "secret " + ((c.missingRemoteSecrets || [])[i] || "") + " is missing" });
      });
    }
    return out;
  }
  // expiringSoon: in the last fifth of its lifetime, when the hub renews it.
  function expiringSoon(tok, now) {
    const end = new Date(tok.expiresAt), start = new Date(tok.issuedAt);
    return end - now < (end - start) / 5;
  }
  function clusterBad(c) {
    return !c.reachable || (c.drift || []).length > 0;
  }

  // ---- rendering ----
  function render() {
    if (!snap) return;
    const t0 = performance.now();
    const focusKey = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.key : null;
    // Re-rendering replaces the elements: keep what the reader opened.
    const open = new Set([...document.querySelectorAll("details[open] > summary[data-key]")].map((s) => s.dataset.key));
    const now = Date.now();
    const status = snap.status.data, trust = snap.trust.data;
    showError();
    $("mesh-name").textContent = status ? "· mesh " + status.mesh : "";
    renderTopology(status, trust, now);
    renderTrust(status, trust, now);
    renderChecks(now);
    renderHistory(now);
    for (const key of open) {
      const s = document.querySelector('summary[data-key="' + CSS.escape(key) + '"]');
      if (s) s.parentElement.open = true;
    }
    if (focusKey) {
      const again = document.querySelector('[data-key="' + CSS.escape(focusKey) + '"]');
      if (again) again.focus({ preventScroll: true });
    }
    document.body.dataset.version = String(snap.version);
    const rec = { version: snap.version, at: Date.now(), ms: performance.now() - t0 };
    // A benchmark names one link to follow (window.flotilla.watch = {from, to}).
    const w = window.flotilla.watch;
    if (w) {
      const cell = document.querySelector(`td.cell[data-from="${CSS.escape(w.from)}"][data-to="${CSS.escape(w.to)}"]`);
      rec.watched = cell ? cell.dataset.health : "";
    }
    window.flotilla.renders.push(rec);
    if (window.flotilla.renders.length > 200) window.flotilla.renders.shift();
    if (!window.flotilla.firstRender) window.flotilla.firstRender = Object.assign({ sinceNavigation: performance.now() }, rec);
  }

  function showError() {
    const errs = [];
    for (const [name, p] of [["status", snap.status], ["trust", snap.trust], ["journal", snap.journal]]) {
      if (p.error) errs.push(name + ": " + p.error);
    }
    const e = $("fetch-error");
    e.hidden = errs.length === 0;
    e.textContent = errs.join(" · ");
  }

  function renderTopology(status, trust, now) {
    if (!status) { replace("topology-summary", "No status yet."); return; }
    const clusters = (status.clusters || []).slice().sort((a, b) =>
      (a.network || "").localeCompare(b.network || "") || a.name.localeCompare(b.name));
    const ls = links(status, trust, now);
    const count = (h) => ls.filter((l) => l.health === h).length;
    const unreachable = clusters.filter((c) => !c.reachable).length;
    replace("topology-summary",
      `${clusters.length} clusters in ${new Set(clusters.map((c) => c.network)).size} network(s), topology ${status.topology}. `,
      el("span", { class: "ok" }, `${count("ok")} links authenticate`), ", ",
      el("span", { class: "expiring" }, `${count("expiring")} expire soon`), ", ",
      el("span", { class: "failing" }, `${count("failing")} failing`),
      count("stray") ? `, ${count("stray")} not asked for` : "",
      unreachable ? el("span", { class: "failing" }, `; ${unreachable} cluster(s) unreachable`) : "", ".");
    renderGraph(clusters, ls);
    renderNetworks(clusters, trust, ls, now);
    renderMatrix(clusters, ls);
    const bad = ls.filter((l) => l.health !== "ok");
    replace("problem-links", bad.length === 0 ? el("li", {}, "None: every remote secret authenticates.") :
      bad.map((l) => el("li", { class: l.health, "data-from": l.from, "data-to": l.to, "data-health": l.health },
        `${l.from} → ${l.to}: ${l.health} (${l.detail})`)));
  }

  function renderGraph(clusters, ls) {
    const n = clusters.length;
    const R = Math.max(150, n * 19), pad = 150, size = 2 * (R + pad), c = R + pad;
    const pos = {};
    clusters.forEach((cl, i) => {
      const a = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(n, 1);
      pos[cl.name] = { x: c + R * Math.cos(a), y: c + R * Math.sin(a), a: a };
    });
    const svg = sv("svg", { viewBox: `0 0 ${size} ${size}`, role: "group", "aria-labelledby": "graph-title" },
      sv("title", { id: "graph-title" }, `Topology graph: ${n} clusters, ${ls.length} remote secrets`));
    const defs = sv("defs");
    for (const h of ["ok", "expiring", "failing", "stray", "unknown", "serves"]) {
      defs.append(sv("marker", { id: "arrow-" + h, viewBox: "0 0 10 10", refX: 9, refY: 5, markerUnits: "userSpaceOnUse", markerWidth: 11, markerHeight: 11, orient: "auto-start-reverse" },
        sv("path", { d: "M0,0 L10,5 L0,10 z", class: "ah-" + h })));
    }
    svg.append(defs);
    // Network bands: an arc behind each network's clusters.
    const nets = [];
    clusters.forEach((cl, i) => {
      if (!nets.length || nets[nets.length - 1].name !== cl.network) nets.push({ name: cl.network, first: i, last: i });
      else nets[nets.length - 1].last = i;
    });
    const step = (2 * Math.PI) / Math.max(n, 1);
    const hues = ["#0b5cad", "#8250df", "#bf3989", "#1a7f37", "#9a6700", "#0a7480"];
    nets.forEach((nw, k) => {
      const a0 = -Math.PI / 2 + step * (nw.first - 0.4), a1 = -Math.PI / 2 + step * (nw.last + 0.4);
      const rb = R + 34, color = hues[k % hues.length];
      const large = a1 - a0 > Math.PI ? 1 : 0;
      const p0 = [c + rb * Math.cos(a0), c + rb * Math.sin(a0)], p1 = [c + rb * Math.cos(a1), c + rb * Math.sin(a1)];
      const d = n === 1 || nets.length === 1 && nw.last - nw.first + 1 === n
        ? `M${c + rb},${c} A${rb},${rb} 0 1 1 ${c - rb},${c} A${rb},${rb} 0 1 1 ${c + rb},${c}`
        : `M${p0[0]},${p0[1]} A${rb},${rb} 0 ${large} 1 ${p1[0]},${p1[1]}`;
      svg.append(sv("path", { d: d, class: "netband", stroke: color }));
      const am = (a0 + a1) / 2, rl = R + 62;
      svg.append(sv("text", { x: c + rl * Math.cos(am), y: c + rl * Math.sin(am), "text-anchor": Math.cos(am) < -0.2 ? "end" : Math.cos(am) > 0.2 ? "start" : "middle", class: "netlabel", fill: color }, nw.name || "(no network)"));
    });
    const nodeR = 15;
    const linkLayer = sv("g", { class: "links" });
    const order = { ok: 0, stray: 1, unknown: 1, expiring: 2, failing: 3 };
    ls.slice().sort((a, b) => order[a.health] - order[b.health]).forEach((l) => {
      const a = pos[l.from], b = pos[l.to];
      if (!a || !b) return;
      // In a large fleet the healthy links' arrowheads would hide the
      // nodes: direction is in the matrix and on hover.
      const head = l.health === "ok" && n > 12 ? null : `url(#arrow-${l.health})`;
      linkLayer.append(sv("path", {
        d: curve(a, b, c, nodeR, 0.18), class: "link " + l.health, "marker-end": head,
        "data-from": l.from, "data-to": l.to, "data-health": l.health,
      }, sv("title", {}, `${l.from} reads ${l.to}: ${l.detail}`)));
    });
    // What serves what: a control plane's istiod serving another cluster.
    for (const cl of clusters) {
      if (!cl.controlPlane || cl.controlPlane === cl.name || !pos[cl.controlPlane]) continue;
      linkLayer.append(sv("path", {
        d: curve(pos[cl.controlPlane], pos[cl.name], c, nodeR + 4, -0.05), class: "serves", "marker-end": "url(#arrow-serves)",
        "data-from": cl.controlPlane, "data-to": cl.name, "data-serves": "true",
      }, sv("title", {}, `${cl.controlPlane}'s istiod serves ${cl.name} (${cl.role})`)));
    }
    svg.append(linkLayer);
    const roleLetter = { primary: "P", remote: "R", "control-plane": "CP", "data-plane": "DP" };
    for (const cl of clusters) {
      const p = pos[cl.name];
      const out = Math.cos(p.a) < -0.2 ? "end" : Math.cos(p.a) > 0.2 ? "start" : "middle";
      const lx = p.x + 24 * Math.cos(p.a), ly = p.y + 24 * Math.sin(p.a) + 4;
      const label = `${cl.name}, ${cl.role}, network ${cl.network || "none"}` + (cl.reachable ? "" : ", unreachable");
      const g = sv("g", {
        class: `node role-${cl.role}` + (cl.reachable ? "" : " unreachable"), tabindex: 0, role: "img",
        "aria-label": label, "data-cluster": cl.name, "data-key": "node:" + cl.name,
      }, sv("title", {}, label + (cl.gatewayAddress ? `, gateway ${cl.gatewayAddress}` : "")));
      if (cl.role === "control-plane") g.append(sv("circle", { cx: p.x, cy: p.y, r: nodeR + 4, class: "outer" }));
      g.append(sv("circle", { cx: p.x, cy: p.y, r: nodeR }));
      g.append(sv("text", { x: p.x, y: p.y + 4, "text-anchor": "middle", class: "role" }, roleLetter[cl.role] || "?"));
      g.append(sv("text", { x: lx, y: ly, "text-anchor": out }, cl.name));
      const focusOn = () => {
        svg.classList.add("focused");
        svg.querySelectorAll(".link, .serves").forEach((e) => e.classList.toggle("near", e.dataset.from === cl.name || e.dataset.to === cl.name));
      };
      const focusOff = () => svg.classList.remove("focused");
      g.addEventListener("focus", focusOn); g.addEventListener("mouseenter", focusOn);
      g.addEventListener("blur", focusOff); g.addEventListener("mouseleave", focusOff);
      svg.append(g);
    }
    replace("topology-graph", svg);
  }

  // curve from a to b bending by bend (a fraction of the chord) to the
  // right of the direction of travel, so that a→b and b→a do not overlap;
  // trimmed to the node circles.
  function curve(a, b, c, r, bend) {
    const mx = (a.x + b.x) / 2, my = (a.y + b.y) / 2;
    const dx = b.x - a.x, dy = b.y - a.y, len = Math.hypot(dx, dy) || 1;
    // Pull towards the centre, then to the right.
    const qx = mx + (c - mx) * 0.25 - (dy / len) * len * bend;
    const qy = my + (c - my) * 0.25 + (dx / len) * len * bend;
    const s = trim(a, qx, qy, r), e = trim(b, qx, qy, r + 2);
    return `M${s.x.toFixed(1)},${s.y.toFixed(1)} Q${qx.toFixed(1)},${qy.toFixed(1)} ${e.x.toFixed(1)},${e.y.toFixed(1)}`;
  }
  function trim(p, qx, qy, r) {
    const dx = qx - p.x, dy = qy - p.y, len = Math.hypot(dx, dy) || 1;
    return { x: p.x + (dx / len) * r, y: p.y + (dy / len) * r };
  }

  function renderNetworks(clusters, trust, ls, now) {
    const byNet = new Map();
    for (const cl of clusters) {
      if (!byNet.has(cl.network)) byNet.set(cl.network, []);
      byNet.get(cl.network).push(cl);
    }
    const cards = [];
    for (const [net, cls] of byNet) {
      cards.push(el("section", { class: "network", "data-network": net, "aria-label": "network " + net },
        el("h4", {}, "network " + (net || "(none)")),
        el("ul", {}, cls.map((cl) => {
          const out = ls.filter((l) => l.from === cl.name), bad = out.filter((l) => l.health === "failing").length;
          const cp = !cl.controlPlane || cl.controlPlane === cl.name
            ? (cl.role === "control-plane" ? "its own istiod, which serves data-plane clusters" : "its own istiod")
            : `istiod of ${cl.controlPlane}`;
          const inter = cl.intermediateNotAfter ? `${daysLeft(cl.intermediateNotAfter, now)} left` : "—";
          return el("li", { class: "cluster-card" + (clusterBad(cl) || bad ? " bad" : ""), "data-cluster": cl.name, "data-role": cl.role },
            el("span", { class: "name" }, cl.name), " ", el("span", { class: "badge" }, cl.role),
            cl.reachable ? "" : el("span", { class: "badge failing" }, "unreachable"),
            el("dl", {},
              el("dt", {}, "gateway"), el("dd", { class: "mono" }, cl.gatewayAddress || "no address"),
              el("dt", {}, "control plane"), el("dd", {}, cp),
              el("dt", {}, "reads"), el("dd", {}, `${out.length} cluster(s)` + (bad ? `, ${bad} failing` : "")),
              el("dt", {}, "intermediate"), el("dd", {}, inter),
              (cl.drift || []).length ? [el("dt", {}, "drift"), el("dd", { class: "failing" }, (cl.drift || []).join("; "))] : null,
              cl.error ? [el("dt", {}, "error"), el("dd", { class: "failing" }, cl.error)] : null));
        }))));
    }
    replace("networks", cards);
  }

  function renderMatrix(clusters, ls) {
    const by = {};
    for (const l of ls) by[l.from + "\u0000" + l.to] = l;
    const sym = { ok: "✓", expiring: "!", failing: "✗", stray: "?", unknown: "?" };
    const head = el("tr", {}, el("th", { scope: "col" }, el("span", { class: "sr" }, "reader")),
      clusters.map((c) => el("th", { scope: "col", class: "col" }, c.name)));
    const rows = clusters.map((r) => el("tr", {}, el("th", { scope: "row" }, r.name), clusters.map((c) => {
      if (r.name === c.name) return el("td", { class: "self" }, el("span", { class: "sr" }, "itself"));
      const l = by[r.name + "\u0000" + c.name];
      if (!l) return el("td", { class: "cell none" }, el("span", { class: "sr" }, "no link"));
      return el("td", { class: "cell " + l.health, title: `${l.from} reads ${l.to}: ${l.detail}`, "data-from": l.from, "data-to": l.to, "data-health": l.health },
        el("span", { "aria-hidden": "true" }, sym[l.health]), el("span", { class: "sr" }, `${l.from} reads ${l.to}: ${l.health}`));
    })));
    replace("matrix", el("table", { class: "matrix", "aria-labelledby": "h-matrix" }, el("thead", {}, head), el("tbody", {}, rows)));
  }

  function renderTrust(status, trust, now) {
    const ca = trust && trust.ca;
    if (!trust) { replace("roots", el("p", {}, snap.trust.error || "No trust data.")); return; }
    const rot = ca && ca.rootRotation;
    const phases = {
      "trust-both": "every cluster trusts the old and the new root; intermediates are still under the old root. Next: flotilla ca rotate root (the new root signs).",
      "sign-with-new": "the new root signs every intermediate; the old root is still trusted. Next: flotilla ca rotate root (drop the old root).",
    };
    replace("rotation", rot
      ? el("p", { class: "banner warning", id: "rotation-phase", "data-phase": rot }, `Root rotation under way, phase ${rot}: ${phases[rot] || ""}`)
      : el("p", { id: "rotation-phase", "data-phase": "none" }, ca ? "No root rotation under way." : ""));
    const trusting = {};
    for (const c of (status && status.clusters) || []) if (c.rootFingerprint) (trusting[c.rootFingerprint] = trusting[c.rootFingerprint] || []).push(c.name);
    replace("roots", !ca ? el("p", {}, "The hub holds no root (none applied yet, or cert-manager's issuer holds it).") :
      table(["Subject", "SHA-256 fingerprint", "Not after", "Left", "First root in the cacerts of"], (ca.roots || []).map((r) =>
        el("tr", { "data-root": r.sha256Fingerprint },
          // The status names the root the hub signs with.
          el("td", {}, r.subject + (status && r.sha256Fingerprint === status.rootFingerprint ? " (signing)" : "")), el("td", { class: "mono", title: r.sha256Fingerprint }, short(r.sha256Fingerprint, 23)),
          el("td", {}, fmtTime(r.notAfter)), el("td", { class: "num" }, daysLeft(r.notAfter, now)),
          el("td", {}, (trusting[r.sha256Fingerprint] || []).join(", ") || "—")))));
    const stored = (ca && ca.intermediates) || {};
    const rows = ((status && status.clusters) || []).slice().sort((a, b) => a.name.localeCompare(b.name)).map((c) => {
      const s = stored[c.name];
      const notAfter = c.intermediateNotAfter || (s && s.notAfter);
      let state = "ok", word = "valid";
      if (!notAfter) { state = "unknown"; word = c.role === "data-plane" ? "none (served by its control plane)" : "none found"; }
      else if (new Date(notAfter) < now) { state = "expired"; word = "expired"; }
      else if (new Date(notAfter) - now < INTERMEDIATE_WARNING) { state = "warning"; word = "expires soon"; }
      else if (c.intermediateSerial && !c.intermediateChainValid) { state = "expired"; word = "chain invalid"; }
      return el("tr", { class: state, "data-cluster": c.name, "data-expiry": state },
        el("th", { scope: "row" }, c.name), el("td", {}, s ? s.subject : "—"), el("td", {}, s ? s.issuer : "—"),
        el("td", { class: "mono" }, short(c.intermediateSerial || (s && s.serial) || "", 20) || "—"),
        el("td", {}, fmtTime(notAfter)), el("td", { class: "num" }, notAfter ? daysLeft(notAfter, now) : "—"),
        el("td", {}, el("span", { class: "badge " + state }, (state === "ok" ? "✓ " : state === "unknown" ? "" : "⚠ ") + word)));
    });
    replace("intermediates", table(["Cluster", "Subject", "Issuer", "Serial", "Not after (in the cluster)", "Left", "State"], rows));
    const readers = (trust.readers || []).map((r) => {
      let state = "ok", word = "valid";
      if (!r.expiresAt) word = "does not expire";
      else if (new Date(r.expiresAt) < now) { state = "expired"; word = "expired"; }
      else if (expiringSoon(r, now)) { state = "warning"; word = "renewal due"; }
      return el("tr", { class: state, "data-cluster": r.cluster },
        el("td", {}, r.cluster), el("td", {}, (r.heldBy || []).join(", ")), el("td", {}, fmtTime(r.issuedAt)),
        el("td", {}, r.expiresAt ? fmtTime(r.expiresAt) : "never"), el("td", { class: "num" }, r.expiresAt ? daysLeft(r.expiresAt, now) : "—"),
        el("td", {}, el("span", { class: "badge " + state }, word)));
    });
    replace("readers", readers.length ? table(["Reader token of", "Held by (remote secrets in)", "Issued", "Expires", "Left", "State"], readers) : el("p", {}, "No reader credentials handed out yet."));
  }

  function renderChecks(now) {
    const p = snap.checks;
    $("checks-when").textContent = snap.checksAt ? "as of " + fmtTime(snap.checksAt) + " (" + ago(snap.checksAt, now) + ")" : "";
    if (p.error) { replace("checks", el("p", { class: "problem" }, p.error)); return; }
    const checks = (p.data || []).slice().sort((a, b) => (a.ok === b.ok ? 0 : a.ok ? 1 : -1));
    const failed = checks.filter((c) => !c.ok).length;
    replace("checks",
      el("p", { class: failed ? "failing" : "ok", id: "checks-summary" }, `${checks.length - failed} of ${checks.length} checks pass` + (failed ? `; ${failed} fail` : "")),
      table(["Result", "Check", "Cluster", "Message", "How to fix"], checks.map((c) =>
        el("tr", { class: c.ok ? "" : "failing", "data-check": c.name, "data-cluster": c.cluster || "", "data-ok": String(c.ok) },
          el("td", {}, el("span", { class: "badge " + (c.ok ? "ok" : "failing") }, c.ok ? "✓ pass" : "✗ fail")),
          el("td", {}, c.name), el("td", {}, c.cluster || "mesh"), el("td", {}, c.message || ""), el("td", {}, c.hint || "")))));
  }

  function renderHistory(now) {
    const p = snap.journal;
    if (p.error) { replace("journal", el("p", { class: "problem" }, p.error)); return; }
    const entries = p.data || [];
    const changed = (s) => s.result !== "failed" && !NO_CHANGE.has(s.result);
    const repairs = [];
    for (const a of entries) {
      if (a.source !== "reconcile") continue;
      for (const s of a.steps || []) if (changed(s) || s.result === "failed") repairs.push({ a: a, s: s });
    }
    replace("repairs", repairs.length ? table(["When", "Apply", "Cluster", "Step", "Result"], repairs.slice(0, 100).map(({ a, s }) =>
      el("tr", { class: s.result === "failed" ? "failing" : "", "data-apply": a.id, "data-cluster": s.cluster || "", "data-step": s.step, "data-result": s.result },
        el("td", {}, fmtTime(s.end || a.start)), el("td", { class: "num" }, "#" + a.id), el("td", {}, s.cluster || "mesh"),
        el("td", {}, s.step), el("td", {}, s.result + (s.error ? ": " + s.error : ""))))) :
      el("p", {}, "The reconcile loop has repaired nothing in the journal's window."));
    const showAll = $("show-noop").checked;
    const rows = [];
    for (const a of entries) {
      // The hub sends only the steps that changed something or failed, and their total.
      const steps = a.steps || [], total = a.stepCount || steps.length;
      const nChanged = steps.filter(changed).length, nFailed = steps.filter((s) => s.result === "failed").length;
      if (!showAll && nChanged === 0 && nFailed === 0 && a.end) continue;
      const dur = a.end ? ((new Date(a.end) - new Date(a.start)) / 1000).toFixed(1) + " s" : "unfinished";
      const interesting = steps.filter((s) => changed(s) || s.result === "failed");
      rows.push(el("tr", { class: nFailed ? "failing" : "", "data-apply": a.id, "data-source": a.source || "" },
        el("td", { class: "num" }, "#" + a.id), el("td", {}, fmtTime(a.start)), el("td", { class: "num" }, dur),
        el("td", {}, a.source || "—"), el("td", { class: "mono", title: a.specHash }, short(a.specHash, 12)),
        el("td", {}, a.result || "running"),
        el("td", {}, interesting.length === 0 ? `${total} steps, no change` :
          el("details", {}, el("summary", { "data-key": "apply:" + a.id }, `${nChanged} changed, ${nFailed} failed, of ${total} steps`),
            el("ul", {}, interesting.map((s) => el("li", { class: s.result === "failed" ? "failing" : "" },
              `${s.cluster || "mesh"}: ${s.step}: ${s.result}` + (s.error ? ": " + s.error : ""))))))));
    }
    replace("journal", rows.length ? table(["Apply", "Started", "Took", "By", "Spec", "Result", "Changes"], rows) :
      el("p", {}, entries.length ? "No apply changed anything (tick the box to see them all)." : "The journal is empty."));
  }

  // ---- views and keyboard ----
  function showView() {
    const name = (location.hash || "#topology").slice(1);
    const known = ["topology", "trust", "checks", "history"].includes(name) ? name : "topology";
    document.querySelectorAll("main > section[data-view]").forEach((s) => { s.hidden = s.dataset.view !== known; });
    document.querySelectorAll("nav a").forEach((a) => {
      if (a.getAttribute("href") === "#" + known) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
    });
    document.body.dataset.view = known;
  }

  // ---- live updates ----
  // Re-render only when what the hub reports changed (not its timestamps),
  // or once a minute for the relative times: a steady page keeps its focus
  // and costs nothing.
  let lastKey = "", lastRender = 0;
  function accept(s) {
    if (snap && s.version < snap.version) return;
    snap = s;
    const st = s.status.data ? Object.assign({}, s.status.data, { observedAt: null }) : s.status.error;
    const key = JSON.stringify([st, s.trust, s.journal, s.checks, s.checksAt]);
    if (key !== lastKey || Date.now() - lastRender > 60e3) {
      lastKey = key;
      lastRender = Date.now();
      render();
    }
    live();
  }
  let connected = false;
  function live() {
    const e = $("live");
    if (!snap) return;
    e.textContent = (connected ? "live" : "reconnecting…") + " · updated " + fmtTime(snap.fetchedAt) + " · every " + snap.refreshSeconds + " s";
    e.classList.toggle("stale", !connected);
  }
  function signedOut() {
    $("live").textContent = "signed out";
    const p = $("fetch-error");
    p.hidden = false;
    p.replaceChildren("The session has ended: ", el("a", { href: "/" }, "sign in again"), ".");
  }
  function follow() {
    const es = new EventSource("/ui/api/events");
    es.addEventListener("snapshot", (ev) => { connected = true; accept(JSON.parse(ev.data)); });
    es.addEventListener("open", () => { connected = true; live(); });
    es.addEventListener("error", () => {
      connected = false;
      live();
      if (es.readyState === EventSource.CLOSED) {
        // Refused (signed out?) or the hub went away: ask once, then retry.
        fetch("/ui/api/snapshot", { credentials: "same-origin" }).then((r) => {
          if (r.status === 401) { signedOut(); return; }
          setTimeout(follow, 5000);
        }, () => setTimeout(follow, 5000));
      }
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    showView();
    window.addEventListener("hashchange", () => { showView(); $("main").focus({ preventScroll: true }); });
    $("show-noop").addEventListener("change", () => render());
    $("rerun").addEventListener("click", () => {
      const b = $("rerun");
      b.disabled = true;
      $("checks-when").textContent = "running checks…";
      fetch("/ui/api/check", { method: "POST", credentials: "same-origin" })
        .then((r) => { if (r.status === 401) { signedOut(); return null; } return r.json(); })
        .then((s) => { if (s) accept(s); })
        .catch((e) => { $("checks-when").textContent = "checks failed: " + e; })
        .finally(() => { b.disabled = false; });
    });
    follow();
  });
})();
