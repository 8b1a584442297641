#!/usr/bin/env node
/**
 * bench/fanout: swarm completion time against the Kumar–Ross lower bound, with real processes in
 * network namespaces this benchmark creates and removes (see README.md).
 *
 *   node bench/fanout/run.js [--n 4,8,16] [--size 128MiB] [--rate 100] [--up MBIT] [--down MBIT]
 *                            [--origin-rate MBIT] [--seed-rate MBIT] [--burst 64kb] [--no-direct]
 *                            [--timeout 300] [--logs DIR] [--no-bittorrent] [--no-loaded] [--json]
 *
 * Topology: a bridge in a namespace of its own; one namespace per host (origin, scheduler, seed, peers),
 * each joined to the bridge by a veth pair. `tc tbf` shapes each host's uplink on its own veth end and
 * its downlink on the bridge-side end. The scheduler is not shaped (control traffic only).
 * Ownership: `procs` holds every process started, `namespaces` every namespace made; `cleanup()` kills
 * and deletes all of them, from `finally`, on SIGINT/SIGTERM and on exit.
 */
import { spawn, execFileSync } from 'node:child_process'
import { createInterface } from 'node:readline'
import { mkdtemp, rm, mkdir, writeFile, readFile } from 'node:fs/promises'
import { rmSync, readFileSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

const here = dirname(fileURLToPath(import.meta.url))
const ROOT = join(here, '..', '..')
const CLI = join(ROOT, 'packages', 'cli', 'dist', 'src', 'bin.js')
const NODE = process.execPath

const { values: v } = parseArgs({
  options: {
    n: { type: 'string', default: '4,8,16' },
    size: { type: 'string', default: '128MiB' },
    rate: { type: 'string', default: '100' },
    up: { type: 'string' },
    down: { type: 'string' },
    'origin-rate': { type: 'string' },
    'seed-rate': { type: 'string' },
    burst: { type: 'string', default: '64kb' },
    'no-direct': { type: 'boolean', default: false },
    'no-floor': { type: 'boolean', default: false },
    'no-swarm': { type: 'boolean', default: false },
    'no-bittorrent': { type: 'boolean', default: false },
    'no-loaded': { type: 'boolean', default: false },
    timeout: { type: 'string', default: '300' },
    logs: { type: 'string' },
    trace: { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
    'piece-channel': { type: 'string', default: 'secure' },
    help: { type: 'boolean', short: 'h' }
  }
})
if (v.help) {
  process.stdout.write(readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').slice(2, 8).map(l => l.replace(/^ \* ?/, '')).join('\n') + '\n')
  process.exit(0)
}

function bytesOf (s) {
  const m = /^(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|K|M|G)?$/i.exec(s)
  if (m == null) throw new Error(`bad size ${s}`)
  const mult = { b: 1, kib: 1024, k: 1024, mib: 1024 ** 2, m: 1024 ** 2, gib: 1024 ** 3, g: 1024 ** 3 }[(m[2] ?? 'b').toLowerCase()]
  return Math.round(Number(m[1]) * mult)
}
const NS_LIST = v.n.split(',').map(Number)
const F = bytesOf(v.size)
const RATE = Number(v.rate) // Mbit/s
const UP = Number(v.up ?? RATE)
const DOWN = Number(v.down ?? RATE)
const ORIGIN_RATE = Number(v['origin-rate'] ?? RATE)
const SEED_RATE = Number(v['seed-rate'] ?? RATE)
const TIMEOUT_MS = Number(v.timeout) * 1000
const MAXN = Math.max(...NS_LIST)
const bps = mbit => mbit * 1e6 / 8

const log = (...a) => { process.stderr.write(`[fanout] ${a.join(' ')}\n`) }

// ---- resources, and their removal ----
const PREFIX = `gcf${process.pid}`
const namespaces = []
const procs = new Set()
let work
let cleaned = false

function sh (cmd, args, opts = {}) {
  return execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts }).toString()
}
function ipns (ns, ...args) { return sh('ip', ['-n', ns, ...args]) }

function cleanupSync () {
  if (cleaned) return
  cleaned = true
  for (const p of procs) { try { p.kill('SIGKILL') } catch {} }
  for (const ns of namespaces.reverse()) { try { sh('ip', ['netns', 'del', ns]) } catch {} }
  if (work != null) { try { rmSync(work, { recursive: true, force: true }) } catch {} }
}
process.on('exit', cleanupSync)
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, () => { log(`${sig}: cleaning up`); cleanupSync(); process.exit(130) })

