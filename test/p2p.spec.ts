/**
 * P2P file distribution end to end: real scheduler, seed and daemon processes on 127.0.0.1,
 * `guoce get` as users run it, a local origin that counts the bytes it serves.
 */
import { describe, it, expect, afterEach } from 'vitest'
import { randomBytes } from 'node:crypto'
import { mkdtemp, readFile, readdir, rm, stat } from 'node:fs/promises'
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { taskIdOf } from '@guoce/content'
import { until, sha, startOrigin, startCluster, startGuoce, freePort, runGuoce, stopAll, NODE, ROOT, type Origin, type Cluster } from '@guoce/testkit'

const MiB = 1024 * 1024
const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {})
  await stopAll()
})

async function setup (o: { files: Record<string, Buffer>, rate?: number, daemons: number, schedulerArgs?: string[], seedArgs?: string[], daemonArgs?: string[] }): Promise<{ origin: Origin, cluster: Cluster, out: string }> {
  const origin = await startOrigin({ files: o.files, rate: o.rate ?? 0 })
  cleanups.push(async () => { await origin.close() })
  const cluster = await startCluster({ daemons: o.daemons, ...(o.schedulerArgs != null ? { schedulerArgs: o.schedulerArgs } : {}), ...(o.seedArgs != null ? { seedArgs: o.seedArgs } : {}), ...(o.daemonArgs != null ? { daemonArgs: o.daemonArgs } : {}) })
  cleanups.push(async () => { await cluster.close() })
  const out = await mkdtemp(join(tmpdir(), 'guoce-out-'))
  cleanups.push(async () => { await rm(out, { recursive: true, force: true }) })
  return { origin, cluster, out }
}


async function getJson (url: string): Promise<any> {
  const res = await fetch(url)
  return await res.json()
}

async function metric (api: string, name: string): Promise<number> {
  const text = await (await fetch(`${api}/metrics`)).text()
  const line = text.split('\n').find(l => l.startsWith(name + ' ') || (!name.includes('{') && l.startsWith(name + '{')))
  return line == null ? NaN : Number(line.split(' ').pop())
}


/** `guoce get` of `url` on every daemon at once; each exits 0 with a byte-identical copy; their done summaries */
async function getOnEvery (cluster: Cluster, url: string, out: string, file: Buffer, extra: (i: number) => string[] = () => []): Promise<any[]> {
  const results = await Promise.all(cluster.daemons.map(async (d, i) =>
    await runGuoce(['get', url, '-O', join(out, `copy-${i}`), '--daemon', d.api, '--json', ...extra(i)])))
  for (const r of results) expect(r.code, r.stderr).toBe(0)
  for (let i = 0; i < results.length; i++) expect(sha(await readFile(join(out, `copy-${i}`)))).toBe(sha(file))
  return results.map(r => JSON.parse(r.stdout.trim().split('\n').pop()!))
}

