/**
 * Trust at the scheduler and in membership, end to end: real scheduler, seed and daemon processes on
 * 127.0.0.1, `guoce get` as users run it, and hostile hosts built from the project's own packages
 * (test/fixtures/hostile-sched-*.js) that hold the cluster key, as an insider would.
 */
import { describe, it, expect, afterEach } from 'vitest'
import { randomBytes } from 'node:crypto'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { spawn, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { until, sha, startOrigin, startCluster, runGuoce, stopAll, NODE, ROOT, type Origin, type Cluster, type Proc } from '@guoce/testkit'

const MiB = 1024 * 1024
const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {})
  await stopAll()
})

async function setup (o: { files: Record<string, Buffer>, rate?: number, daemons: number, seeds?: number }): Promise<{ origin: Origin, cluster: Cluster, out: string }> {
  const origin = await startOrigin({ files: o.files, rate: o.rate ?? 0 })
  cleanups.push(async () => { await origin.close() })
  const cluster = await startCluster({ daemons: o.daemons, ...(o.seeds != null ? { seeds: o.seeds } : {}) })
  cleanups.push(async () => { await cluster.close() })
  const out = await mkdtemp(join(tmpdir(), 'guoce-out-'))
  cleanups.push(async () => { await rm(out, { recursive: true, force: true }) })
  return { origin, cluster, out }
}



interface Fixture { child: ChildProcess, events: Array<Record<string, any>>, exited: Promise<number | null> }

/** Start test/fixtures/NAME with ARGS; its JSON stdout lines are collected in `events`. */
function fixture (name: string, args: string[]): Fixture {
  const child = spawn(NODE, [join(ROOT, 'test', 'fixtures', name), ...args], { stdio: ['ignore', 'pipe', 'inherit'] })
  const events: Array<Record<string, any>> = []
  createInterface({ input: child.stdout! }).on('line', l => { try { events.push(JSON.parse(l)) } catch {} })
  const exited = new Promise<number | null>(resolve => child.once('exit', code => { resolve(code) }))
  cleanups.push(async () => { if (child.exitCode == null && child.signalCode == null) { child.kill('SIGKILL'); await exited } })
  return { child, events, exited }
}

/** resident and peak resident memory of a process, bytes */
async function memory (pid: number): Promise<{ rss: number, hwm: number }> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  const kb = (key: string): number => Number(/\s(\d+) kB/.exec(status.split('\n').find(l => l.startsWith(key + ':')) ?? '')?.[1] ?? NaN) * 1024
  return { rss: kb('VmRSS'), hwm: kb('VmHWM') }
}

function logged (p: Proc, pattern: RegExp): boolean { return p.stderr.some(l => pattern.test(l)) }

