/**
 * Delta updates end to end: `guoce index` makes NEW.gcidx, a local origin serves NEW and its index, and
 * `guoce get URL -O OUT --seed-from OLD` runs against real scheduler, seed and daemon processes: the chunks
 * OLD holds are copied, the rest are ranged reads through the daemon. Bad indexes fall back to the whole
 * download with a message; a peer that lies about pieces is caught.
 */
import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest'
import { randomBytes } from 'node:crypto'
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { spawn, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import { sha, startCluster, startOrigin, runGuoce, stopAll, NODE, ROOT, type Cluster, type Origin } from '@guoce/testkit'
import { chunkFile, parseIndex, planDelta, encodeIndex, INDEX_HEADER_BYTES, MAX_INDEX_CHUNKS } from '@guoce/delta'

const MiB = 1024 * 1024
let cluster: Cluster
let origin: Origin
let dir: string
let api: string
const OLD = randomBytes(24 * MiB)
/** OLD with 40 KB inserted at 5 MiB, 100 KB replaced at 14 MiB, 3 bytes changed near the end */
const NEW = Buffer.concat([OLD.subarray(0, 5 * MiB + 123), randomBytes(40_000), OLD.subarray(5 * MiB + 123, 14 * MiB), randomBytes(100_000), OLD.subarray(14 * MiB + 100_000)])
NEW[NEW.length - 1000] ^= 0x5a
let oldPath: string
let indexBytes: Buffer

const evil: ChildProcess[] = []
const clusters: Cluster[] = []
afterEach(async () => {
  for (const e of evil.splice(0)) e.kill('SIGKILL')
  for (const c of clusters.splice(0)) await c.close()
})

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'guoce-delta-'))
  oldPath = join(dir, 'old.img')
  await writeFile(oldPath, OLD)
  await writeFile(join(dir, 'new.img'), NEW)
  const ix = await runGuoce(['index', join(dir, 'new.img'), '--json'])
  expect(ix.code, ix.stderr).toBe(0)
  indexBytes = await readFile(join(dir, 'new.img.gcidx'))
  const good = parseIndex(indexBytes)
  const flipped = Buffer.from(indexBytes); flipped[INDEX_HEADER_BYTES + 12] ^= 1 // chunk 0's sha256
  const huge = Buffer.from(indexBytes); huge.writeUInt32LE(MAX_INDEX_CHUNKS, 28)
  const bigFile = Buffer.from(indexBytes); bigFile.writeBigUInt64LE(BigInt(good.size) * 2n, 32)
  origin = await startOrigin({
    validators: 'etag',
    files: {
      'os.img': NEW, 'os.img.gcidx': indexBytes,
      'trunc.img': NEW, 'trunc.img.gcidx': indexBytes.subarray(0, indexBytes.length - 20),
      'lies.img': NEW, 'lies.img.gcidx': flipped,
      'huge.img': NEW, 'huge.img.gcidx': huge,
      'size.img': NEW, 'size.img.gcidx': bigFile,
      'noidx.img': NEW,
      'digest.img': NEW, 'digest.img.gcidx': indexBytes,
      'direct.img': NEW, 'direct.img.gcidx': indexBytes,
      'evil.img': NEW, 'evil.img.gcidx': indexBytes,
      // an index that says NEW is 3 bytes longer than the file the origin serves (the rest of it true)
      'short.img': NEW.subarray(0, NEW.length - 3), 'short.img.gcidx': indexBytes
    }
  })
  cluster = await startCluster({ daemons: 1 })
  api = cluster.daemons[0]!.api
})
afterAll(async () => {
  await cluster?.close()
  await origin?.close()
  await stopAll()
  if (dir != null) await rm(dir, { recursive: true, force: true })
})

async function get (name: string, extra: string[] = [], daemon = api): Promise<{ code: number | null, stderr: string, json: any, out: string }> {
  const out = join(dir, `out-${name}`)
  const r = await runGuoce(['get', `${origin.url}/${name}`, '-O', out, '--seed-from', oldPath, '--daemon', daemon, '--json', ...extra])
  let json: any
  try { json = JSON.parse(r.stdout.trim().split('\n').pop() ?? '') } catch {}
  return { code: r.code, stderr: r.stderr, json, out }
}

/** Pieces (1 MiB here) that the ranges a delta fetches touch. */
async function piecesTouched (): Promise<number> {
  const plan = planDelta(parseIndex(indexBytes), await chunkFile(oldPath))
  const pieces = new Set<number>()
  for (const s of plan.steps) if (s.kind === 'fetch') for (let p = Math.floor(s.offset / MiB); p <= Math.floor((s.offset + s.length - 1) / MiB); p++) pieces.add(p)
  return pieces.size
}

async function metric (name: string, daemon = api): Promise<number> {
  const text = await (await fetch(`${daemon}/metrics`)).text()
  const line = text.split('\n').find(l => l.startsWith(name + ' '))
  return line == null ? NaN : Number(line.split(' ').pop())
}

