// bench/sim: the real SchedulerCore driven by simulated hosts, no sockets.
//
// Phase "scale": --hosts (10,000) hosts join, register tasks, report pieces, ask for parents, leave and
// come back. Measures schedule decisions per second, per-decision latency, scheduler heap per host.
// Phase "swarm": --swarm-hosts (1,000) peers fetch one file through a time-stepped bandwidth model
// (one connection per parent -> child pair answering its requests in order; busy connections share the
// parent's uplink and the child's downlink equally); the parents are the ones the scheduler hands out,
// used by packages/peer's own PiecePolicy as PeerTask uses it (see swarm()). Reports T_all and the
// Kumar-Ross bound T_min.
//
// node --expose-gc bench/sim/run.js [--hosts 10000] [--tasks 1] [--pieces 128] [--swarm-hosts 1000]
//   [--file-mib 128] [--piece-kib 1024] [--mbps 100] [--peer-policy peertask|primary] [--seed 1]
// One JSON object on stdout; progress on stderr.
import { parseArgs } from 'node:util'
import { silentLogger } from '@guoce/transfer'

const { values: opt } = parseArgs({
  options: {
    hosts: { type: 'string', default: '10000' },
    tasks: { type: 'string', default: '1' },
    pieces: { type: 'string', default: '128' },
    rounds: { type: 'string', default: '3' },
    'swarm-hosts': { type: 'string', default: '1000' },
    'file-mib': { type: 'string', default: '128' },
    'piece-kib': { type: 'string', default: '1024' },
    mbps: { type: 'string', default: '100' },
    'peer-mbps': { type: 'string' },
    seed: { type: 'string', default: '1' },
    'budget-s': { type: 'string', default: '240' },
    'max-sim-s': { type: 'string', default: '300' },
    'peer-policy': { type: 'string', default: 'peertask' },
    'skip-scale': { type: 'boolean', default: false },
    'skip-swarm': { type: 'boolean', default: false }
  }
})

if (typeof globalThis.gc !== 'function') {
  // heap per host needs a real gc: run again with --expose-gc
  const { spawnSync } = await import('node:child_process')
  const r = spawnSync(process.execPath, ['--expose-gc', ...process.argv.slice(1)], { stdio: 'inherit' })
  process.exit(r.status ?? 1)
}
if (!['peertask', 'primary'].includes(opt['peer-policy'])) {
  process.stderr.write(`--peer-policy: peertask or primary, not ${opt['peer-policy']}\n`)
  process.exit(2)
}
const { SchedulerCore } = await import('@guoce/scheduler')
const { Bitmap, taskIdFrom } = await import('@guoce/content')
// the child's piece choice is packages/peer's own (built by npm run build)
const { PiecePolicy } = await import('../../packages/peer/dist/src/peer-task.js')
const { STARVE_MS } = await import('../../packages/peer/dist/src/constants.js')
const log = (...a) => { process.stderr.write(a.join(' ') + '\n') }

// deterministic PRNG (mulberry32) so runs are comparable
let rs = Number(opt.seed) >>> 0
function rand () {
  rs = (rs + 0x6d2b79f5) >>> 0
  let t = rs
  t = Math.imul(t ^ (t >>> 15), t | 1)
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}
const pick = arr => arr[Math.floor(rand() * arr.length)]

function hostInfo (type, uploadBps, i) {
  return {
    type,
    uploadSlots: 8,
    uploadBps,
    idc: `idc${i % 4}`,
    location: `region${i % 2}|zone${i % 8}|rack${i % 64}`,
    addrs: [],
    hostname: `h${i}`,
    load: 0
  }
}
const digest = n => { const d = new Uint8Array(32); d[0] = n & 0xff; d[1] = (n >> 8) & 0xff; d[31] = 1; return d }
// real task ids: the scheduler refuses a register whose id does not derive from its URL
const taskIds = new Map()
const taskIdOf = t => { let id = taskIds.get(t); if (id == null) taskIds.set(t, id = taskIdFrom({ url: `http://origin/${t}` })); return id }
function percentile (sorted, p) { return sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] }
function heap () { globalThis.gc(); globalThis.gc(); return process.memoryUsage().heapUsed }