/** Namespaces left by an earlier run of this benchmark that was SIGKILLed (its pid is gone). */
function sweepStale () {
  let list = ''
  try { list = sh('ip', ['netns', 'list']) } catch { return }
  for (const line of list.split('\n')) {
    const m = /^(gcf(\d+)-\S+)/.exec(line)
    if (m == null) continue
    if (existsSync(`/proc/${m[2]}`)) continue
    try { sh('ip', ['netns', 'del', m[1]]); log(`removed stale namespace ${m[1]}`) } catch {}
  }
}

// ---- topology ----
const SUBNET = '10.213.0'
const BR = `${PREFIX}-br`
const hosts = {}

function addNs (name) {
  sh('ip', ['netns', 'add', name])
  namespaces.push(name)
  ipns(name, 'link', 'set', 'lo', 'up')
}

function shape (ns, dev, mbit) {
  ipns(ns, 'link', 'set', dev, 'txqueuelen', '1000')
  sh('ip', ['netns', 'exec', ns, 'tc', 'qdisc', 'replace', 'dev', dev, 'root', 'tbf', 'rate', `${mbit}mbit`, 'burst', v.burst, 'latency', '50ms'])
}

/** A host: its own namespace, a veth to the bridge, `up` Mbit/s out and `down` Mbit/s in (0 = unshaped). */
function addHost (role, octet, up, down) {
  const ns = `${PREFIX}-${role}`
  addNs(ns)
  const brEnd = `v${octet}`
  sh('ip', ['link', 'add', 'eth0', 'netns', ns, 'type', 'veth', 'peer', 'name', brEnd, 'netns', BR])
  ipns(BR, 'link', 'set', brEnd, 'master', 'br0')
  ipns(BR, 'link', 'set', brEnd, 'up')
  ipns(ns, 'addr', 'add', `${SUBNET}.${octet}/24`, 'dev', 'eth0')
  ipns(ns, 'link', 'set', 'eth0', 'up')
  if (up > 0) shape(ns, 'eth0', up)
  if (down > 0) shape(BR, brEnd, down)
  hosts[role] = { ns, ip: `${SUBNET}.${octet}` }
  return hosts[role]
}

function buildTopology () {
  addNs(BR)
  ipns(BR, 'link', 'add', 'br0', 'type', 'bridge')
  ipns(BR, 'link', 'set', 'br0', 'up')
  addHost('origin', 2, ORIGIN_RATE, ORIGIN_RATE)
  addHost('sched', 3, 0, 0)
  addHost('seed', 4, SEED_RATE, SEED_RATE)
  for (let i = 0; i < MAXN; i++) addHost(`p${i}`, 10 + i, UP, DOWN)
}

// ---- processes ----
/** Spawn ARGS inside namespace NS; stderr goes to a log file. */
function spawnIn (ns, args, logName, opts = {}) {
  const child = spawn('ip', ['netns', 'exec', ns, ...args], { stdio: [opts.stdin ?? 'ignore', 'pipe', 'pipe'], cwd: opts.cwd, env: { ...process.env, GUOCE_LOG: process.env.GUOCE_LOG ?? 'warn' } })
  procs.add(child)
  const err = []
  createInterface({ input: child.stderr }).on('line', l => { err.push(l) })
  const exited = new Promise(resolve => child.once('exit', (code, signal) => { procs.delete(child); resolve({ code, signal }) }))
  // stdout lines are queued until someone asks, so none is lost between spawn and the first await
  const queue = []
  const waiters = []
  const rl = createInterface({ input: child.stdout }).on('line', l => { const w = waiters.shift(); if (w != null) w(l); else queue.push(l) })
  const closed = new Promise(resolve => rl.once('close', resolve))
  const nextLine = () => queue.length > 0 ? Promise.resolve(queue.shift()) : new Promise(resolve => waiters.push(resolve))
  /** every line not yet taken, once stdout has closed */
  const rest = async () => { await closed; return queue.splice(0) }
  return { child, err, exited, nextLine, rest, logName }
}

