// bench/containerd: cold start of a container from a ~250 MB Debian python3 image whose entrypoint reads a few
// percent of it. containerd's overlayfs snapshotter with a full CRI pull (baseline) against the guoce snapshotter
// (the same image converted by `guoce image convert`, layers mounted lazily, chunks through the daemon's ranged
// reader and a seed peer), same registry, same run. The registry (and, for guoce, the scheduler and the seed)
// sit behind a netns link shaped with tbf; the node (containerd, the guoce daemon with its snapshotter) on the
// other side. Time from the CRI PullImage request to the entrypoint's first output line (`ctr run`).
// Prints one JSON object. Needs root, containerd, runc, docker-registry, skopeo, umoci, FUSE, debootstrap (once).
// usage: npm run bench -- containerd [--mbit 100,1000] [--runs 2] [--rootfs DIR] [--cache DIR] [--chunk-size N]
import { parseArgs, promisify } from 'node:util'
import { execFile, spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import * as grpc from '@grpc/grpc-js'
import { loadSync } from '@grpc/proto-loader'
import { unixFetch } from '@guoce/interface'
import {
  ROOT, runGuoce, startGuoce, stopAll, startRegistry, stopRegistries, pushImage, createNetwork, startContainerd, unmountUnder
} from '@guoce/testkit'

const { values: v } = parseArgs({
  options: {
    mbit: { type: 'string', default: '100,1000' },
    runs: { type: 'string', default: '2' },
    rootfs: { type: 'string', default: '/var/tmp/guoce-bench/python3' },
    cache: { type: 'string', default: '/var/tmp/guoce-bench/containerd' },
    'chunk-size': { type: 'string' },
    variants: { type: 'string', default: 'overlayfs,guoce,guoce-prefetch' },
    verbose: { type: 'boolean', default: false }
  }
})
const RATES = v.mbit.split(',').map(Number)
const RUNS = Number(v.runs)
const VARIANTS = v.variants.split(',')
const WORKLOAD = ['python3', '-c', 'import json, sqlite3; print("ready")']
const exec = promisify(execFile)
const log = (m) => process.stderr.write(`[containerd] ${m}\n`)
const round = (x) => Math.round(x * 1000) / 1000
const median = (xs) => { const s = [...xs].sort((a, b) => a - b); const m = s.length >> 1; return round(s.length % 2 === 1 ? s[m] : (s[m - 1] + s[m]) / 2) }

const dir = await mkdtemp(join(tmpdir(), 'gbc-'))
let net
const containerds = new Set()

let cleaned = false
const cleanup = async () => {
  if (cleaned) return
  cleaned = true
  for (const c of containerds) await c.stop().catch(() => {})
  await stopAll().catch(() => {})
  await unmountUnder(dir)
  await stopRegistries().catch(() => {})
  net?.close()
  await rm(dir, { recursive: true, force: true })
}
for (const sig of ['SIGINT', 'SIGTERM']) process.once(sig, () => { void cleanup().then(() => process.exit(130)) })

/** CRI PullImage (kubelet's call) of `image` through containerd at `address`. */
async function criPull (address, image) {
  const def = loadSync('image-service.proto', { includeDirs: [join(ROOT, 'test', 'fixtures', 'cri')], keepCase: false, defaults: true })
  const cri = new (grpc.loadPackageDefinition(def).runtime.v1.ImageService)(`unix:${address}`, grpc.credentials.createInsecure())
  try {
    return await new Promise((resolve, reject) => {
      cri.PullImage({ image: { image } }, { deadline: Date.now() + 600_000 }, (err, r) => { if (err != null) reject(err); else resolve(r.imageRef) })
    })
  } finally { cri.close() }
}

/** The one-layer OCI image of the rootfs (umoci) and its converted form, built once into the cache directory. */
async function images () {
  if (!existsSync(join(v.rootfs, 'usr', 'bin', 'python3'))) {
    log(`debootstrap into ${v.rootfs} (about a minute)`)
    await mkdir(join(v.rootfs, '..'), { recursive: true })
    await rm(`${v.rootfs}.tmp`, { recursive: true, force: true })
    await exec('debootstrap', ['--variant=minbase', '--include=python3', 'bookworm', `${v.rootfs}.tmp`, 'http://deb.debian.org/debian'], { maxBuffer: 64 << 20 })
    await exec('mv', [`${v.rootfs}.tmp`, v.rootfs])
  }
  const oci = join(v.cache, 'oci')
  if (!existsSync(join(v.cache, 'oci.done'))) {
    log('building the OCI image (umoci)')
    await rm(oci, { recursive: true, force: true })
    await rm(join(v.cache, 'bundle'), { recursive: true, force: true })
    await mkdir(v.cache, { recursive: true })
    await exec('umoci', ['init', '--layout', oci])
    await exec('umoci', ['new', '--image', `${oci}:v1`])
    await exec('umoci', ['unpack', '--image', `${oci}:v1`, join(v.cache, 'bundle')])
    await exec('cp', ['-a', `${v.rootfs}/.`, join(v.cache, 'bundle', 'rootfs')])
    await exec('umoci', ['repack', '--image', `${oci}:v1`, join(v.cache, 'bundle')])
    await rm(join(v.cache, 'bundle'), { recursive: true, force: true })
    await writeFile(join(v.cache, 'oci.done'), '')
  }
  const cs = v['chunk-size']
  const lazy = join(v.cache, `lazy${cs != null ? `-${cs}` : ''}`)
  if (!existsSync(`${lazy}.done`)) {
    log('converting (guoce image convert)')
    await rm(lazy, { recursive: true, force: true })
    const r = await runGuoce(['image', 'convert', '--source', `oci:${oci}:v1`, '--target', `oci:${lazy}:v1`, ...(cs != null ? ['--chunk-size', cs] : []), '--json'], { timeoutMs: 600_000 })
    if (r.code !== 0) throw new Error(`convert failed: ${r.stderr}`)
    await writeFile(`${lazy}.done`, '')
  }
  // the same conversion with a prefetch list: the chunks the workload read first, in order, recorded by
  // `guoce image mount --record-trace` on the local image while the workload runs as a container does:
  // `ctr run --rootfs` on the mount, so that what containerd and runc read before the entrypoint (the
  // image's /etc/passwd and /etc/group for the user and its groups) is in the list too
  const traced = `${lazy}-prefetch`
  if (VARIANTS.includes('guoce-prefetch') && !existsSync(`${traced}.done`)) {
    log('recording a prefetch trace (guoce image mount --record-trace) and converting with it')
    const work = await mkdtemp(join(tmpdir(), 'gbc-trace-'))
    const mnt = join(work, 'mnt')
    const trace = join(v.cache, `trace${cs != null ? `-${cs}` : ''}.json`)
    await mkdir(mnt)
    const p = spawn(process.execPath, [join(ROOT, 'packages', 'cli', 'dist', 'src', 'bin.js'), 'image', 'mount', `oci:${lazy}:v1`, mnt,
      '--state', join(work, 'state'), '--chunks', join(work, 'chunks'), '--record-trace', trace, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] })
    let err = ''
    p.stderr.on('data', d => { err += d })
    const exited = new Promise(resolve => p.once('exit', resolve))
    try {
      await new Promise((resolve, reject) => { p.stdout.once('data', resolve); p.once('exit', () => reject(new Error(`guoce image mount failed: ${err}`))) })
      const cd = await startContainerd({ dir: join(work, 'c') })
      try {
        const r = await exec('timeout', ['-s', 'KILL', '120', 'ctr', '--address', cd.address, 'run', '--rootfs', ...cd.runArgs(),
          // containerd's default PATH for an image whose config sets none (as this one)
          '--env', 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', '--rm', mnt, 'gbc-trace', ...WORKLOAD])
        if (!r.stdout.includes('ready')) throw new Error(`the workload printed ${JSON.stringify(r.stdout)} while the trace was recorded`)
      } finally {
        await cd.stop()
      }
    } finally {
      p.kill('SIGTERM')
      await exited
      await unmountUnder(work)
      await rm(work, { recursive: true, force: true })
    }
    await rm(traced, { recursive: true, force: true })
    const r = await runGuoce(['image', 'convert', '--source', `oci:${oci}:v1`, '--target', `oci:${traced}:v1`, ...(cs != null ? ['--chunk-size', cs] : []), '--prefetch-trace', trace, '--json'], { timeoutMs: 600_000 })
    if (r.code !== 0) throw new Error(`convert failed: ${r.stderr}`)
    await writeFile(`${traced}.done`, '')
  }
  const size = async (layout) => {
    const idx = JSON.parse(await readFile(join(layout, 'index.json'), 'utf8'))
    const m = JSON.parse(await readFile(join(layout, 'blobs', 'sha256', idx.manifests[0].digest.slice(7)), 'utf8'))
    return { layers: m.layers.map(l => ({ mediaType: l.mediaType, size: l.size })), bytes: m.layers.reduce((n, l) => n + l.size, 0) }
  }
  const { stdout: du } = await exec('du', ['-sb', v.rootfs])
  return { oci, lazy, traced, rootfsBytes: Number(du.split('\t')[0]), ociImage: await size(oci), lazyImage: await size(lazy) }
}

/** GET answers the registry logged since line `from`: body bytes, and how many. */
function registryBytes (reg, from) {
  const gets = reg.log.slice(from).filter(l => l.includes('response completed') && l.includes('http.request.method=GET'))
  return { bytes: gets.reduce((n, l) => n + Number(/http\.response\.written=(\d+)/.exec(l)?.[1] ?? 0), 0), requests: gets.length }
}

/** A Prometheus value summed over its labels. */
function metric (text, name) {
  return text.split('\n').filter(l => l.startsWith(name + ' ') || l.startsWith(name + '{')).reduce((n, l) => n + Number(l.split(' ').pop()), 0)
}

/** One cold start: fresh containerd (and for guoce a fresh scheduler, seed and daemon), caches dropped. */
async function sample (variant, rate, run, reg, hostsDir, image) {
  const sd = join(dir, `${rate}-${VARIANTS.indexOf(variant)}${run}`)
  await mkdir(sd, { recursive: true })
  const id = `gbc-${rate}-${variant}-${run}`
  let cd; let api
  try {
    let extra
    if (variant !== 'overlayfs') {
      const sched = await startGuoce(['scheduler', '--listen', `/ip4/${net.ip('reg')}/tcp/0`, '--data', join(sd, 'sched')], { netns: net.ns('reg') })
      const key = sched.ready.clusterKey
      await startGuoce(['seed', '--scheduler', sched.ready.addr, '--cluster-key', key, '--seed-key', sched.ready.seedKey, '--data', join(sd, 'seed'), '--listen', `/ip4/${net.ip('reg')}/tcp/0`], { netns: net.ns('reg') })
      api = join(sd, 'api.sock')
      await startGuoce(['daemon', '--scheduler', sched.ready.addr, '--cluster-key', key, '--data', join(sd, 'd'), '--api', `unix:${api}`, '--listen', `/ip4/${net.ip('node')}/tcp/0`,
        '--snapshotter-socket', join(sd, 'snap.sock'), '--snapshotter-insecure', reg.host], { netns: net.ns('node'), hostMounts: true })
      extra = (await readFile(join(ROOT, 'deploy', 'containerd', 'config.toml'), 'utf8')).replace(/^version = 2$/m, '').replaceAll('/run/guoce/snapshotter.sock', join(sd, 'snap.sock'))
    }
    cd = await startContainerd({ dir: join(sd, 'c'), netns: net.ns('node'), cri: { hostsDir }, ...(extra != null ? { extra } : {}) })
    containerds.add(cd)
    if (v.verbose) log(`containerd config (${variant}):\n${await readFile(join(sd, 'c', 'containerd.toml'), 'utf8')}`)
    await exec('sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches'])
    const from = reg.log.length
    const link0 = net.linkBytes('node')
    const t0 = performance.now()
    // --verbose: the node link's received bytes every 50 ms (is the start waiting on the link or on round trips?)
    const rx = []
    const sampler = v.verbose ? setInterval(() => { rx.push([Math.round(performance.now() - t0), net.linkBytes('node').rx - link0.rx]) }, 50) : undefined
    await criPull(cd.address, image)
    const pullS = (performance.now() - t0) / 1000
    cd.track('k8s.io', id)
    const child = spawn('ctr', ['--address', cd.address, '-n', 'k8s.io', 'run', '--snapshotter', variant === 'overlayfs' ? 'overlayfs' : 'guoce', ...cd.runArgs(), '--rm', image, id, ...WORKLOAD], { stdio: ['ignore', 'pipe', 'pipe'] })
    let err = ''
    child.stderr.on('data', d => { err += d })
    const exited = new Promise(resolve => child.once('exit', resolve))
    const timer = setTimeout(() => child.kill('SIGKILL'), 300_000)
    const first = await new Promise(resolve => {
      createInterface({ input: child.stdout }).once('line', l => resolve({ line: l, at: performance.now() }))
      void exited.then(() => resolve(undefined))
    })
    const code = await exited
    clearTimeout(timer)
    if (sampler !== undefined) { clearInterval(sampler); log(`node link rx (ms, bytes): ${rx.map(([t, b]) => `${t}:${(b / 1e6).toFixed(2)}`).join(' ')}`) }
    const exitS = (performance.now() - t0) / 1000
    if (first?.line !== 'ready' || code !== 0) throw new Error(`${variant}: ctr run printed ${JSON.stringify(first?.line)}, exit ${code}: ${err}`)
    const link1 = net.linkBytes('node')
    const r = registryBytes(reg, from)
    if (v.verbose) for (const l of reg.log.slice(from).filter(l => l.includes('response completed'))) log(`registry: ${/http\.request\.method=(\S+)/.exec(l)?.[1]} ${/http\.request\.remoteaddr="?([^" ]+)/.exec(l)?.[1]} ${/http\.request\.uri="([^"]+)"/.exec(l)?.[1]} ${/http\.request\.useragent="([^"]+)"/.exec(l)?.[1]?.slice(0, 20)} ${/http\.response\.written=(\d+)/.exec(l)?.[1]} ${/http\.response\.duration=(\S+)/.exec(l)?.[1]} ${/time="([^"]+)"/.exec(l)?.[1]}`)
    const out = {
      mbit: rate, variant, run, pull_s: round(pullS), first_output_s: round((first.at - t0) / 1000), exit_s: round(exitS),
      registry_bytes: r.bytes, registry_gets: r.requests, node_link_rx_bytes: link1.rx - link0.rx
    }
    if (api != null) {
      const m = await (await unixFetch(api, '/metrics')).text()
      Object.assign(out, {
        chunks: metric(m, 'guoce_snapshotter_chunks'),
        chunks_fetched: metric(m, 'guoce_snapshotter_chunks_fetched_total'),
        chunk_bytes_fetched: metric(m, 'guoce_snapshotter_chunk_bytes_fetched_total'),
        daemon_download_bytes: metric(m, 'guoce_peer_download_bytes_total'),
        prefetched_chunks: metric(m, 'guoce_snapshotter_prefetched_chunks_total'),
        source_reads: metric(m, 'guoce_snapshotter_source_reads_total'),
        source_read_s: round(metric(m, 'guoce_snapshotter_source_read_seconds_total')),
        failed_reads: metric(m, 'guoce_snapshotter_failed_reads_total')
      })
    }
    log(JSON.stringify(out))
    return out
  } finally {
    if (cd != null) { await cd.stop().catch(() => {}); containerds.delete(cd) }
    await stopAll()
    await unmountUnder(sd)
    await rm(sd, { recursive: true, force: true }).catch(() => {})
  }
}

try {
  const img = await images()
  log(`rootfs ${img.rootfsBytes} bytes; OCI layers ${img.ociImage.bytes} bytes; converted layers ${img.lazyImage.bytes} bytes`)
  const samples = []
  const summary = {}
  for (const rate of RATES) {
    net = createNetwork(['reg', 'node'], { mbit: rate })
    const reg = await startRegistry(join(dir, `reg-${rate}`), { addr: `${net.ip('reg')}:5000`, netns: net.ns('reg') })
    await pushImage(img.oci, 'v1', `${reg.host}/bench/python:v1`, undefined, net.ns('reg'))
    await pushImage(img.lazy, 'v1', `${reg.host}/bench/python-guoce:v1`, undefined, net.ns('reg'))
    if (VARIANTS.includes('guoce-prefetch')) await pushImage(img.traced, 'v1', `${reg.host}/bench/python-guoce-prefetch:v1`, undefined, net.ns('reg'))
    const hostsDir = join(dir, `hosts-${rate}`)
    await mkdir(join(hostsDir, reg.host), { recursive: true })
    await writeFile(join(hostsDir, reg.host, 'hosts.toml'), `server = "http://${reg.host}"\n[host."http://${reg.host}"]\n  capabilities = ["pull", "resolve"]\n`)
    for (let run = 1; run <= RUNS; run++) {
      // alternate which variant goes first
      for (const variant of run % 2 === 1 ? VARIANTS : [...VARIANTS].reverse()) {
        const image = `${reg.host}/bench/${variant === 'overlayfs' ? 'python' : `python-${variant}`}:v1`
        samples.push(await sample(variant, rate, run, reg, hostsDir, image))
      }
    }
    await stopRegistries()
    net.close()
    net = undefined
    const of = (variant) => samples.filter(s => s.mbit === rate && s.variant === variant)
    const o = of('overlayfs')
    const target = rate <= 100 ? 10 : 5
    const row = { overlayfs_first_output_s: o.length > 0 ? median(o.map(s => s.first_output_s)) : null, overlayfs_registry_bytes: o.length > 0 ? median(o.map(s => s.registry_bytes)) : null, overlayfs_node_link_rx_bytes: o.length > 0 ? median(o.map(s => s.node_link_rx_bytes)) : null, target }
    for (const variant of VARIANTS.filter(x => x !== 'overlayfs')) {
      const g = of(variant)
      const k = variant.replace('-', '_')
      row[`${k}_first_output_s`] = median(g.map(s => s.first_output_s))
      row[`${k}_registry_bytes`] = median(g.map(s => s.registry_bytes))
      row[`${k}_node_link_rx_bytes`] = median(g.map(s => s.node_link_rx_bytes))
      if (o.length === 0) continue
      const speedup = median(o.map(s => s.first_output_s)) / median(g.map(s => s.first_output_s))
      // each run's ratio (same run, same network), and their median
      const perRun = o.map(s => s.first_output_s / g.find(x => x.run === s.run).first_output_s)
      Object.assign(row, { [`${k}_speedup`]: round(speedup), [`${k}_speedup_per_run`]: perRun.map(round), [`${k}_median_speedup_per_run`]: round(median(perRun)), [`${k}_holds`]: median(perRun) >= target })
    }
    summary[`${rate}mbit`] = row
  }
  process.stdout.write(JSON.stringify({
    bench: 'containerd', workload: WORKLOAD.join(' '), rootfs_bytes: img.rootfsBytes,
    oci_image_layer_bytes: img.ociImage.bytes, converted_image_layer_bytes: img.lazyImage.bytes, converted_layers: img.lazyImage.layers,
    summary, samples
  }) + '\n')
} finally {
  await cleanup()
}