describe('p2p file distribution', () => {
  it('4 daemons get a 64 MiB file at once: identical copies, origin serves it about once', async () => {
    const file = randomBytes(64 * MiB)
    const { origin, cluster, out } = await setup({ files: { 'big.bin': file }, rate: 200 * MiB, daemons: 4 })
    const done = await getOnEvery(cluster, `${origin.url}/big.bin`, out, file, i => i % 2 === 1 ? ['--stream'] : i === 2 ? ['--copy'] : [])
    // every output is a file of its own, never a hard link into a daemon's cache: a kernel copy of the
    // data file (0, 2: default and --copy) or bytes over HTTP (1, 3: --stream)
    for (let i = 0; i < 4; i++) expect((await stat(join(out, `copy-${i}`))).nlink).toBe(1)
    const ratio = origin.sent['big.bin']! / file.length
    expect(ratio).toBeGreaterThanOrEqual(1)
    expect(ratio).toBeLessThanOrEqual(1.05)
    // the swarm did the work: most pieces came from peers, none from the origin directly
    for (const d of done) expect(d.piecesFromSource).toBe(0)
  })

  // secure is the default (no flag); stream and integrity are opt-in on seed and daemons
  for (const [mode, args] of [['secure', []], ['stream', ['--piece-channel', 'stream']], ['integrity', ['--piece-channel', 'integrity']]] as const) {
    it(`moves pieces over ${mode === 'stream' ? 'the libp2p stream' : `${mode} data channels`} ${args.length === 0 ? 'by default' : 'when seed and daemons opt in'}`, async () => {
      const file = randomBytes(24 * MiB)
      const { origin, cluster, out } = await setup({ files: { 'f.bin': file }, daemons: 3, seedArgs: [...args], daemonArgs: [...args] })
      const done = await getOnEvery(cluster, `${origin.url}/f.bin`, out, file)
      expect(origin.sent['f.bin']! / file.length).toBeLessThanOrEqual(1.05)
      for (const d of done) expect(d.piecesFromPeers).toBeGreaterThan(0)
      for (const d of cluster.daemons) {
        expect(await metric(d.api, `guoce_peer_parent_connections_total{channel="${mode}"}`)).toBeGreaterThan(0)
        for (const other of ['secure', 'stream', 'integrity'].filter(m => m !== mode)) {
          expect(await metric(d.api, `guoce_peer_parent_connections_total{channel="${other}"}`)).toBeNaN()
        }
      }
    })
  }

  it('a swarm beyond the chain size takes its stripes from striped trees: identical copies, origin about once', async () => {
    // 5 daemons over a chain limit of 2: the scheduler switches the task to striped trees, and each
    // daemon asks every stripe's primary for that stripe's pieces (scheduler/src/scheduling/forest.ts)
    const file = randomBytes(40 * MiB)
    const { origin, cluster, out } = await setup({ files: { 'f.bin': file }, rate: 40 * MiB, daemons: 5, schedulerArgs: ['--chain-max-peers', '2'] })
    const done = await getOnEvery(cluster, `${origin.url}/f.bin`, out, file)
    expect(origin.sent['f.bin']! / file.length).toBeLessThanOrEqual(1.05)
    for (const d of done) expect(d.piecesFromSource).toBe(0)
    // once the task outgrew the chain, every daemon (the first ones too) got lists naming stripe parents
    for (const d of cluster.daemons) expect(await metric(d.api, 'guoce_peer_parent_lists_total{mode="striped"}')).toBeGreaterThan(0)
  })

  it('a parent killed with SIGKILL mid-transfer does not stop the others', async () => {
    const file = randomBytes(48 * MiB)
    const { origin, cluster, out } = await setup({ files: { 'f.bin': file }, rate: 12 * MiB, daemons: 4 })
    const gets = cluster.daemons.map(async (d, i) => await runGuoce(['get', `${origin.url}/f.bin`, '-O', join(out, `copy-${i}`), '--daemon', d.api]))
    // a daemon that is feeding others and not finished yet
    let victim = -1
    await until(async () => {
      for (let i = 0; i < cluster.daemons.length; i++) {
        const d = cluster.daemons[i]!
        const up = await metric(d.api, 'guoce_peer_upload_bytes_total').catch(() => 0)
        if (up > 2 * MiB) { victim = i; return true }
      }
      return false
    }, 'a daemon uploading to others')
    const before = await getJson(`${cluster.daemons[victim]!.api}/api/v1/tasks/${taskIdOf({ url: `${origin.url}/f.bin` })}`)
    expect(before.state).toBe('running')
    await cluster.daemons[victim]!.kill('SIGKILL')
    const results = await Promise.all(gets)
    const want = sha(file)
    for (let i = 0; i < 4; i++) {
      if (i === victim) { expect(results[i]!.code).not.toBe(0); continue }
      expect(results[i]!.code, results[i]!.stderr).toBe(0)
      expect(sha(await readFile(join(out, `copy-${i}`)))).toBe(want)
    }
    const left = await readdir(out)
    expect(left.filter(f => f.startsWith('.'))).toEqual([])
  })

  it('a peer serving corrupted bytes is detected and blamed; the download completes correctly', async () => {
    const file = randomBytes(16 * MiB)
    const { origin, cluster, out } = await setup({ files: { 'f.bin': file }, rate: 16 * MiB, daemons: 1 })
    const url = `${origin.url}/f.bin`
    const evil = spawn(NODE, [join(ROOT, 'test', 'fixtures', 'evil-peer.js'), cluster.schedulerAddr, url, cluster.clusterKey], { stdio: ['ignore', 'pipe', 'inherit'] })
    cleanups.push(async () => { evil.kill('SIGKILL') })
    let served = 0
    const ready = new Promise<void>(resolve => {
      createInterface({ input: evil.stdout }).on('line', l => {
        const m = JSON.parse(l)
        if (m.event === 'ready') resolve()
        if (m.event === 'served') served = m.served
      })
    })
    await ready
    const d = cluster.daemons[0]!
    const r = await runGuoce(['get', url, '-O', join(out, 'f.bin'), '--daemon', d.api, '--json'])
    expect(r.code, r.stderr).toBe(0)
    expect(sha(await readFile(join(out, 'f.bin')))).toBe(sha(file))
    expect(served).toBeGreaterThan(0)
    expect(await metric(d.api, 'guoce_peer_blamed_parents_total')).toBeGreaterThanOrEqual(1)
  })

  it('a scheduler restarted mid-download does not fail the downloads', async () => {
    const file = randomBytes(32 * MiB)
    const { origin, cluster, out } = await setup({ files: { 'f.bin': file }, rate: 8 * MiB, daemons: 2 })
    const url = `${origin.url}/f.bin`
    const gets = cluster.daemons.map(async (d, i) => await runGuoce(['get', url, '-O', join(out, `copy-${i}`), '--daemon', d.api]))
    const id = taskIdOf({ url })
    await until(async () => {
      const p = await getJson(`${cluster.daemons[0]!.api}/api/v1/tasks/${id}`).catch(() => null)
      return p?.piecesDone > 4
    }, 'first pieces')
    await cluster.scheduler.kill('SIGKILL')
    await new Promise(resolve => setTimeout(resolve, 1000))
    const p = await getJson(`${cluster.daemons[0]!.api}/api/v1/tasks/${id}`)
    expect(p.state).toBe('running')
    await cluster.startScheduler()
    const results = await Promise.all(gets)
    for (let i = 0; i < 2; i++) {
      expect(results[i]!.code, results[i]!.stderr).toBe(0)
      expect(sha(await readFile(join(out, `copy-${i}`)))).toBe(sha(file))
    }
    expect(origin.sent['f.bin']! / file.length).toBeLessThanOrEqual(1.05)
  })

  it('a daemon killed with SIGKILL resumes without re-fetching completed pieces', async () => {
    const file = randomBytes(48 * MiB)
    const { origin, cluster, out } = await setup({ files: { 'f.bin': file }, rate: 8 * MiB, daemons: 1 })
    const url = `${origin.url}/f.bin`
    const id = taskIdOf({ url })
    const d = cluster.daemons[0]!
    const first = runGuoce(['get', url, '-O', join(out, 'f.bin'), '--daemon', d.api])
    const statePath = join(d.data, 'tasks', id.slice(0, 2), id, 'state')
    let pieceCount = 0
    /** pieces the daemon's state file lists as durable */
    const durableOnDisk = async (): Promise<number> => {
      const state = await readFile(statePath).catch(() => null)
      if (state == null || pieceCount === 0) return 0
      let n = 0
      for (const byte of state.subarray(8, 8 + Math.ceil(pieceCount / 8))) for (let b = byte; b !== 0; b &= b - 1) n++
      return n
    }
    // kill it once a flush has made some pieces durable (FLUSH_DELAY_MS after the first piece)
    await until(async () => {
      const p = await getJson(`${d.api}/api/v1/tasks/${id}`).catch(() => null)
      pieceCount = p?.pieceCount ?? 0
      return pieceCount > 0 && await durableOnDisk() > 0
    }, 'a first flush')
    await d.kill('SIGKILL')
    const interrupted = await first
    expect(interrupted.code).not.toBe(0)
    expect(await readdir(out)).toEqual([])
    const durable = await durableOnDisk()
    expect(durable).toBeGreaterThan(0)
    expect(durable).toBeLessThan(pieceCount)

    const again = await cluster.addDaemon([], d.data)
    const r = await runGuoce(['get', url, '-O', join(out, 'f.bin'), '--daemon', again.api, '--json'])
    expect(r.code, r.stderr).toBe(0)
    expect(sha(await readFile(join(out, 'f.bin')))).toBe(sha(file))
    const done = JSON.parse(r.stdout.trim())
    expect(done.piecesFromStore).toBe(durable)
    expect(done.piecesFromPeers + done.piecesFromSource).toBe(pieceCount - durable)
  })
})

