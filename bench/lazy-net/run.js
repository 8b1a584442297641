#!/usr/bin/env node
/**
 * bench/lazy-net: a container-start-like workload from a lazy mount served over the swarm through a shaped
 * link, against downloading the image's layer + tar extraction + the same workload (see README.md).
 *
 *   node bench/lazy-net/run.js [--rootfs /var/tmp/guoce-bench/python3] [--rates 100,1000] [--runs 1]
 * [--burst 64kb] [--whole-blobs] [--json]
 *
 * Topology (namespaces this benchmark creates and removes): a bridge; `origin` (docker-registry holding the
 * OCI gzip image and its converted form), `sched` (scheduler), `seed` (seed peer), all unshaped; `node` (the
 * peer daemon, the lazy mount and the workload), its link shaped with `tc tbf` both ways at each rate.
 * Ownership: `procs` holds every process started, `namespaces` every namespace made; cleanup() kills and
 * deletes all of them (finally, SIGINT/SIGTERM, exit).
 */
import { spawn, execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { createInterface } from 'node:readline'
import { copyFile, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { existsSync, rmSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

const here = dirname(fileURLToPath(import.meta.url))
const ROOT = join(here, '..', '..')
const CLI = join(ROOT, 'packages', 'cli', 'dist', 'src', 'bin.js')
const NODE = process.execPath
const { values: v } = parseArgs({
  options: {
    rootfs: { type: 'string', default: '/var/tmp/guoce-bench/python3' },
    rates: { type: 'string', default: '100,1000' },
    runs: { type: 'string', default: '1' },
    burst: { type: 'string', default: '64kb' },
    'whole-blobs': { type: 'boolean', default: false },
    'chunk-size': { type: 'string' },
    json: { type: 'boolean', default: false }
  }
})
const RATES = v.rates.split(',').map(Number)
/** `guoce image convert --chunk-size` (default: the converter's, 1 MiB; packs scale with it) */
const CHUNK_SIZE = v['chunk-size'] != null ? ['--chunk-size', v['chunk-size']] : []
const RUNS = Number(v.runs)
const log = (...a) => { process.stderr.write(`[lazy-net] ${a.join(' ')}\n`) }
const WORKLOAD = `/usr/bin/python3 -c 'import json, sqlite3'`
/** The scripted part of the start-up: files a service would read at start (read whole). */
const FILES = ['/etc/passwd', '/etc/group', '/etc/os-release', '/etc/nsswitch.conf', '/usr/bin/bash', '/usr/lib/x86_64-linux-gnu/libc.so.6',
  '/usr/lib/python3.11/os.py', '/usr/lib/python3.11/json/decoder.py', '/usr/lib/python3.11/sqlite3/dbapi2.py', '/usr/share/zoneinfo/UTC']

// ---- resources ----
const PREFIX = `gcl${process.pid}`
const namespaces = []
const procs = new Set()
let work
let cleaned = false
const sh = (cmd, args, opts = {}) => execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts }).toString()
const ipns = (ns, ...args) => sh('ip', ['-n', ns, ...args])
function cleanupSync () {
  if (cleaned) return
  cleaned = true
  for (const p of procs) { try { p.kill('SIGKILL') } catch {} }
  // a mount's detached serving process left by a failed trial: its command line names this run's directory
  if (work != null) {
    try {
      for (const line of sh('ps', ['-eo', 'pid=,args=']).split('\n')) {
        const m = /^\s*(\d+)\s+(.*)$/.exec(line)
        if (m != null && m[2].includes(`${work}/`) && Number(m[1]) !== process.pid) { try { process.kill(Number(m[1]), 'SIGKILL') } catch {} }
      }
    } catch {}
  }
  for (const ns of namespaces.reverse()) { try { sh('ip', ['netns', 'del', ns]) } catch {} }
  if (work != null) {
    // mounts a killed trial left (in the node's mount namespace they went with it; these are the host's)
    try { for (const m of sh('sh', ['-c', `grep -F ' ${work}/' /proc/self/mountinfo | cut -d' ' -f5 | sort -r`]).split('\n').filter(Boolean)) sh('umount', ['-l', m]) } catch {}
    try { rmSync(work, { recursive: true, force: true }) } catch {}
  }
}
process.on('exit', cleanupSync)
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, () => { cleanupSync(); process.exit(130) })