/** The first stdout line of a service, parsed (its `ready` event). */
async function ready (p, what, ms = 120_000) {
  return await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${what} not ready in ${ms} ms:\n${p.err.slice(-20).join('\n')}`)), ms)
    void p.nextLine().then(l => { clearTimeout(t); try { resolve(JSON.parse(l)) } catch (e) { reject(e) } })
    void p.exited.then(({ code }) => { clearTimeout(t); reject(new Error(`${what} exited (${code}):\n${p.err.slice(-20).join('\n')}`)) })
  })
}

async function stop (p) {
  if (p.child.exitCode != null || p.child.signalCode != null) return
  p.child.kill('SIGTERM')
  const t = setTimeout(() => { try { p.child.kill('SIGKILL') } catch {} }, 3_000)
  await p.exited
  clearTimeout(t)
}

async function saveLogs (dir, list) {
  if (v.logs == null) return
  await mkdir(dir, { recursive: true })
  for (const p of list) await writeFile(join(dir, `${p.logName}.log`), p.err.join('\n') + '\n')
}

// ---- CPU accounting (whole machine; other users of the machine count too) ----
function cpuTimes () {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number)
  const idle = f[3] + f[4]
  return { idle, irq: f[5] + f[6], steal: f[7] ?? 0, total: f.reduce((a, b) => a + b, 0) }
}
/** fractions of the machine's CPU time since `a`: busy, in hard+soft interrupts (veth, bridge, tbf), stolen */
function busySince (a) {
  const b = cpuTimes()
  const dt = Math.max(1, b.total - a.total)
  return { busy: 1 - (b.idle - a.idle) / dt, irq: (b.irq - a.irq) / dt, steal: (b.steal - a.steal) / dt }
}

/** CPU seconds (user + system) of a live process, from /proc; undefined once it is gone */
const TICK = 100
function procCpu (pid) {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const rest = f.slice(f.lastIndexOf(')') + 2).split(' ')
    return (Number(rest[11]) + Number(rest[12])) / TICK
  } catch { return undefined }
}
/** Samples the CPU time of `list` every 200 ms; `stop()` returns the sum of the last values seen. */
function cpuMeter (list) {
  const last = new Map()
  const sample = () => { for (const p of list) { const c = procCpu(p.child.pid); if (c != null) last.set(p, c) } }
  const base = new Map(list.map(p => [p, procCpu(p.child.pid) ?? 0]))
  const t = setInterval(sample, 200)
  return {
    stop: () => {
      sample(); clearInterval(t)
      let sum = 0
      for (const p of list) sum += (last.get(p) ?? 0) - (base.get(p) ?? 0)
      return sum
    },
    /** CPU seconds per process, by log name */
    each: () => Object.fromEntries(list.map(p => [p.logName, Math.round(((last.get(p) ?? 0) - (base.get(p) ?? 0)) * 100) / 100])),
    /** CPU seconds of one process of `list` */
    of: (p) => (last.get(p) ?? 0) - (base.get(p) ?? 0)
  }
}

function quantile (xs, q) {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]
}

// ---- one N ----
let origin
let originUrl
let digest

async function originSent () {
  const line = origin.nextLine()
  origin.child.stdin.write('stats\n')
  return JSON.parse(await line).sent
}

async function swarmRun (n, tag = '') {
  const dir = join(work, `n${n}${tag}`)
  await mkdir(dir, { recursive: true })
  const started = []
  try {
    const sched = spawnIn(hosts.sched.ns, [NODE, CLI, 'scheduler', '--listen', `/ip4/${hosts.sched.ip}/tcp/65003`, '--data', join(dir, 'scheduler'), '--json'], 'scheduler')
    started.push(sched)
    const schedReady = await ready(sched, 'scheduler')
    const schedAddr = schedReady.addr
    // a closed cluster, as users run it: every node holds the cluster key, the seed the seed key
    const member = ['--cluster-key', schedReady.clusterKey]
    const seed = spawnIn(hosts.seed.ns, [NODE, CLI, 'seed', '--scheduler', schedAddr, '--listen', `/ip4/${hosts.seed.ip}/tcp/0`, '--data', join(dir, 'seed'), '--piece-channel', v['piece-channel'], ...member, '--seed-key', schedReady.seedKey, '--json'], 'seed')
    started.push(seed)
    const daemons = []
    for (let i = 0; i < n; i++) {
      const d = spawnIn(hosts[`p${i}`].ns, [NODE, CLI, 'daemon', '--scheduler', schedAddr, '--listen', `/ip4/${hosts[`p${i}`].ip}/tcp/0`, '--api', '127.0.0.1:65001', '--data', join(dir, `daemon-${i}`), '--piece-channel', v['piece-channel'], ...member, '--json'], `daemon-${i}`)
      started.push(d)
      daemons.push(d)
    }
    await ready(seed, 'seed')
    await Promise.all(daemons.map((d, i) => ready(d, `daemon ${i}`)))
    await new Promise(resolve => setTimeout(resolve, 500)) // every host has said hello to the scheduler
    const name = `swarm-${n}${tag}.bin`
    const url = `${originUrl}/${name}`
    const cpu0 = cpuTimes()
    const t0 = performance.now()
    const gets = []
    for (let i = 0; i < n; i++) {
      const g = spawnIn(hosts[`p${i}`].ns, [NODE, CLI, 'get', url, '-O', join(dir, `out-${i}`), '--daemon', 'http://127.0.0.1:65001', '--digest', digest, '--json'], `get-${i}`)
      started.push(g)
      gets.push(g)
    }
    log(`N=${n}: gets started at ${new Date().toISOString()}`)
    const meterServices = cpuMeter([sched, seed, ...daemons, origin])
    // --trace: pieces held by each peer every second (costs CPU itself: diagnosis only)
    let tracing = v.trace
    const trace = async () => {
      const { taskIdOf } = await import('@guoce/content')
      const id = taskIdOf({ url, digest })
      while (tracing) {
        await new Promise(resolve => setTimeout(resolve, 1000))
        const counts = await Promise.all(daemons.map((_d, i) => new Promise(resolve => {
          const c = spawn('ip', ['netns', 'exec', hosts[`p${i}`].ns, 'curl', '-s', `http://127.0.0.1:65001/api/v1/tasks/${id}`], { stdio: ['ignore', 'pipe', 'ignore'] })
          let out = ''
          c.stdout.on('data', d => { out += d })
          c.on('exit', () => { try { resolve(JSON.parse(out).piecesDone) } catch { resolve('-') } })
        })))
        log(`t=${((performance.now() - t0) / 1000).toFixed(1)} pieces ${counts.join(' ')}`)
      }
    }
    const tracer = trace()
    const meterGets = cpuMeter(gets)
    const timer = setTimeout(() => { log(`N=${n}: timeout after ${TIMEOUT_MS} ms; killing`); for (const g of gets) g.child.kill('SIGKILL') }, TIMEOUT_MS)
    const done = await Promise.all(gets.map(async (g, i) => {
      const r = await g.exited
      const out = await g.rest()
      const s = (performance.now() - t0) / 1000
      if (r.code !== 0) throw new Error(`get on peer ${i} failed (${r.code ?? r.signal}):\n${g.err.slice(-10).join('\n')}`)
      return { s, summary: JSON.parse(out.at(-1) ?? '{}') }
    }))
    clearTimeout(timer)
    tracing = false
    await tracer
    const cpu = busySince(cpu0)
    const cpuServices = meterServices.stop()
    log(`N=${n}${tag}: cpu-s by process ${JSON.stringify(meterServices.each())}`)
    const daemonCpu = daemons.map(d => meterServices.of(d))
    const cpuGets = meterGets.stop()
    const times = done.map(d => d.s)
    const sent = await originSent()
    await saveLogs(join(v.logs ?? '', `n${n}${tag}`), started)
    const fromSource = done.reduce((a, d) => a + (d.summary.piecesFromSource ?? 0), 0)
    return { t_all_s: Math.max(...times), p50_s: quantile(times, 0.5), p99_s: quantile(times, 0.99), origin_bytes: sent[name] ?? 0, cpu_busy: cpu.busy, cpu_irq: cpu.irq, cpu_steal: cpu.steal, cpu_services_s: cpuServices, cpu_gets_s: cpuGets, peer_pieces_from_source: fromSource, daemon_cpu_s: daemonCpu.reduce((a, b) => a + b, 0) / n, daemon_cpu_max_s: Math.max(...daemonCpu), seed_cpu_s: meterServices.of(seed), scheduler_cpu_s: meterServices.of(sched) }
  } finally {
    await Promise.all(started.map(stop))
    await rm(dir, { recursive: true, force: true })
  }
}

