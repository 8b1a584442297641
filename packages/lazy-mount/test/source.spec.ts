/**
 * The daemon blob source against a hostile local API (a node:http server standing in for the daemon's
 * routes): wrong statuses, short and long bodies are errors, never bytes handed on; a failed task is asked
 * for again; ranges outside bounds are refused before any request.
 */
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import type { TaskReader, TaskRequest } from '@guoce/interface'
import { daemonBlobSource, readerBlobSource } from '../src/index.js'

const DIGEST = `sha256:${'ab'.repeat(32)}`

describe('daemon blob source', () => {
  let server: Server | undefined
  afterEach(async () => { if (server !== undefined) await new Promise(resolve => { server!.closeAllConnections(); server!.close(resolve) }) })

  async function daemon (content: (range: string, n: number) => { status: number, body: Buffer }): Promise<{ api: string, posts: () => number }> {
    let posts = 0; let n = 0
    server = createServer((req, res) => {
      if (req.method === 'POST' && req.url === '/api/v1/tasks') {
        posts++
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ taskId: 'cd'.repeat(32), access: 'ef'.repeat(32) }))
        return
      }
      if (req.headers['x-guoce-access'] !== 'ef'.repeat(32)) { res.writeHead(403).end(); return }
      const r = content(String(req.headers.range), n++)
      res.writeHead(r.status, { 'content-length': String(r.body.length) }).end(r.body)
    })
    await new Promise<void>(resolve => server!.listen(0, '127.0.0.1', resolve))
    return { api: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, posts: () => posts }
  }
  const blobUrl = (d: string): string => `http://127.0.0.1:1/v2/app/blobs/${d}`
  const signal = (): AbortSignal => AbortSignal.timeout(5_000)

  it('returns exactly the range asked for, with the task access token', async () => {
    const d = await daemon(range => { expect(range).toBe('bytes=4096-4195'); return { status: 206, body: Buffer.alloc(100, 7) } })
    const src = daemonBlobSource({ api: d.api, blobUrl })
    expect((await src.read(DIGEST, 4096, 100, signal())).equals(Buffer.alloc(100, 7))).toBe(true)
  })

  it('refuses a whole 200, a short body and a long body; asks for the task again after a failure', async () => {
    const answers = [{ status: 200, body: Buffer.alloc(100) }, { status: 206, body: Buffer.alloc(99) }, { status: 206, body: Buffer.alloc(101) }, { status: 502, body: Buffer.from('{}') }]
    const d = await daemon((_r, n) => answers[n]!)
    const src = daemonBlobSource({ api: d.api, blobUrl })
    await expect(src.read(DIGEST, 0, 100, signal())).rejects.toThrow(/status 200/)
    await expect(src.read(DIGEST, 0, 100, signal())).rejects.toThrow(/: 99 bytes$/)
    await expect(src.read(DIGEST, 0, 100, signal())).rejects.toThrow(/more bytes than asked for/)
    await expect(src.read(DIGEST, 0, 100, signal())).rejects.toThrow(/status 502/)
    expect(d.posts()).toBeGreaterThanOrEqual(2) // a refused answer drops the task; the next read starts it again
  })

  it('refuses bad digests and out-of-bounds ranges before asking anything', async () => {
    const d = await daemon(() => ({ status: 206, body: Buffer.alloc(1) }))
    const src = daemonBlobSource({ api: d.api, blobUrl })
    await expect(src.read('sha256:xyz', 0, 1, signal())).rejects.toThrow(/not a sha256 digest/)
    await expect(src.read(DIGEST, -1, 1, signal())).rejects.toThrow(/bad range/)
    await expect(src.read(DIGEST, 0, 2 ** 31, signal())).rejects.toThrow(/bad range/)
    expect(d.posts()).toBe(0)
  })
})

describe('reader blob source (the daemon\'s reader in process)', () => {
  /** A TaskReader stand-in: `answers[n]` is the n-th read's result (bytes, or an error to throw). */
  function reader (answers: Array<Uint8Array | Error>): { r: TaskReader, stats: TaskRequest[], reads: Array<{ taskId: string, offset: number, length: number }> } {
    const stats: TaskRequest[] = []; const reads: Array<{ taskId: string, offset: number, length: number }> = []
    let n = 0
    const r = {
      async stat (t: { request?: TaskRequest }) { stats.push(t.request!); return { taskId: `${stats.length}`.padStart(64, '0'), contentLength: 1 << 20, pieceLength: 1 << 17, pieceCount: 8 } },
      async read (q: { taskId: string, offset: number, length: number }) { reads.push({ taskId: q.taskId, offset: q.offset, length: q.length }); const a = answers[n++]!; if (a instanceof Error) throw a; return a },
      stream () { throw new Error('not used') }
    } as unknown as TaskReader
    return { r, stats, reads }
  }
  const blobUrl = (d: string): string => `http://127.0.0.1:1/v2/app/blobs/${d}`
  const signal = (): AbortSignal => AbortSignal.timeout(5_000)

  it('reads exactly the range from a ranged task of 128 KiB pieces named once; a failed read starts the task again; a short answer is an error', async () => {
    const { r, stats, reads } = reader([Buffer.alloc(100, 7), Buffer.alloc(100, 8), new Error('task failed'), Buffer.alloc(99)])
    const src = readerBlobSource({ reader: r, blobUrl })
    expect((await src.read(DIGEST, 4096, 100, signal())).equals(Buffer.alloc(100, 7))).toBe(true)
    expect((await src.read(DIGEST, 0, 100, signal())).equals(Buffer.alloc(100, 8))).toBe(true)
    expect(stats).toEqual([{ url: blobUrl(DIGEST), ranged: true, pieceLength: 128 * 1024 }])
    await expect(src.read(DIGEST, 0, 100, signal())).rejects.toThrow(/task failed/)
    await expect(src.read(DIGEST, 0, 100, signal())).rejects.toThrow(/: 99 bytes$/)
    expect(stats).toHaveLength(2)
    expect(reads.map(x => x.taskId)).toEqual(['1', '1', '1', '2'].map(i => i.padStart(64, '0')))
    await expect(src.read('sha256:xyz', 0, 1, signal())).rejects.toThrow(/not a sha256 digest/)
    await expect(src.read(DIGEST, 0, 2 ** 31, signal())).rejects.toThrow(/bad range/)
    expect(reads).toHaveLength(4)
  })
})