const SUBNET = '10.214.0'
const BR = `${PREFIX}-br`
const hosts = {}
function addNs (name) { sh('ip', ['netns', 'add', name]); namespaces.push(name); ipns(name, 'link', 'set', 'lo', 'up') }
function addHost (role, octet) {
  const ns = `${PREFIX}-${role}`
  addNs(ns)
  const brEnd = `v${octet}`
  sh('ip', ['link', 'add', 'eth0', 'netns', ns, 'type', 'veth', 'peer', 'name', brEnd, 'netns', BR])
  ipns(BR, 'link', 'set', brEnd, 'master', 'br0')
  ipns(BR, 'link', 'set', brEnd, 'up')
  ipns(ns, 'addr', 'add', `${SUBNET}.${octet}/24`, 'dev', 'eth0')
  ipns(ns, 'link', 'set', 'eth0', 'up')
  hosts[role] = { ns, ip: `${SUBNET}.${octet}`, brEnd }
}
/** The node's link at `mbit` both ways: its eth0 (uplink) and the bridge-side end (downlink). */
function shapeNode (mbit) {
  const { ns, brEnd } = hosts.node
  for (const [n, dev] of [[ns, 'eth0'], [BR, brEnd]]) {
    sh('ip', ['netns', 'exec', n, 'tc', 'qdisc', 'replace', 'dev', dev, 'root', 'tbf', 'rate', `${mbit}mbit`, 'burst', v.burst, 'latency', '50ms'])
  }
}

