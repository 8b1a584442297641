/**
 * Chunk compression off the main thread, for convertLayer.
 *
 * zstd through node:zlib's async API runs on libuv's pool but pays a stream object and several JS callbacks per
 * call: measured here at 103 MB per CPU second on real chunks against 165 for the synchronous one-shot call as
 * below (bench/convert, choice section). So chunks go to worker threads that call zstdCompressSync; a chunk's bytes are
 * copied once into a buffer of its own and transferred both ways (never a pooled or shared buffer). Each call
 * pledges the chunk's size and a window just large enough for it: same bytes out as zstd's defaults for that
 * level, about 10 % less CPU (smaller tables to set up; bench/convert).
 *
 * Who owns what: a CompressorPool owns its workers until close(); a chunk's buffer belongs to the pool from
 * compress() until its promise settles. A worker that dies fails every chunk it held and the pool.
 */
import { availableParallelism } from 'node:os'
import { Worker } from 'node:worker_threads'
import { MIN_COMPRESSION_SAVING, zstdWindowLog, type ChunkCompression } from './chunks.js'

/** Most compression workers a conversion starts. @default 4 */
export const MAX_COMPRESS_WORKERS = 4

const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads')
const z = require('node:zlib')
parentPort.on('message', ({ id, data, level, windowLog, keepAtMost }) => {
  const src = Buffer.from(data.buffer, data.byteOffset, data.byteLength)
  const params = { [z.constants.ZSTD_c_compressionLevel]: level, [z.constants.ZSTD_c_checksumFlag]: 0, [z.constants.ZSTD_c_windowLog]: windowLog }
  const out = z.zstdCompressSync(src, { params, pledgedSrcSize: src.length })
  if (out.length <= keepAtMost) {
    const own = new Uint8Array(out.length)
    own.set(out)
    parentPort.postMessage({ id, zstd: true, data: own }, [own.buffer])
  } else {
    parentPort.postMessage({ id, zstd: false, data }, [data.buffer])
  }
})
`

interface Pending { resolve: (r: { compression: ChunkCompression, bytes: Buffer }) => void, reject: (err: Error) => void }

export class CompressorPool {
  private readonly workers: Worker[] = []
  private readonly pending = new Map<number, Pending>()
  private readonly load: number[] = []
  private readonly owner = new Map<number, number>()
  private readonly level: number
  private nextId = 0
  private failed: Error | undefined

  constructor (opts: { level: number, workers?: number }) {
    this.level = opts.level
    const n = opts.workers ?? Math.min(MAX_COMPRESS_WORKERS, Math.max(1, availableParallelism() - 1))
    for (let i = 0; i < n; i++) {
      const w = new Worker(WORKER_SOURCE, { eval: true })
      w.on('message', (m: { id: number, zstd: boolean, data: Uint8Array }) => {
        const p = this.pending.get(m.id)
        if (p === undefined) return
        this.pending.delete(m.id)
        this.load[this.owner.get(m.id)!]!--
        this.owner.delete(m.id)
        p.resolve({ compression: m.zstd ? 'zstd' : 'none', bytes: Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength) })
      })
      const fail = (err: Error): void => {
        this.failed ??= err
        for (const [id, p] of this.pending) { if (this.owner.get(id) === i) { this.pending.delete(id); p.reject(err) } }
      }
      w.on('error', fail)
      w.on('exit', code => { if (code !== 0) fail(new Error(`compression worker exited with code ${code}`)) })
      this.workers.push(w)
      this.load.push(0)
    }
  }

  /** Compresses a chunk (copied here); resolves with zstd bytes when they save MIN_COMPRESSION_SAVING, else the chunk. */
  async compress (chunk: Uint8Array): Promise<{ compression: ChunkCompression, bytes: Buffer }> {
    if (this.failed !== undefined) throw this.failed
    const data = new Uint8Array(chunk.length)
    data.set(chunk)
    let w = 0
    for (let i = 1; i < this.load.length; i++) if (this.load[i]! < this.load[w]!) w = i
    const id = this.nextId++
    return await new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject })
      this.owner.set(id, w)
      this.load[w]!++
      this.workers[w]!.postMessage({ id, data, level: this.level, windowLog: zstdWindowLog(chunk.length), keepAtMost: Math.floor(chunk.length * (1 - MIN_COMPRESSION_SAVING)) }, [data.buffer])
    })
  }

  async close (): Promise<void> {
    const err = new Error('compressor pool closed')
    for (const p of this.pending.values()) p.reject(err)
    this.pending.clear()
    await Promise.all(this.workers.map(async w => await w.terminate()))
  }
}