describe('guoce up (the quick start)', () => {
  it('runs scheduler, seed and daemon in one process; a get through it is byte-identical and stops cleanly', async () => {
    const file = randomBytes(12 * MiB)
    const origin = await startOrigin({ files: { 'f.bin': file }, rate: 0 })
    cleanups.push(async () => { await origin.close() })
    const dir = await mkdtemp(join(tmpdir(), 'guoce-up-'))
    cleanups.push(async () => { await rm(dir, { recursive: true, force: true }) })
    const apiPort = await freePort()
    const mirrorPort = await freePort()
    const up = await startGuoce(['up', '--data', join(dir, 'home'), '--listen-host', '127.0.0.1', '--scheduler-port', String(await freePort()), '--api', `127.0.0.1:${apiPort}`, '--mirror', `127.0.0.1:${mirrorPort}`])
    expect(up.ready).toMatchObject({ event: 'ready', service: 'up', api: `http://127.0.0.1:${apiPort}`, mirror: `http://127.0.0.1:${mirrorPort}` })
    // the registry mirror answers the distribution API's ping
    const ping = await fetch(`http://127.0.0.1:${mirrorPort}/v2/`)
    expect([ping.status, ping.headers.get('docker-distribution-api-version')]).toEqual([200, 'registry/2.0'])
    const r = await runGuoce(['get', `${origin.url}/f.bin`, '-O', join(dir, 'f.bin'), '--daemon', up.ready.api as string, '--json'])
    expect(r.code, r.stderr).toBe(0)
    expect(sha(await readFile(join(dir, 'f.bin')))).toBe(sha(file))
    expect(origin.sent['f.bin']).toBe(file.length)
    // the daemon took every piece from the seed, over the default secure data channel
    const done = JSON.parse(r.stdout.trim())
    expect(done.piecesFromSource).toBe(0)
    expect(done.piecesFromPeers).toBe(12)
    expect(await metric(up.ready.api as string, 'guoce_peer_parent_connections_total{channel="secure"}')).toBeGreaterThan(0)
    await up.kill('SIGTERM')
    expect((await up.exited).code).toBe(0)
  })
})