function spawnIn (ns, args, name) {
  const child = spawn('ip', ['netns', 'exec', ns, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, GUOCE_LOG: process.env.GUOCE_LOG ?? 'warn' } })
  procs.add(child)
  const err = []
  createInterface({ input: child.stderr }).on('line', l => { err.push(l); if (err.length > 200) err.shift() })
  const lines = []
  const waiters = []
  createInterface({ input: child.stdout }).on('line', l => { const w = waiters.shift(); if (w) w(l); else lines.push(l) })
  const exited = new Promise(resolve => child.once('exit', (code, signal) => { procs.delete(child); resolve({ code, signal }) }))
  const nextLine = () => lines.length > 0 ? Promise.resolve(lines.shift()) : new Promise(resolve => waiters.push(resolve))
  return { child, err, exited, nextLine, name }
}
async function ready (p, ms = 120_000) {
  return await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${p.name} not ready:\n${p.err.join('\n')}`)), ms)
    void p.nextLine().then(l => { clearTimeout(t); resolve(JSON.parse(l)) })
    void p.exited.then(({ code }) => { clearTimeout(t); reject(new Error(`${p.name} exited (${code}):\n${p.err.join('\n')}`)) })
  })
}
async function stop (p) {
  if (p.child.exitCode != null || p.child.signalCode != null) return
  p.child.kill('SIGTERM')
  const t = setTimeout(() => { try { p.child.kill('SIGKILL') } catch {} }, 5_000)
  await p.exited
  clearTimeout(t)
}
/** Runs a shell script in the node's namespace (one mount namespace for the whole script); its last stdout line as JSON. */
async function inNode (script, args, name) {
  const p = spawnIn(hosts.node.ns, ['timeout', '-s', 'KILL', '600', 'sh', '-c', script, 'sh', ...args], name)
  const out = []
  for (;;) {
    const l = await Promise.race([p.nextLine(), p.exited.then(() => undefined)])
    if (l === undefined) break
    out.push(l)
  }
  const { code } = await p.exited
  if (code !== 0) throw new Error(`${name} exited ${code}:\n${p.err.join('\n')}`)
  return JSON.parse(out.at(-1))
}

const sha256File = async p => createHash('sha256').update(await readFile(p)).digest('hex')
const rxBytes = () => Number(sh('ip', ['netns', 'exec', hosts.node.ns, 'cat', '/sys/class/net/eth0/statistics/rx_bytes']))

// the timed part of a trial runs in the node's namespace as one script; times from `date +%s%N`
const LAZY = String.raw`
set -e
W=$1; NODE=$2; CLI=$3; REF=$4; EXTRA=$5; shift 5
MNT=$W/mnt; mkdir -p $MNT
S=$(date +%s%N)
$NODE $CLI image mount $REF $MNT --daemon http://127.0.0.1:65001 --plain-http $EXTRA --state $W/state --chunks $W/chunks --detach --json > /dev/null
M=$(date +%s%N)
chroot $MNT ${WORKLOAD}
for f in "$@"; do cat "$MNT$f" > /dev/null; done
E=$(date +%s%N)
$NODE $CLI image umount $MNT --state $W/state --json > /dev/null
STATS=$(grep '"unmounted"' $W/state/detached.log | tail -1)
echo "{\"mountMs\": $(( (M - S) / 1000000 )), \"totalMs\": $(( (E - S) / 1000000 )), \"serving\": $STATS}"
`
const FULL = String.raw`
set -e
W=$1; URL=$2; shift 2
mkdir -p $W/root
S=$(date +%s%N)
curl -sS --fail -o $W/layer.tar.gz "$URL"
D=$(date +%s%N)
tar -xzf $W/layer.tar.gz -C $W/root --numeric-owner
X=$(date +%s%N)
chroot $W/root ${WORKLOAD}
for f in "$@"; do cat "$W/root$f" > /dev/null; done
E=$(date +%s%N)
echo "{\"downloadMs\": $(( (D - S) / 1000000 )), \"extractMs\": $(( (X - D) / 1000000 )), \"totalMs\": $(( (E - S) / 1000000 ))}"
`

try {
  if (process.getuid?.() !== 0) throw new Error('bench/lazy-net needs root (ip netns, tc, mount)')
  if (!existsSync(v.rootfs)) throw new Error(`missing rootfs ${v.rootfs}: debootstrap --variant=minbase --include=python3 bookworm ${v.rootfs}`)
  work = await mkdtemp('/var/tmp/guoce-bench-lazy-net-')
  // ---- the images: the rootfs as one OCI gzip layer, and its conversion (default chunk size) ----
  const tar = join(work, 'layer.tar')
  sh('sh', ['-c', `tar --format=pax --numeric-owner --sort=name --xattrs --xattrs-include='*' -C '${v.rootfs}' -cf '${tar}' . && gzip -6 -f '${tar}'`])
  const gz = `${tar}.gz`
  const src = join(work, 'src')
  await mkdir(join(src, 'blobs/sha256'), { recursive: true })
  const put = async (data) => { const d = createHash('sha256').update(data).digest('hex'); await writeFile(join(src, 'blobs/sha256', d), data); return { digest: `sha256:${d}`, size: data.length } }
  const layerDigest = await sha256File(gz)
  const gzBytes = (await stat(gz)).size
  await copyFile(gz, join(src, 'blobs/sha256', layerDigest))
  const diffId = sh('sh', ['-c', `gzip -dc '${gz}' | sha256sum`]).split(' ')[0]
  const config = await put(Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: [`sha256:${diffId}`] } })))
  const manifest = await put(Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config }, layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: `sha256:${layerDigest}`, size: gzBytes }] })))
  await writeFile(join(src, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }))
  await writeFile(join(src, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest, annotations: { 'org.opencontainers.image.ref.name': 'v1' } }] }))
  sh(NODE, [CLI, 'image', 'convert', '--source', `oci:${src}:v1`, '--target', `oci:${join(work, 'lazy')}:v1`, ...CHUNK_SIZE])
  const lazyBytes = Number(sh('du', ['-sb', join(work, 'lazy', 'blobs')]).split('\t')[0])
  log(`images ready: gzip layer ${gzBytes} bytes, converted ${lazyBytes}`)

  // ---- topology and services ----
  addNs(BR)
  ipns(BR, 'link', 'add', 'br0', 'type', 'bridge')
  ipns(BR, 'link', 'set', 'br0', 'up')
  addHost('origin', 2); addHost('sched', 3); addHost('seed', 4); addHost('node', 10)
  const regDir = join(work, 'registry')
  await mkdir(regDir)
  await writeFile(join(regDir, 'config.yml'), `version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: ${join(regDir, 'data')}\nhttp:\n  addr: 0.0.0.0:5000\n`)
  spawnIn(hosts.origin.ns, ['docker-registry', 'serve', join(regDir, 'config.yml')], 'registry')
  const pushJs = `const i = await import(${JSON.stringify(join(ROOT, 'packages/image/dist/src/index.js'))}); for (let k = 0; ; k++) { try { await i.pushImage(${JSON.stringify(src)}, 'v1', 'docker://127.0.0.1:5000/app-oci:v1'); break } catch (e) { if (k > 50) throw e; await new Promise(r => setTimeout(r, 200)) } } await i.pushImage(${JSON.stringify(join(work, 'lazy'))}, 'v1', 'docker://127.0.0.1:5000/app:v1')`
  sh('ip', ['netns', 'exec', hosts.origin.ns, NODE, '--input-type=module', '-e', pushJs])
  const registry = `${hosts.origin.ip}:5000`
  const sched = spawnIn(hosts.sched.ns, [NODE, CLI, 'scheduler', '--listen', `/ip4/${hosts.sched.ip}/tcp/65003`, '--data', join(work, 'scheduler'), '--json'], 'scheduler')
  const s = await ready(sched)
  const member = ['--cluster-key', s.clusterKey]
  const seed = spawnIn(hosts.seed.ns, [NODE, CLI, 'seed', '--scheduler', s.addr, '--listen', `/ip4/${hosts.seed.ip}/tcp/0`, '--data', join(work, 'seed'), ...member, '--seed-key', s.seedKey, '--json'], 'seed')
  await ready(seed)
  const EXTRA = v['whole-blobs'] ? '--whole-blobs' : '--plain-http'
  let trial = 0
  /** A fresh daemon on the node (empty piece store), for one trial. */
  const startDaemon = async () => {
    const d = spawnIn(hosts.node.ns, [NODE, CLI, 'daemon', '--scheduler', s.addr, '--listen', `/ip4/${hosts.node.ip}/tcp/0`, '--api', '127.0.0.1:65001', '--data', join(work, `daemon-${trial}`), ...member, '--json'], 'daemon')
    await ready(d)
    await new Promise(resolve => setTimeout(resolve, 500))
    return d
  }
  const lazyTrial = async (repo = 'app', extra = EXTRA) => {
    const d = await startDaemon()
    const dir = join(work, `t${trial++}`)
    await mkdir(dir)
    const rx0 = rxBytes()
    const r = await inNode(LAZY, [dir, NODE, CLI, `docker://${registry}/${repo}:v1`, extra, ...FILES], 'lazy')
    const linkBytes = rxBytes() - rx0
    await stop(d)
    await rm(dir, { recursive: true, force: true })
    const read = r.serving.server.bytesRead
    return {
      mountMs: r.mountMs, totalMs: r.totalMs, linkRxBytes: linkBytes, chunksFetched: r.serving.store.fetches,
      chunkBytesFetched: r.serving.store.fetchedBytes, storedBytesFetched: r.serving.server.fetchedStoredBytes, fuseReadBytes: read,
      storedFetchedPerRead: +(r.serving.server.fetchedStoredBytes / read).toFixed(3), linkPerRead: +(linkBytes / read).toFixed(3), failedReads: r.serving.server.failedReads
    }
  }
  const fullTrial = async () => {
    const dir = join(work, `t${trial++}`)
    await mkdir(dir)
    const rx0 = rxBytes()
    const r = await inNode(FULL, [dir, `http://${registry}/v2/app-oci/blobs/sha256:${layerDigest}`, ...FILES], 'full')
    const linkBytes = rxBytes() - rx0
    await rm(dir, { recursive: true, force: true })
    return { ...r, linkRxBytes: linkBytes }
  }
  // the seed fetches the blobs from the registry on the first (untimed) lazy trial, unshaped
  shapeNode(10_000)
  log('warm-up (the seed fetches from the origin; the mount records a prefetch trace)')
  const trace = join(work, 'trace.json')
  await lazyTrial('app', `--record-trace=${trace}`)
  // the same image converted again with that trace: the files it lists packed together, and the list stored in
  // it (other blobs, then: the seed fetches those too in a second warm-up); mounts prefetch in its order
  sh(NODE, [CLI, 'image', 'convert', '--source', `oci:${src}:v1`, '--target', `oci:${join(work, 'traced')}:v1`, ...CHUNK_SIZE, '--prefetch-trace', trace])
  sh('ip', ['netns', 'exec', hosts.origin.ns, NODE, '--input-type=module', '-e', `const i = await import(${JSON.stringify(join(ROOT, 'packages/image/dist/src/index.js'))}); await i.pushImage(${JSON.stringify(join(work, 'traced'))}, 'v1', 'docker://127.0.0.1:5000/app-traced:v1')`])
  await lazyTrial('app-traced')
  const results = []
  for (const rate of RATES) {
    shapeNode(rate)
    for (let i = 0; i < RUNS; i++) {
      const full = await fullTrial()
      const lazy = await lazyTrial()
      const traced = await lazyTrial('app-traced')
      const row = { rateMbit: rate, full, lazy, speedup: +(full.totalMs / lazy.totalMs).toFixed(2), lazyTraced: traced, speedupTraced: +(full.totalMs / traced.totalMs).toFixed(2) }
      log(JSON.stringify(row))
      results.push(row)
    }
  }
  await stop(seed); await stop(sched)
  process.stdout.write(JSON.stringify({ bench: 'lazy-net', date: new Date().toISOString(), rootfs: v.rootfs, wholeBlobs: v['whole-blobs'], chunkSize: v['chunk-size'] ?? 'default (1 MiB)', burst: v.burst, gzipLayerBytes: gzBytes, convertedBytes: lazyBytes, workload: WORKLOAD, files: FILES, loadAverage: (await readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).map(Number), results }, null, v.json ? 0 : 2) + '\n')
} finally {
  cleanupSync()
}
