// bench/mirror: N nodes in network namespaces (tc-shaped links; the registry's uplink is one node's uplink)
// fetch one image at once, each with its own containerd: directly from the registry (baseline), then through
// their guoce daemons' registry mirrors (hosts.toml). Prints time until all are done and the bytes that left
// the registry, as ratios.
// usage: npm run bench -- mirror [--n 8] [--mib 300] [--layers 6] [--mbit 100] [--skip-direct] [--log-dir DIR]
import { parseArgs, promisify } from 'node:util'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  startGuoce, stopAll, runGuoce, startRegistry, startPullContainerd, stopRegistries, buildImage, pushImage, createNetwork
} from '@guoce/testkit'

const { values: v } = parseArgs({ options: { 'skip-direct': { type: 'boolean', default: false }, n: { type: 'string', default: '8' }, mib: { type: 'string', default: '300' }, layers: { type: 'string', default: '6' }, mbit: { type: 'string', default: '100' }, 'log-dir': { type: 'string' } } })
const N = Number(v.n); const MiB = 1024 * 1024; const LAYERS = Number(v.layers); const MBIT = Number(v.mbit)
const exec = promisify(execFile)
const log = (m) => process.stderr.write(`[mirror] ${m}\n`)
const nodes = Array.from({ length: N }, (_, i) => `n${i}`)
// daemons log at info (their back-to-source reasons) unless told otherwise
process.env.GUOCE_TEST_LOG ??= 'info'
const dir = await mkdtemp(join(tmpdir(), 'guoce-bench-mirror-'))
let net
const cleanup = async () => { await stopAll().catch(() => {}); await stopRegistries().catch(() => {}); net?.close(); await rm(dir, { recursive: true, force: true }) }
for (const sig of ['SIGINT', 'SIGTERM']) process.once(sig, () => { void cleanup().then(() => process.exit(130)) })

/** body bytes of GET blob answers the registry logged since line `from` */
const blobBytes = (reg, from) => reg.log.slice(from).filter(l => l.includes('response completed') && l.includes('http.request.method=GET') && /blobs\/sha256:/.test(l))
  .reduce((n, l) => n + Number(/http\.response\.written=(\d+)/.exec(l)?.[1] ?? 0), 0)