describe('guoce get --seed-from OLD', () => {
  it('writes NEW byte-identical, copying what OLD holds and fetching only the pieces the differing chunks touch', async () => {
    const plan = planDelta(parseIndex(indexBytes), await chunkFile(oldPath))
    const r = await get('os.img', ['--digest', `sha256:${sha(NEW)}`])
    expect(r.code, r.stderr).toBe(0)
    expect(r.stderr).not.toMatch(/index/)
    expect(sha(await readFile(r.out))).toBe(sha(NEW))
    expect(r.json.via).toBe('delta')
    expect(r.json.delta.fetchBytes).toBe(plan.fetchBytes)
    expect(r.json.delta.reusedBytes + r.json.delta.fetchBytes).toBe(NEW.length)
    // three edits: a few chunks, far less than the file
    expect(plan.fetchBytes).toBeLessThan(1.5 * MiB)
    const pieces = await piecesTouched()
    expect(pieces).toBeLessThanOrEqual(6)
    // the origin sent the pieces those ranges touch (whole pieces), and a probe byte or two; no more
    expect(origin.sent['os.img']).toBeLessThanOrEqual(pieces * MiB + 64)
    expect(origin.sent['os.img']).toBeGreaterThanOrEqual(plan.fetchBytes)
    expect(r.json.delta.pieceBytes).toBeLessThanOrEqual(pieces * MiB)
    process.stderr.write(`delta.spec: ${plan.fetchChunks} of ${r.json.delta.chunks} chunks fetched (${plan.fetchBytes} bytes), ${pieces} pieces, origin sent ${origin.sent['os.img']} of ${NEW.length}\n`)
    // nothing else left in the output's directory (no temp file)
    expect((await readdir(dir)).filter(f => f.startsWith('.'))).toEqual([])
  })

  it('--delta-source origin: the missing chunks straight from the origin, exactly their bytes', async () => {
    const plan = planDelta(parseIndex(indexBytes), await chunkFile(oldPath))
    const r = await get('direct.img', ['--delta-source', 'origin'])
    expect(r.code, r.stderr).toBe(0)
    expect(r.json.via).toBe('delta')
    expect(r.json.delta.via).toBe('origin')
    expect(sha(await readFile(r.out))).toBe(sha(NEW))
    expect(origin.sent['direct.img']).toBe(plan.fetchBytes)
    expect(origin.sent['direct.img.gcidx']).toBe(indexBytes.length)
  })

  for (const [name, what] of [
    ['trunc.img', /rejected \(IndexFormatError\): .*trunc\.img\.gcidx: truncated/],
    ['lies.img', /rejected \(IndexMismatchError\): chunk 0 .*hash to/],
    ['huge.img', /rejected \(IndexFormatError\): .*cannot be|rejected \(IndexFormatError\): .*truncated/],
    ['size.img', /rejected \(IndexFormatError\): .*cover \d+ bytes of a/],
    ['short.img', /rejected \(IndexMismatchError\): the file is \d+ bytes, the index describes|shorter than/],
    ['noidx.img', /noidx\.img\.gcidx not available \(OriginStatusError\)/]
  ] as const) {
    it(`a bad index (${name}) is refused with a clear message and the whole file is downloaded`, async () => {
      const want = name === 'short.img' ? NEW.subarray(0, NEW.length - 3) : NEW
      const r = await get(name)
      expect(r.code, r.stderr).toBe(0)
      expect(r.stderr).toMatch(what)
      expect(r.stderr).toMatch(/downloading the whole file/)
      expect(r.json.via).not.toBe('delta')
      expect(sha(await readFile(r.out))).toBe(sha(want))
    })
  }

  it('a --digest that NEW does not match: no output file, no temp file, a non-zero exit', async () => {
    const r = await get('digest.img', ['--digest', `sha256:${sha(OLD)}`])
    expect(r.code).not.toBe(0)
    expect(r.stderr).toMatch(/--digest names/)
    expect(r.stderr).toMatch(/DigestMismatch|does not match/i)
    await expect(readFile(r.out)).rejects.toThrow(/ENOENT/)
    expect((await readdir(dir)).filter(f => f.startsWith('.'))).toEqual([])
  })

  it('a peer that answers pieces with wrong bytes is caught: NEW is still byte-identical', async () => {
    // a cluster of its own (as test/read.spec.ts's corrupt-piece case): a fresh scheduler, seed and daemon
    const own = await startCluster({ daemons: 1 })
    clusters.push(own)
    const d = own.daemons[0]!.api
    const url = `${origin.url}/evil.img`
    const e = spawn(NODE, [join(ROOT, 'test', 'fixtures', 'evil-peer.js'), own.schedulerAddr, url, own.clusterKey], { stdio: ['ignore', 'pipe', 'inherit'] })
    evil.push(e)
    let served = 0
    await new Promise<void>(resolve => {
      createInterface({ input: e.stdout! }).on('line', l => {
        const m = JSON.parse(l)
        if (m.event === 'ready') resolve()
        if (m.event === 'served') served = m.served
      })
    })
    const r = await get('evil.img', [], d)
    expect(r.code, r.stderr).toBe(0)
    expect(r.json.via, r.stderr).toBe('delta')
    expect(sha(await readFile(r.out))).toBe(sha(NEW))
    expect(served).toBeGreaterThan(0)
    expect(await metric('guoce_peer_blamed_parents_total', d)).toBeGreaterThanOrEqual(1)
  })
})

describe('guoce index', () => {
  it('writes an index that describes the file, and refuses bad parameters', async () => {
    const ix = parseIndex(indexBytes)
    expect(ix.size).toBe(NEW.length)
    expect(ix.sha256.toString('hex')).toBe(sha(NEW))
    expect(encodeIndex(ix).equals(indexBytes)).toBe(true)
    const bad = await runGuoce(['index', oldPath, '--avg', '1000'])
    expect(bad.code).not.toBe(0)
    expect(bad.stderr).toMatch(/power of two/)
  })
})