// ---------------------------------------------------------------------------------------------
// phase 1: scale
function scale () {
  const H = Number(opt.hosts); const T = Number(opt.tasks); const P = Number(opt.pieces)
  const info = { contentLength: P * 1024 * 1024, pieceLength: 1024 * 1024, pieceCount: P }
  let parentsMsgs = 0
  const sink = m => { if (m.parents != null) parentsMsgs++ }
  const heap0 = heap()
  const core = new SchedulerCore(silentLogger)
  // one seed per 1,000 hosts, as a deployment would have
  const seeds = []
  for (let i = 0; i < Math.max(1, Math.ceil(H / 1000)); i++) seeds.push(core.connectHost(`seed${i}`, hostInfo('seed', 0, i), sink, { designated: true }))
  const hosts = []
  for (let i = 0; i < H; i++) hosts.push(core.connectHost(`host${i}`, hostInfo('normal', 0, i), sink))
  const lat = []
  let decisions = 0
  let busy = 0
  /** a message that may produce parent decisions: time it */
  const timed = (host, msg) => {
    const before = parentsMsgs
    const t0 = process.hrtime.bigint()
    core.handleMessage(host, msg)
    const dt = Number(process.hrtime.bigint() - t0) / 1e6
    busy += dt
    if (parentsMsgs > before) { lat.push(dt); decisions += parentsMsgs - before }
  }
  const untimed = (host, msg) => {
    const t0 = process.hrtime.bigint()
    core.handleMessage(host, msg)
    busy += Number(process.hrtime.bigint() - t0) / 1e6
  }
  const taskOf = i => taskIdOf(i % T)
  const tStart = process.hrtime.bigint()
  // the sources: a seed registers each task and holds a growing prefix of pieces
  for (let t = 0; t < T; t++) {
    const seedHost = seeds[t % seeds.length]
    const taskId = taskIdOf(t)
    untimed(seedHost, { register: { taskId, url: `http://origin/${t}` } })
  }
  // hosts register (each registration is a decision once the task layout is known)
  const order = hosts.map((_, i) => i).sort(() => rand() - 0.5)
  for (let k = 0; k < order.length; k++) {
    const i = order[k]
    timed(hosts[i], { register: { taskId: taskOf(i), url: `http://origin/${i % T}` } })
    if (k === 0 || k === Math.floor(order.length / 10)) {
      // the seeds answer with the layout after the first registrations
      for (let t = 0; t < T; t++) {
        const seedHost = core.tasks.get(taskIdOf(t))?.seeding != null ? core.hosts.get(core.tasks.get(taskIdOf(t)).seeding) : seeds[t % seeds.length]
        if (core.tasks.get(taskIdOf(t))?.info != null) continue
        untimed(seedHost, { register: { taskId: taskIdOf(t), url: `http://origin/${t}` } })
        untimed(seedHost, { sourceInfo: { taskId: taskIdOf(t), info } })
        const numbers = Array.from({ length: P }, (_, n) => n)
        untimed(seedHost, { pieceDone: { taskId: taskIdOf(t), numbers, digests: numbers.map(digest) } })
      }
    }
  }
  core.flushAnnouncements()
  // rounds of progress: every host reports a few pieces, a tenth ask for parents again, 1% leave and rejoin
  const held = new Map()
  const budget = Number(opt['budget-s']) * 1e9
  let truncated = false
  for (let r = 0; r < Number(opt.rounds) && !truncated; r++) {
    for (let k = 0; k < H; k++) {
      if (k % 100 === 0 && Number(process.hrtime.bigint() - tStart) > budget) { truncated = true; break }
      const i = order[(k * 7919) % H]
      const h = hosts[i]
      const got = held.get(i) ?? 0
      const numbers = []
      for (let n = got; n < Math.min(P, got + Math.ceil(P / (Number(opt.rounds) + 1))); n++) numbers.push(n)
      held.set(i, got + numbers.length)
      if (numbers.length > 0) untimed(h, { pieceDone: { taskId: taskOf(i), numbers } })
      if (rand() < 0.1) timed(h, { needParents: { taskId: taskOf(i) } })
      if (rand() < 0.01) {
        timed(h, { leave: { taskId: taskOf(i) } })
        held.delete(i)
        timed(h, { register: { taskId: taskOf(i), url: `http://origin/${i % T}` } })
      }
      if (k % 500 === 0) core.flushAnnouncements()
    }
    core.flushAnnouncements()
  }
  const wall = Number(process.hrtime.bigint() - tStart) / 1e9
  const stats = core.stats()
  const heap1 = heap()
  lat.sort((a, b) => a - b)
  const res = {
    hosts: H,
    tasks: T,
    pieces_per_task: P,
    peers: stats.peers,
    decisions,
    decisions_per_s: Math.round(decisions / (busy / 1000)),
    decisions_per_wall_s: Math.round(decisions / wall),
    p50_decision_ms: +percentile(lat, 0.5).toFixed(3),
    p99_decision_ms: +percentile(lat, 0.99).toFixed(3),
    max_decision_ms: +lat[lat.length - 1].toFixed(3),
    heap_bytes_per_host: Math.round((heap1 - heap0) / H),
    wall_s: +wall.toFixed(2),
    truncated
  }
  // keep core alive until measured
  if (core.hosts.size === 0) log('no hosts?')
  return res
}