async function directRun (n) {
  const name = `direct-${n}.bin`
  const t0 = performance.now()
  const runs = []
  for (let i = 0; i < n; i++) {
    const c = spawnIn(hosts[`p${i}`].ns, ['curl', '-sS', '--fail', '-o', '/dev/null', '-w', '%{size_download}', `${originUrl}/${name}`], `curl-${i}`)
    runs.push(c)
  }
  const sizes = await Promise.all(runs.map(async (c, i) => {
    const r = await c.exited
    const out = (await c.rest()).join('')
    if (r.code !== 0) throw new Error(`direct download on peer ${i} failed: ${c.err.join(' ')}`)
    return Number(out)
  }))
  const s = (performance.now() - t0) / 1000
  if (sizes.some(x => x !== F)) throw new Error(`direct download sizes ${sizes.join(',')} != ${F}`)
  return s
}

/**
 * The floor on this machine: the cheapest chain a Node process can run (relay.js: origin -> seed -> p0 ->
 * ... -> p{n-1}, every chunk hashed, written and forwarded as it arrives), same namespaces and shaping.
 * What it costs above T_min is what the machine (2 vCPUs moving N·F through veth, bridge and tbf, plus
 * one JS process per host) costs before any scheduling or piece protocol.
 */
async function floorRun (n) {
  const name = `floor-${n}.bin`
  const dir = join(work, `floor${n}`)
  await mkdir(dir, { recursive: true })
  const PORT = 65010
  const chain = ['seed', ...Array.from({ length: n }, (_, i) => `p${i}`)]
  const relays = chain.map((role, i) => {
    const fromArg = i === 0 ? `${originUrl}/${name}` : `${hosts[chain[i - 1]].ip}:${PORT}`
    const args = [NODE, join(here, 'relay.js'), fromArg, hosts[role].ip, String(PORT), join(dir, `out-${role}`), String(F), digest]
    if (i === chain.length - 1) args.push('--tail')
    return spawnIn(hosts[role].ns, args, `relay-${role}`, { stdin: 'pipe' })
  })
  try {
    await Promise.all(relays.map((r, i) => ready(r, `relay ${chain[i]}`, 30_000)))
    const meter = cpuMeter(relays)
    const chunks = []
    const t0 = performance.now()
    for (const r of relays) r.child.stdin.write('go\n')
    const times = await Promise.all(relays.map(async (r, i) => {
      const x = await r.exited
      if (x.code !== 0) throw new Error(`relay ${chain[i]} failed (${x.code ?? x.signal}): ${r.err.slice(-5).join(' ')}`)
      const s = (performance.now() - t0) / 1000
      const last = JSON.parse((await r.rest()).at(-1) ?? '{}')
      chunks.push(last.chunks)
      return s
    }))
    log(`N=${n}: floor: reads per relay ${chunks.join(' ')} (${Math.round(F / quantile(chunks, 0.5))} B per read, median)`)
    const cpuS = meter.stop()
    // CPU of the peers' relays (the seed's relay reads HTTP from the origin, like our seed)
    const peerRelayCpu = relays.slice(1).map(r => meter.of(r))
    return { s: Math.max(...times.slice(1)), cpu_s: cpuS, relay_cpu_s: peerRelayCpu.reduce((a, b) => a + b, 0) / n }
  } finally {
    await Promise.all(relays.map(stop))
    await rm(dir, { recursive: true, force: true })
  }
}