describe('trust: scheduler and membership', () => {
  it('must-hold 1: a register for the id of URL A naming URL B is refused; gets of A return A\'s bytes', async () => {
    const a = randomBytes(4 * MiB); const b = randomBytes(4 * MiB)
    const { origin, cluster, out } = await setup({ files: { 'a.bin': a, 'b.bin': b }, daemons: 1 })
    const evil = fixture('hostile-sched-mismatch.js', [cluster.schedulerAddr, cluster.clusterKey, `${origin.url}/a.bin`, `${origin.url}/b.bin`])
    await until(() => evil.events.some(e => e.event === 'sent'), 'the hostile registers', 30_000)
    await until(() => logged(cluster.scheduler, /refused message from host.*does not derive|does not derive.*refused message/), 'the scheduler refusing the register', 30_000)
    const r = await runGuoce(['get', `${origin.url}/a.bin`, '-O', join(out, 'a.bin'), '--daemon', cluster.daemons[0]!.api])
    expect(r.code, r.stderr).toBe(0)
    expect(sha(await readFile(join(out, 'a.bin')))).toBe(sha(a))
    // nobody was sent to fetch B (the hostile's own one-byte probe of B's validator aside)
    expect(origin.sent['b.bin'] ?? 0).toBeLessThanOrEqual(1)
  })

  it('must-hold 2: a host that says seed without a proof gets no seed order and its claims change nothing', async () => {
    const file = randomBytes(16 * MiB)
    const { origin, cluster, out } = await setup({ files: { 'f.bin': file }, rate: 8 * MiB, daemons: 2 })
    const url = `${origin.url}/f.bin`
    const fake = fixture('hostile-sched-fakeseed.js', [cluster.schedulerAddr, cluster.clusterKey, url, '300'])
    await until(() => fake.events.some(e => e.event === 'ready'), 'the fake seed', 30_000)
    await until(() => logged(cluster.scheduler, /type seed without a valid seed proof/), 'the scheduler refusing the seed claim', 30_000)
    // two users download the task the fake claims (its layout, digests, pieces and, while they run, an
    // origin failure); both get the origin's bytes, neither task is failed
    const gets = cluster.daemons.map(async (d, i) => await runGuoce(['get', url, '-O', join(out, `copy-${i}`), '--daemon', d.api]))
    await until(() => fake.events.some(e => e.event === 'failed-sent'), 'the fake seed\'s failure result', 30_000)
    const results = await Promise.all(gets)
    for (let i = 0; i < results.length; i++) {
      expect(results[i]!.code, results[i]!.stderr).toBe(0)
      expect(sha(await readFile(join(out, `copy-${i}`)))).toBe(sha(file))
    }
    expect(fake.events.some(e => e.event === 'claimed')).toBe(true)
    // a user with credentials: the seed order (with the Authorization header) goes to the designated seed only
    const r = await runGuoce(['get', url, '-O', join(out, 'private'), '--daemon', cluster.daemons[0]!.api, '--header', 'Authorization: Bearer user-secret'])
    expect(r.code, r.stderr).toBe(0)
    expect(sha(await readFile(join(out, 'private')))).toBe(sha(file))
    expect(fake.events.filter(e => e.event === 'seed-order')).toEqual([])
  })

  it('must-hold 3: a node without the cluster key cannot reach the scheduler, a seed or a daemon', async () => {
    const { cluster } = await setup({ files: {}, daemons: 1 })
    const withId = (p: Proc): string => {
      const addr = (p.ready.addrs as string[]).find(a => a.includes('/127.0.0.1/'))!
      return addr.includes('/p2p/') ? addr : `${addr}/p2p/${p.ready.peerId as string}`
    }
    const targets = [
      ['/guoce/scheduler/1', cluster.schedulerAddr],
      ['/guoce/piece/1', withId(cluster.seeds[0]!)],
      ['/guoce/piece/1', withId(cluster.daemons[0]!)]
    ]
    for (const [protocol, target] of targets) {
      const outsider = fixture('hostile-sched-outsider.js', ['-', protocol!, target!])
      expect(await outsider.exited).toBe(0)
      expect(outsider.events, `${protocol} at ${target}`).toMatchObject([{ target, ok: false }])
      // control: the same code with the cluster key gets in
      const member = fixture('hostile-sched-outsider.js', [cluster.clusterKey, protocol!, target!])
      expect(await member.exited).toBe(0)
      expect(member.events).toMatchObject([{ target, ok: true }])
    }
  })

  it('must-hold 3: a daemon or seed with neither --cluster-key nor --open refuses to start, in one line', async () => {
    const { cluster } = await setup({ files: {}, daemons: 0, seeds: 0 })
    const dir = await mkdtemp(join(tmpdir(), 'guoce-nokey-'))
    cleanups.push(async () => { await rm(dir, { recursive: true, force: true }) })
    for (const cmd of [['daemon', '--api', '127.0.0.1:0'], ['seed']]) {
      const r = await runGuoce([cmd[0]!, '--scheduler', cluster.schedulerAddr, '--data', join(dir, cmd[0]!), '--listen', '/ip4/127.0.0.1/tcp/0', ...cmd.slice(1)], { timeoutMs: 20_000 })
      expect(r.code).not.toBe(0)
      expect(r.code).not.toBeNull()
      const lines = r.stderr.trim().split('\n')
      expect(lines).toHaveLength(1)
      expect(lines[0]).toMatch(/--cluster-key/)
    }
  })

  /** the flood's size: identities of each kind, partial-message streams per identity (GUOCE_FLOOD=IxS to change) */
  const [IDENTITIES, STREAMS] = (process.env.GUOCE_FLOOD ?? '6x4').split('x').map(Number) as [number, number]

  it('must-hold 5: oversized layouts, half-sent messages and register floods leave the scheduler alive and its memory bounded', async () => {
    const file = randomBytes(4 * MiB)
    const { origin, cluster, out } = await setup({ files: { 'f.bin': file, 'g.bin': randomBytes(4 * MiB) }, daemons: 1 })
    const pid = cluster.scheduler.child.pid!
    // warm up: one real download, and a first brush with the attack at its smallest (one identity, one
    // stream, 3 s): V8 keeps the young generation's pages and glibc its arenas resident once touched, so
    // the first burst of traffic of any kind raises the resident size for good (printed: \`before the
    // brush\` -> \`baseline\`); the baseline is that warmed-up scheduler.
    const warm = await runGuoce(['get', `${origin.url}/g.bin`, '-O', join(out, 'g.bin'), '--daemon', cluster.daemons[0]!.api])
    expect(warm.code, warm.stderr).toBe(0)
    const cold = (await memory(pid)).rss
    const brush = fixture('hostile-sched-flood.js', [cluster.schedulerAddr, cluster.clusterKey, cluster.seedKey, '3000', '1', '1'])
    expect(await brush.exited).toBe(0)
    await new Promise(resolve => setTimeout(resolve, 2000))
    const { rss: baseline, hwm: warmPeak } = await memory(pid)
    const flood = fixture('hostile-sched-flood.js', [cluster.schedulerAddr, cluster.clusterKey, cluster.seedKey, '12000', String(IDENTITIES), String(STREAMS)])
    let peak = 0
    const watch = setInterval(() => { void memory(pid).then(m => { peak = Math.max(peak, m.rss) }).catch(() => {}) }, 100)
    cleanups.push(async () => { clearInterval(watch) })
    expect(await flood.exited).toBe(0)
    const left = Date.now()
    const summary = flood.events.find(e => e.event === 'done')!
    expect(summary.partialStreams).toBeGreaterThan(6)
    expect(summary.registersSent).toBeGreaterThan(0)
    expect(cluster.scheduler.child.exitCode).toBeNull()
    const { hwm } = await memory(pid)
    peak = Math.max(peak, hwm)
    expect(peak, `peak RSS (warm-up peak ${warmPeak}, baseline ${baseline})`).toBeLessThan(256 * MiB)
    // every bound was met by a drop
    expect(logged(cluster.scheduler, /malformed layout/)).toBe(true)
    expect(logged(cluster.scheduler, /host dropped/)).toBe(true)
    let rss = Infinity
    await until(async () => { rss = (await memory(pid)).rss; return rss - baseline <= 32 * MiB }, `scheduler RSS back near its baseline (${baseline} bytes)`, 10_000)
    clearInterval(watch)
    process.stderr.write(`scheduler memory: before the brush ${(cold / MiB).toFixed(1)} MiB, peak of the warm-up ${(warmPeak / MiB).toFixed(1)} MiB, baseline ${(baseline / MiB).toFixed(1)} MiB, peak ${(peak / MiB).toFixed(1)} MiB, ${((Date.now() - left) / 1000).toFixed(1)} s after: ${(rss / MiB).toFixed(1)} MiB\n`)
    const r = await runGuoce(['get', `${origin.url}/f.bin`, '-O', join(out, 'f.bin'), '--daemon', cluster.daemons[0]!.api])
    expect(r.code, r.stderr).toBe(0)
    expect(sha(await readFile(join(out, 'f.bin')))).toBe(sha(file))
  })
})