// ---------------------------------------------------------------------------------------------
// phase 2: swarm with a bandwidth model. The children choose pieces and parents with packages/peer's
// PiecePolicy, the code PeerTask runs (chain mode: the first parent gets every request, backups only in
// endgame or after STALL_MS without a piece; striped mode, when the parents message names stripes: each
// stripe's parent gets every request for its pieces, a stripe opens to any parent after k x STALL_MS
// without one of its pieces; rarest first; PARENT_INFLIGHT per parent, TOTAL_INFLIGHT in all). A child
// with nothing requestable asks the scheduler again after STARVE_MS. `--peer-policy primary` drops the
// stripe count of the parents message (PeerTask before it followed stripes: one primary per child).
function swarm () {
  const N = Number(opt['swarm-hosts'])
  const F = Number(opt['file-mib']) * 1024 * 1024
  const PL = Number(opt['piece-kib']) * 1024
  const P = Math.ceil(F / PL)
  const Us = Number(opt.mbps) * 1e6 / 8
  const u = Number(opt['peer-mbps'] ?? opt.mbps) * 1e6 / 8
  const d = u
  const followStripes = opt['peer-policy'] === 'peertask'
  const DT = 0.02 // the scheduler's announcement interval
  const STARVE_S = STARVE_MS / 1000
  const pieceLen = n => n === P - 1 ? F - PL * (P - 1) : PL
  const taskId = taskIdFrom({ url: 'http://origin/file' })
  const info = { contentLength: F, pieceLength: PL, pieceCount: P }

  const core = new SchedulerCore(silentLogger)
  /** simulated nodes: index 0 = seed peer, 1..N = peers; origin flows use the origin's uplink */
  const nodes = []
  const byId = new Map()
  let now = 0
  const lat = []
  let decisions = 0
  const makeNode = (id, type, up, down) => {
    const node = {
      id, type, up, down, held: new Bitmap(P), inflight: 0, requested: new Map(), parents: new Map(),
      policy: new PiecePolicy(rand), view: null, done: false, tDone: 0, starveAt: null, fromOrigin: false,
      reported: [], uploaded: 0, host: null, dirty: true, wakeAt: Infinity
    }
    node.view = { pieceCount: P, held: node.held, known: () => true, requested: node.requested, parents: node.parents }
    node.host = core.connectHost(id, hostInfo(type, up, nodes.length), m => deliver(node, m), { designated: type === 'seed' })
    nodes.push(node); byId.set(id, node)
    return node
  }
  const primaryOf = node => {
    let best
    for (const p of node.parents.values()) if (best == null || p.rank < best.rank) best = p
    return best
  }
  /** PeerTask.onParents / the have handler */
  function deliver (node, m) {
    if (m.parents != null) {
      decisions++
      const oldPrimary = primaryOf(node)
      const k = followStripes ? (m.parents.stripeCount ?? 0) : 0
      const keep = new Set()
      let rank = 0
      for (const wp of m.parents.parents) {
        keep.add(wp.peerId)
        let p = node.parents.get(wp.peerId)
        if (p == null) node.parents.set(wp.peerId, p = { id: wp.peerId, bitmap: new Bitmap(P), inflight: new Set(), rank: 0, stripes: 0 })
        p.rank = rank++
        p.stripes = k > 0 ? (wp.stripes ?? 0) : 0
        const b = new Bitmap(P, wp.bitmap != null && wp.bitmap.length > 0 ? wp.bitmap : undefined)
        for (const n of b.present()) p.bitmap.set(n)
      }
      for (const [id, p] of node.parents) {
        if (keep.has(id)) continue
        p.rank = Number.MAX_SAFE_INTEGER; p.stripes = 0
        if (p.inflight.size === 0) node.parents.delete(id)
      }
      node.policy.onParents(node.parents, k, oldPrimary, now * 1000)
      node.dirty = true
    }
    if (m.have != null) {
      const p = node.parents.get(m.have.peerId)
      if (p != null) { for (const n of m.have.numbers) p.bitmap.set(n); node.dirty = true }
    }
    if (m.backToSource != null || m.seed != null) node.fromOrigin = true
  }
  const send = (node, msg) => {
    const before = decisions
    const t0 = process.hrtime.bigint()
    core.handleMessage(node.host, msg)
    const dt = Number(process.hrtime.bigint() - t0) / 1e6
    if (decisions > before) lat.push(dt)
  }

  const seed = makeNode('seed', 'seed', u, d)
  const peers = []
  for (let i = 0; i < N; i++) peers.push(makeNode(`p${i}`, 'normal', u, d))
  // registrations arrive over the first 100 ms
  const arrivals = peers.map(p => ({ p, t: rand() * 0.1 })).sort((a, b) => a.t - b.t)
  let nextArrival = 0
  // one piece connection per parent -> child pair; a parent answers the requests on it in order
  // (packages/transfer piece-protocol), so only the head piece of each connection moves
  const conns = new Map()
  let offStripe = 0
  const enqueue = f => {
    const key = `${f.from?.id ?? 'origin'}>${f.to.id}`
    let c = conns.get(key)
    if (c == null) conns.set(key, c = { from: f.from, to: f.to, queue: [] })
    c.queue.push(f)
  }
  let originBytes = 0
  let seedRegistered = false

  /** the synchronous part of PeerTask.requestFrom */
  function request (node, p, numbers) {
    const k = node.policy.stripes
    for (const n of numbers) {
      p.inflight.add(n); node.inflight++
      let set = node.requested.get(n)
      if (set == null) node.requested.set(n, set = new Set())
      set.add(p.id)
      if (k > 0 && (p.stripes & (1 << (n % k))) === 0) offStripe++
      enqueue({ from: byId.get(p.id), to: node, n, left: pieceLen(n), via: p })
    }
  }
  /** PeerTask.pump */
  function pump (node) {
    node.dirty = false
    const { total, heldBack, wakeAt } = node.policy.plan(node.view, now * 1000, (p, numbers) => request(node, p, numbers))
    // PeerTask's stall timer: look again when a stall limit is reached
    node.wakeAt = heldBack && wakeAt != null ? Math.max(wakeAt / 1000, now + DT / 2) : Infinity
    if (total === 0 && !heldBack) node.starveAt ??= now + STARVE_S
    else node.starveAt = null
  }

  const t0 = process.hrtime.bigint()
  let steps = 0
  let finished = true
  const maxSim = Number(opt['max-sim-s'])
  while (peers.some(p => !p.done)) {
    if (now > maxSim) { finished = false; break }
    // arrivals
    while (nextArrival < arrivals.length && arrivals[nextArrival].t <= now) {
      const p = arrivals[nextArrival++].p
      send(p, { register: { taskId, url: 'http://origin/file' } })
    }
    if (seed.fromOrigin && !seedRegistered) {
      seedRegistered = true
      send(seed, { register: { taskId, url: 'http://origin/file' } })
      send(seed, { sourceInfo: { taskId, info } })
    }
    // new requests
    for (const node of nodes) {
      if (node.done || (node === seed && !seedRegistered)) continue
      if (node.fromOrigin) {
        // back to source: pieces in order from the origin, a few at a time
        for (let n = 0; n < P && node.inflight < 4; n++) {
          if (node.held.has(n) || node.requested.has(n)) continue
          node.requested.set(n, new Set(['origin'])); node.inflight++
          enqueue({ from: null, to: node, n, left: pieceLen(n) })
        }
        continue
      }
      if (node.dirty || node.wakeAt <= now) pump(node)
      if (node.starveAt != null && node.starveAt <= now) {
        node.starveAt = null
        send(node, { needParents: { taskId } })
        pump(node)
      }
    }
    // bandwidth shares: each busy connection gets min(parent uplink / its busy connections,
    // child downlink / its busy connections); a piece finishing early leaves the rest of the step unused
    const ups = new Map(); const downs = new Map()
    for (const [key, c] of conns) {
      if (c.queue.length === 0) { conns.delete(key); continue }
      const k = c.from ?? 'origin'
      ups.set(k, (ups.get(k) ?? 0) + 1)
      downs.set(c.to, (downs.get(c.to) ?? 0) + 1)
    }
    now += DT
    steps++
    const finishedFlows = []
    for (const c of conns.values()) {
      const upRate = (c.from == null ? Us : c.from.up) / ups.get(c.from ?? 'origin')
      const downRate = c.to.down / downs.get(c.to)
      let budget = Math.min(upRate, downRate) * DT
      while (budget > 1e-6 && c.queue.length > 0) {
        const f = c.queue[0]
        const bytes = Math.min(f.left, budget)
        f.left -= bytes; budget -= bytes
        if (c.from == null) originBytes += bytes
        else c.from.uploaded += bytes
        if (f.left > 1e-6) break
        c.queue.shift()
        finishedFlows.push(f)
      }
    }
    for (const f of finishedFlows) {
      const node = f.to
      node.inflight--
      if (f.via != null) {
        f.via.inflight.delete(f.n)
        const set = node.requested.get(f.n)
        set?.delete(f.via.id)
        if (set?.size === 0) node.requested.delete(f.n)
      } else node.requested.delete(f.n)
      node.dirty = true
      if (!node.held.set(f.n)) continue
      node.reported.push(f.n)
      node.policy.onPiece(f.n, now * 1000)
    }
    // reports, then the scheduler's announcement tick
    for (const node of nodes) {
      if (node.reported.length === 0) continue
      const numbers = node.reported.splice(0)
      send(node, { pieceDone: { taskId, numbers, ...(node === seed ? { digests: numbers.map(digest) } : {}) } })
      if (node.held.full && !node.done) {
        node.done = true
        node.tDone = now
        send(node, { result: { taskId, success: true } })
      }
    }
    core.flushAnnouncements()
  }
  const cpu = Number(process.hrtime.bigint() - t0) / 1e9
  const tAll = finished ? Math.max(...peers.map(p => p.tDone)) : null
  const done = peers.filter(p => p.done).map(p => p.tDone).sort((a, b) => a - b)
  const sumU = u * (N + 1)
  const tMin = Math.max(F / Us, F / d, (N + 1) * F / (Us + sumU))
  lat.sort((a, b) => a - b)
  const task = core.tasks.get(taskId)
  return {
    n: N,
    file_bytes: F,
    piece_bytes: PL,
    mbps: Number(opt.mbps),
    peer_policy: opt['peer-policy'],
    structure: task?.forest != null ? `striped trees (${task.forest.stripes} stripes)` : 'chain',
    max_depth: task?.forest != null ? Math.max(...[...task.peers.values()].flatMap(p => Array.from({ length: task.forest.stripes }, (_, s) => task.forest.depth(p, s)))) : null,
    finished,
    peers_done: done.length,
    t_all_s: tAll == null ? null : +tAll.toFixed(2),
    t_min_s: +tMin.toFixed(2),
    ratio: tAll == null ? null : +(tAll / tMin).toFixed(3),
    p50_s: +percentile(done, 0.5).toFixed(2),
    p99_s: +percentile(done, 0.99).toFixed(2),
    origin_bytes_ratio: +(originBytes / F).toFixed(3),
    seed_upload_ratio: +(seed.uploaded / F).toFixed(2),
    back_to_source_peers: peers.filter(p => p.fromOrigin).length,
    // pieces requested from a parent that is not the primary of their stripe (stalls, endgame)
    off_stripe_requests: offStripe,
    decisions,
    p99_decision_ms: +percentile(lat, 0.99).toFixed(3),
    steps,
    sim_cpu_s: +cpu.toFixed(1)
  }
}

const out = { bench: 'sim', node: process.version, scheduling: 'committed' }
if (!opt['skip-scale']) {
  log(`scale: ${opt.hosts} hosts, ${opt.tasks} task(s)`)
  out.scale = scale()
  out.scale.targets = {
    decisions_per_s: out.scale.decisions_per_s >= 5000,
    p99_decision_ms: out.scale.p99_decision_ms <= 5,
    heap_bytes_per_host: out.scale.heap_bytes_per_host <= 4096
  }
  log(JSON.stringify(out.scale))
}
if (!opt['skip-swarm']) {
  log(`swarm: ${opt['swarm-hosts']} peers`)
  out.swarm = swarm()
  log(JSON.stringify(out.swarm))
}
console.log(JSON.stringify(out))