// ---- BitTorrent, the system users would pick instead: aria2c + opentracker, same hosts, shaping, file ----
const BT_NAME = 'fanout.bin'
let bt // { dir, torrent, infoHash, file }

/** Once per benchmark: the torrent (1 MiB pieces) of the origin's file, its info hash, the completion hook. */
async function btPrepare () {
  const dir = join(work, 'bt')
  await mkdir(join(dir, 'origin'), { recursive: true })
  const file = join(dir, 'origin', BT_NAME)
  const torrent = join(dir, 'f.torrent')
  sh('mktorrent', ['-a', `http://${hosts.sched.ip}:6969/announce`, '-l', '20', '-o', torrent, file])
  const m = /Info Hash:\s*([0-9a-f]{40})/i.exec(sh('aria2c', ['-S', torrent]))
  if (m == null) throw new Error('aria2c -S printed no info hash')
  // aria2c calls the hook with GID, file count, first file's path: the completion time goes next to it
  const hook = join(dir, 'done.sh')
  await writeFile(hook, '#!/bin/sh\ndate +%s.%N > "$3.done"\n', { mode: 0o755 })
  bt = { dir, torrent, infoHash: m[1].toLowerCase(), file, hook }
}

const ARIA = ['aria2c', '--no-conf', '--enable-dht=false', '--enable-dht6=false', '--bt-enable-lpd=false', '--seed-ratio=0',
  '--summary-interval=0', '--console-log-level=warn', '--allow-overwrite=true']

async function aria2Rpc (ns, method, params = []) {
  const body = JSON.stringify({ jsonrpc: '2.0', id: '1', method, params })
  const out = sh('ip', ['netns', 'exec', ns, 'curl', '-sS', '--max-time', '5', '-d', body, 'http://127.0.0.1:6800/jsonrpc'])
  const r = JSON.parse(out)
  if (r.error != null) throw new Error(`aria2 ${method}: ${JSON.stringify(r.error)}`)
  return r.result
}

/**
 * N aria2c leechers (one per peer namespace) and one aria2c seeder in the origin's namespace (the only
 * initial holder, as our origin), opentracker on the scheduler's host (unshaped). DHT and LPD off, PEX on
 * (aria2c's default), `--seed-ratio=0`: every leecher keeps seeding until the last one has finished. A
 * leecher's time is when aria2c calls its `--on-bt-download-complete` hook (every piece SHA-1 checked;
 * aria2c does not fsync). The origin's payload bytes: the seeder's `uploadLength` over RPC.
 */