describe('bad input: one-line error, non-zero exit, no partial output', () => {
  async function expectFailure (args: string[], out: string, pattern: RegExp): Promise<void> {
    const r = await runGuoce(args)
    expect(r.code).not.toBe(0)
    const lines = r.stderr.trim().split('\n')
    expect(lines, r.stderr).toHaveLength(1)
    expect(lines[0]).toMatch(/^guoce: error: /)
    expect(lines[0]).toMatch(pattern)
    expect(await readdir(out)).toEqual([])
  }

  it('rejects malformed URLs, origin errors, short bodies and digest mismatches', async () => {
    const file = randomBytes(3 * MiB)
    // the daemon asks the origin for the content's validator first: it times out there too
    const { origin, cluster, out } = await setup({ files: { 'f.bin': file }, daemons: 1, seedArgs: ['--origin-timeout', '1s'], daemonArgs: ['--origin-timeout', '1s'] })
    const api = cluster.daemons[0]!.api
    const o = (name: string): string[] => ['-O', join(out, name), '--daemon', api]
    await expectFailure(['get', 'ht!tp://nope', ...o('a')], out, /malformed URL/)
    await expectFailure(['get', 'ftp://127.0.0.1/x', ...o('a')], out, /unsupported URL scheme/)
    await expectFailure(['scheduler', '--listen', '/ip4/127.0.0.1/tcp/0', '--chain-max-peers', '0'], out, /--chain-max-peers must be a whole number >= 1/)
    await expectFailure(['get', `${origin.url}/status/404`, ...o('a')], out, /HTTP 404/)
    await expectFailure(['get', `${origin.url}/status/500`, ...o('a')], out, /HTTP 500/)
    await expectFailure(['get', `${origin.url}/hang`, ...o('a')], out, /timed out/)
    await expectFailure(['get', `${origin.url}/hang`, '--timeout', '300ms', ...o('a')], out, /timed out/)
    await expectFailure(['get', `${origin.url}/short/f.bin`, ...o('a')], out, /Content-Length/)
    await expectFailure(['get', `${origin.url}/f.bin`, '--digest', 'sha256:' + '0'.repeat(64), ...o('a')], out, /does not match/)
    await expectFailure(['get', `${origin.url}/f.bin`, '--digest', 'sha256:xyz', ...o('a')], out, /invalid digest/)
    // after all that, the right digest works and nothing bad was cached
    const r = await runGuoce(['get', `${origin.url}/f.bin`, '--digest', `sha256:${sha(file)}`, ...o('good')])
    expect(r.code, r.stderr).toBe(0)
    expect(sha(await readFile(join(out, 'good')))).toBe(sha(file))
  })

  it('fails cleanly when the output disk is full', async () => {
    const file = randomBytes(4 * MiB)
    const { origin, cluster, out } = await setup({ files: { 'f.bin': file }, daemons: 1 })
    const small = await mkdtemp(join(tmpdir(), 'guoce-tmpfs-'))
    const mount = await runCmd('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', small])
    expect(mount, 'mounting a small tmpfs (needs root)').toBe(0)
    cleanups.push(async () => { await runCmd('umount', ['-l', small]); await rm(small, { recursive: true, force: true }) })
    await expectFailure(['get', `${origin.url}/f.bin`, '-O', join(small, 'f.bin'), '--daemon', cluster.daemons[0]!.api], small, /no space left/)
    await expectFailure(['get', `${origin.url}/f.bin`, '-O', join(small, 'f.bin'), '--daemon', cluster.daemons[0]!.api, '--stream'], small, /no space left/)
    expect(out).toBeTruthy()
  })
})

async function runCmd (cmd: string, args: string[]): Promise<number | null> {
  const child = spawn(cmd, args, { stdio: 'inherit' })
  return await new Promise(resolve => child.once('exit', resolve))
}