try {
  net = createNetwork(['reg', 'infra', ...nodes], { mbit: MBIT })
  const reg = await startRegistry(join(dir, 'registry'), { addr: `${net.ip('reg')}:5000`, netns: net.ns('reg') })
  log(`building a ${v.mib} MiB image of ${LAYERS} layers`)
  const per = Math.floor(Number(v.mib) * MiB / LAYERS)
  const image = await buildImage(join(dir, 'img'), Array.from({ length: LAYERS }, (_, i) => ({ [`data/l${i}.bin`]: randomBytes(per) })))
  const imageBytes = image.layers.reduce((n, l) => n + l.size, 0)
  await pushImage(image.layout, 'v1', `${reg.host}/bench/app:v1`, undefined, net.ns('reg'))
  const ref = `${reg.host}/bench/app:v1`

  // baseline: N direct fetches at once
  const direct = await Promise.all(nodes.map(async n => await startPullContainerd(join(dir, `direct-${n}`), { netns: net.ns(n) })))
  let from = reg.log.length
  let t0 = performance.now()
  if (!v['skip-direct']) {
    log(`direct: ${N} fetches at once`)
    await Promise.all(direct.map(async c => await c.ctr(['content', 'fetch', '--plain-http', ref], { timeoutMs: 3_600_000 })))
  }
  const directS = (performance.now() - t0) / 1000
  const directBytes = blobBytes(reg, from)
  const reg2 = reg

  // the swarm: scheduler and seed on their own host, a daemon with its mirror on every node
  const sched = await startGuoce(['scheduler', '--listen', `/ip4/${net.ip('infra')}/tcp/65003`, '--data', join(dir, 'scheduler')], { netns: net.ns('infra') })
  const key = sched.ready.clusterKey
  const seed = await startGuoce(['seed', '--scheduler', sched.ready.addr, '--cluster-key', key, '--seed-key', sched.ready.seedKey, '--data', join(dir, 'seed'), '--listen', `/ip4/${net.ip('infra')}/tcp/0`], { netns: net.ns('infra') })
  const viaMirror = []
  const daemons = []
  for (const n of nodes) {
    const d = await startGuoce(['daemon', '--scheduler', sched.ready.addr, '--cluster-key', key, '--data', join(dir, `daemon-${n}`), '--api', '127.0.0.1:0',
      '--listen', `/ip4/${net.ip(n)}/tcp/0`, '--mirror', '127.0.0.1:0', '--mirror-insecure', reg2.host], { netns: net.ns(n) })
    daemons.push({ ns: net.ns(n), api: d.ready.api, proc: d })
    const hosts = join(dir, `certs-${n}`)
    const r = await runGuoce(['mirror', 'hosts', '--registry', reg2.host, '--dir', hosts, '--mirror', d.ready.mirror.replace('http://', ''), '--insecure'])
    if (r.code !== 0) throw new Error(r.stderr)
    viaMirror.push({ ctrd: await startPullContainerd(join(dir, `mirror-${n}`), { netns: net.ns(n) }), hosts })
  }
  from = reg2.log.length
  log(`mirror: ${N} fetches at once`)
  t0 = performance.now()
  await Promise.all(viaMirror.map(async m => await m.ctrd.ctr(['content', 'fetch', '--hosts-dir', m.hosts, ref], { timeoutMs: 3_600_000 })))
  const mirrorS = (performance.now() - t0) / 1000
  const mirrorBytes = blobBytes(reg2, from)
  // where the nodes' bytes came from: the swarm, the mirror's own upstream fetches, the daemons' back-to-source
  const metrics = await Promise.all(daemons.map(async d => (await exec('ip', ['netns', 'exec', d.ns, process.execPath, '-e', `fetch(${JSON.stringify(d.api + '/metrics')}).then(r => r.text()).then(t => process.stdout.write(t))`])).stdout))
  const sum = (name) => metrics.reduce((n, t) => n + Number(t.split('\n').find(l => l.startsWith(name))?.split(' ').pop() ?? 0), 0)
  const reasons = daemons.flatMap(d => d.proc.stderr.filter(l => l.includes('swarm could not serve')).map(l => JSON.parse(l).reason))
  // why daemons read the origin themselves, and parents they blamed (daemons log at info for this: GUOCE_TEST_LOG)
  const count = (pred, key) => { const c = {}; for (const d of daemons) for (const l of d.proc.stderr) { if (!pred(l)) continue; let k = 'unparsed'; try { k = String(JSON.parse(l)[key]).replace(/\d+/g, 'N').slice(0, 80) } catch {} c[k] = (c[k] ?? 0) + 1 } return c }
  const backToSource = count(l => l.includes('"back to source"'), 'reason')
  const blamed = count(l => l.includes('"parent blamed"'), 'reason')
  // the swarm's own logs, for a look at what happened (--log-dir)
  if (v['log-dir'] != null) {
    await mkdir(v['log-dir'], { recursive: true })
    const logs = [['scheduler', sched], ['seed', seed], ...daemons.map((d, i) => [`daemon-${nodes[i]}`, d.proc])]
    for (const [name, p] of logs) await writeFile(join(v['log-dir'], `${name}.log`), p.stderr.join('\n') + '\n')
  }
  const round = (x) => Math.round(x * 1000) / 1000
  process.stdout.write(JSON.stringify({
    bench: 'mirror', n: N, image_bytes: imageBytes, layers: LAYERS, link_mbit: MBIT,
    direct_s: round(directS), mirror_s: round(mirrorS), speedup: round(directS / mirrorS),
    upstream_bytes_ratio_direct: round(directBytes / imageBytes), upstream_bytes_ratio_mirror: round(mirrorBytes / imageBytes),
    mirror_upstream_fallbacks: sum('guoce_mirror_upstream_fallbacks_total'), fallback_reasons: reasons, daemon_back_to_source: backToSource, daemon_parents_blamed: blamed,
    daemon_busy_parents: sum('guoce_peer_busy_parents_total'), daemon_silent_parents: sum('guoce_peer_silent_parents_total'),
    daemon_origin_bytes_ratio: round(sum('guoce_peer_download_bytes_total{source="origin"}') / imageBytes / N),
    daemon_peer_bytes_ratio: round(sum('guoce_peer_download_bytes_total{source="peer"}') / imageBytes / N),
    // what the seed sent to the swarm: the daemons' swarm bytes less what the daemons uploaded to each other
    seed_upload_ratio: round((sum('guoce_peer_download_bytes_total{source="peer"}') - sum('guoce_peer_upload_bytes_total')) / imageBytes)
  }) + '\n')
} finally {
  await cleanup()
}