async function btRun (n, tag = '') {
  const dir = join(work, `bt${n}${tag}`)
  const tdir = join(dir, 'tracker')
  await mkdir(tdir, { recursive: true })
  sh('chmod', ['755', dir, tdir])
  await writeFile(join(tdir, 'whitelist.txt'), bt.infoHash + '\n', { mode: 0o644 })
  const started = []
  try {
    // opentracker chroots into -d and drops to nobody; -w is read relative to it
    const tracker = spawnIn(hosts.sched.ns, ['opentracker', '-i', hosts.sched.ip, '-p', '6969', '-P', '6969', '-d', tdir, '-u', 'nobody', '-w', 'whitelist.txt'], 'opentracker', { cwd: tdir })
    started.push(tracker)
    const seeder = spawnIn(hosts.origin.ns, [...ARIA, '--enable-rpc', '--rpc-listen-port=6800', '--check-integrity=true', `--dir=${dirname(bt.file)}`, bt.torrent], 'bt-seeder')
    started.push(seeder)
    // the seeder has checked its file and announced before the leechers start
    const until = Date.now() + 60_000
    for (;;) {
      let active = []
      try { active = await aria2Rpc(hosts.origin.ns, 'aria2.tellActive', [['seeder', 'status']]) } catch {}
      if (active.length === 1 && active[0].seeder === 'true') break
      if (Date.now() > until) throw new Error(`aria2c seeder not seeding after 60 s: ${seeder.err.slice(-5).join(' ')}`)
      await new Promise(resolve => setTimeout(resolve, 100))
    }
    await new Promise(resolve => setTimeout(resolve, 1000))
    const cpu0 = cpuTimes()
    const t0wall = Date.now()
    const t0 = performance.now()
    const leechers = []
    for (let i = 0; i < n; i++) {
      const d = join(dir, `p${i}`)
      await mkdir(d, { recursive: true })
      const l = spawnIn(hosts[`p${i}`].ns, [...ARIA, `--dir=${d}`, `--on-bt-download-complete=${bt.hook}`, bt.torrent], `bt-${i}`)
      started.push(l)
      leechers.push(l)
    }
    const meter = cpuMeter([seeder, ...leechers])
    const times = new Array(n).fill(null)
    for (;;) {
      for (let i = 0; i < n; i++) {
        if (times[i] != null) continue
        const f = join(dir, `p${i}`, `${BT_NAME}.done`)
        if (existsSync(f)) {
          const txt = readFileSync(f, 'utf8').trim()
          if (txt !== '') times[i] = Number(txt) - t0wall / 1000
        }
        if (leechers[i].child.exitCode != null) throw new Error(`aria2c on peer ${i} exited ${leechers[i].child.exitCode}: ${leechers[i].err.slice(-5).join(' ')}`)
      }
      if (times.every(t => t != null)) break
      if (performance.now() - t0 > TIMEOUT_MS) throw new Error(`BitTorrent N=${n}: timeout after ${TIMEOUT_MS} ms (${times.filter(t => t != null).length} done)`)
      await new Promise(resolve => setTimeout(resolve, 50))
    }
    const cpu = busySince(cpu0)
    const up = await aria2Rpc(hosts.origin.ns, 'aria2.tellActive', [['uploadLength']])
    const cpuS = meter.stop()
    const leecherCpu = leechers.map(l => meter.of(l))
    await Promise.all(leechers.map(stop))
    // every copy is the origin's file
    for (let i = 0; i < n; i++) {
      const h = sh('sha256sum', [join(dir, `p${i}`, BT_NAME)]).split(' ')[0]
      if (`sha256:${h}` !== digest) throw new Error(`BitTorrent copy on peer ${i} differs from the origin's file`)
    }
    await saveLogs(join(v.logs ?? '', `bt${n}${tag}`), started)
    return {
      t_all_s: Math.max(...times),
      p50_s: quantile(times, 0.5),
      origin_bytes: Number(up[0]?.uploadLength ?? NaN),
      cpu_s: cpuS,
      leecher_cpu_s: leecherCpu.reduce((a, b) => a + b, 0) / n,
      cpu_busy: cpu.busy
    }
  } finally {
    await Promise.all(started.map(stop))
    await rm(dir, { recursive: true, force: true })
  }
}

// ---- the loaded variant: a CPU hog pinned to one vCPU beside the runs ----
function startHog () {
  const child = spawn('taskset', ['-c', '0', NODE, '-e', 'for (;;) {}'], { stdio: 'ignore' })
  procs.add(child)
  const exited = new Promise(resolve => child.once('exit', () => { procs.delete(child); resolve() }))
  return { stop: async () => { child.kill('SIGKILL'); await exited } }
}

function tMin (n) {
  return Math.max(F / bps(ORIGIN_RATE), F / bps(DOWN), (n + 1) * F / (bps(ORIGIN_RATE) + bps(SEED_RATE) + n * bps(UP)))
}

async function main () {
  if (process.getuid?.() !== 0) throw new Error('bench/fanout needs root (ip netns, tc)')
  if (!existsSync(CLI)) throw new Error(`${CLI} missing: run npm run build first`)
  sweepStale()
  work = await mkdtemp(join(tmpdir(), 'guoce-fanout-'))
  log(`topology: origin ${ORIGIN_RATE} Mbit/s, seed ${SEED_RATE}, peers up ${UP} down ${DOWN}, burst ${v.burst}, F=${F} B, N=${NS_LIST.join(',')}`)
  buildTopology()
  const withBt = !v['no-bittorrent']
  const btFile = join(work, 'bt', 'origin', BT_NAME)
  if (withBt) await mkdir(dirname(btFile), { recursive: true })
  origin = spawnIn(hosts.origin.ns, [NODE, join(here, 'origin.js'), hosts.origin.ip, String(F), ...(withBt ? [btFile] : [])], 'origin', { stdin: 'pipe' })
  const o = await ready(origin, 'origin', 60_000)
  originUrl = o.url; digest = o.digest
  if (withBt) await btPrepare()
  const runs = []
  const logBt = (n, b, tag) => log(`N=${n}${tag}: BitTorrent T_all ${b.t_all_s.toFixed(2)} s, p50 ${b.p50_s.toFixed(2)} s, origin ${(b.origin_bytes / F).toFixed(3)} F, aria2c ${b.cpu_s.toFixed(1)} cpu-s, machine cpu ${(b.cpu_busy * 100).toFixed(0)}%`)
  for (const n of NS_LIST) {
    log(`N=${n}: swarm`)
    const sw = v['no-swarm'] ? null : await swarmRun(n)
    let btr = null
    if (withBt) {
      log(`N=${n}: BitTorrent`)
      btr = await btRun(n)
      logBt(n, btr, '')
    }
    let loaded = null
    let btLoaded = null
    if (!v['no-loaded']) {
      const hog = startHog()
      try {
        log(`N=${n}: swarm, loaded (a busy loop pinned to cpu 0)`)
        loaded = v['no-swarm'] ? null : await swarmRun(n, '-loaded')
        if (loaded != null) log(`N=${n}-loaded: T_all ${loaded.t_all_s.toFixed(2)} s, origin ${(loaded.origin_bytes / F).toFixed(3)} F, machine cpu ${(loaded.cpu_busy * 100).toFixed(0)}%`)
        if (withBt) {
          log(`N=${n}: BitTorrent, loaded`)
          btLoaded = await btRun(n, '-loaded')
          logBt(n, btLoaded, '-loaded')
        }
      } finally { await hog.stop() }
    }
    if (sw != null) log(`N=${n}: T_all ${sw.t_all_s.toFixed(2)} s, p50 ${sw.p50_s.toFixed(2)} s, origin ${(sw.origin_bytes / F).toFixed(3)} F, machine cpu ${(sw.cpu_busy * 100).toFixed(0)}% (irq ${(sw.cpu_irq * 100).toFixed(0)}%, steal ${(sw.cpu_steal * 100).toFixed(0)}%), ours ${sw.cpu_services_s.toFixed(1)} + gets ${sw.cpu_gets_s.toFixed(1)} cpu-s`)
    let direct = null
    if (!v['no-direct']) {
      log(`N=${n}: direct baseline`)
      direct = await directRun(n)
      log(`N=${n}: direct ${direct.toFixed(2)} s`)
    }
    let floor = null
    if (!v['no-floor']) {
      log(`N=${n}: floor (relay chain)`)
      floor = await floorRun(n)
      log(`N=${n}: floor ${floor.s.toFixed(2)} s, relays ${floor.cpu_s.toFixed(1)} cpu-s`)
    }
    const tmin = tMin(n)
    const r3 = x => x == null || Number.isNaN(x) ? null : Math.round(x * 1000) / 1000
    const GiB = F / 2 ** 30
    const div = (a, b) => a == null || b == null ? null : r3(a / b)
    runs.push({
      n,
      file_bytes: F,
      t_all_s: r3(sw?.t_all_s),
      // BitTorrent (aria2c) in the same hosts, shaping and file, right after the swarm
      bittorrent_t_all_s: r3(btr?.t_all_s),
      t_all_over_bittorrent: div(sw?.t_all_s, btr?.t_all_s),
      bittorrent_origin_bytes_ratio: div(btr?.origin_bytes, F),
      bittorrent_p50_s: r3(btr?.p50_s),
      // CPU seconds per GiB received, per receiving process: our daemon (mean), the relay of the floor, aria2c
      daemon_cpu_s_per_gib: div(sw?.daemon_cpu_s, GiB),
      daemon_cpu_max_s_per_gib: div(sw?.daemon_cpu_max_s, GiB),
      relay_cpu_s_per_gib: div(floor?.relay_cpu_s, GiB),
      daemon_over_relay_cpu: div(sw?.daemon_cpu_s, floor?.relay_cpu_s),
      bittorrent_cpu_s_per_gib: div(btr?.leecher_cpu_s, GiB),
      seed_cpu_s: r3(sw?.seed_cpu_s),
      scheduler_cpu_s: r3(sw?.scheduler_cpu_s),
      // the loaded variant: the same two runs beside a busy loop pinned to cpu 0
      loaded: loaded == null && btLoaded == null
        ? null
        : {
            t_all_s: r3(loaded?.t_all_s),
            origin_bytes_ratio: div(loaded?.origin_bytes, F),
            p50_s: r3(loaded?.p50_s),
            bittorrent_t_all_s: r3(btLoaded?.t_all_s),
            bittorrent_origin_bytes_ratio: div(btLoaded?.origin_bytes, F),
            t_all_over_bittorrent: div(loaded?.t_all_s, btLoaded?.t_all_s),
            cpu_busy: r3(loaded?.cpu_busy),
            peer_pieces_from_source: loaded?.peer_pieces_from_source ?? null
          },
      t_min_s: r3(tmin),
      ratio: r3(sw == null ? null : sw.t_all_s / tmin),
      origin_bytes_ratio: r3(sw == null ? null : sw.origin_bytes / F),
      direct_s: direct == null ? null : r3(direct),
      p50_s: r3(sw?.p50_s),
      p99_s: r3(sw?.p99_s),
      direct_over_t_all: direct == null || sw == null ? null : r3(direct / sw.t_all_s),
      // the relay chain (floorRun): T_all of the cheapest pipeline on this machine, its ratio to T_min,
      // and ours against it
      floor_s: floor == null ? null : r3(floor.s),
      floor_ratio: floor == null ? null : r3(floor.s / tmin),
      t_all_over_floor: floor == null || sw == null ? null : r3(sw.t_all_s / floor.s),
      floor_cpu_s: floor == null ? null : r3(floor.cpu_s),
      cpu_busy: r3(sw?.cpu_busy),
      cpu_irq: r3(sw?.cpu_irq),
      cpu_steal: r3(sw?.cpu_steal),
      // CPU seconds used by this benchmark's services (scheduler, seed, daemons, origin) and by the gets,
      // against the 2 x T_all seconds two vCPUs offer; the rest of cpu_busy is other users of the machine
      cpu_services_s: r3(sw?.cpu_services_s),
      cpu_gets_s: r3(sw?.cpu_gets_s),
      peer_pieces_from_source: sw?.peer_pieces_from_source ?? null
    })
  }
  const at16 = runs.find(r => r.n === 16)
  const every = (f) => runs.some(r => f(r) == null) ? null : runs.every(r => f(r))
  const le = (x, lim) => x == null ? null : x <= lim
  const result = {
    runs,
    targets: {
      // issue 14, every N
      t_all_over_bittorrent_le_0_8: every(r => le(r.t_all_over_bittorrent, 0.8)),
      loaded_t_all_over_bittorrent_le_0_8: every(r => le(r.loaded?.t_all_over_bittorrent, 0.8)),
      loaded_origin_bytes_le_1_05: every(r => le(r.loaded?.origin_bytes_ratio, 1.05)),
      t_all_over_floor_le_1_2: every(r => le(r.t_all_over_floor, 1.2)),
      daemon_over_relay_cpu_le_1_3: every(r => le(r.daemon_over_relay_cpu, 1.3)),
      // issue 3
      ratio_at_16_le_1_3: at16?.ratio == null ? null : at16.ratio <= 1.3,
      origin_bytes_le_1_05_every_n: runs.some(r => r.origin_bytes_ratio == null) ? null : runs.every(r => r.origin_bytes_ratio <= 1.05),
      direct_over_t_all_at_16_ge_5: at16?.direct_over_t_all == null ? null : at16.direct_over_t_all >= 5
    },
    setup: { piece_channel: v['piece-channel'], rate_mbit: { origin: ORIGIN_RATE, seed: SEED_RATE, up: UP, down: DOWN }, burst: v.burst, loaded: v['no-loaded'] ? null : 'one busy loop (node -e "for(;;){}") pinned to cpu 0 with taskset, beside the swarm and BitTorrent runs', cpu_model: ((await readFile('/proc/cpuinfo', 'utf8')).match(/model name\s*:\s*(.*)/) ?? [])[1] ?? null, cpus: (await readFile('/proc/cpuinfo', 'utf8')).split('\n').filter(l => l.startsWith('processor')).length }
  }
  process.stdout.write(v.json ? JSON.stringify(result) + '\n' : JSON.stringify(result, null, 2) + '\n')
}

try {
  await main()
} catch (err) {
  log(`failed: ${err.stack ?? err}`)
  process.exitCode = 1
} finally {
  if (origin != null) { origin.child.stdin.end(); await stop(origin) }
  cleanupSync()
}

