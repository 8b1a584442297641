/**
 * The C cut-point loop (@guoce/native-cdc) against the JS one: the same cut points on random data, on data
 * with long runs (zeros, a repeated pattern: the max-length and min-length paths), across parameters and
 * with and without end of file; and chunkFile gives the same index either way.
 */
import { describe, it, expect, afterEach } from 'vitest'
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { chunkFile, cutBuffer, nativeCutter, DEFAULT_PARAMS, type ChunkParams } from '../src/index.js'

const dirs: string[] = []
afterEach(async () => { for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true }) })

describe('native FastCDC', () => {
  it('is built here and cuts exactly where the JS loop cuts', async () => {
    const native = await nativeCutter()
    expect(native, '@guoce/native-cdc is built by npm run build').toBeDefined()
    const pattern = Buffer.alloc(3 * 1024 * 1024)
    for (let i = 0; i < pattern.length; i++) pattern[i] = (i * 7) & 0xff
    const inputs = [randomBytes(5 * 1024 * 1024 + 333), Buffer.alloc(2 * 1024 * 1024), pattern, Buffer.concat([randomBytes(100_000), Buffer.alloc(300_000), randomBytes(700_001)]), randomBytes(5000)]
    const params: ChunkParams[] = [DEFAULT_PARAMS, { min: 16384, avg: 65536, max: 262144 }, { min: 1024, avg: 4096, max: 8192 }, { min: 2048, avg: 131072, max: 4 * 1024 * 1024 }]
    for (const buf of inputs) {
      for (const p of params) {
        for (const eof of [true, false]) {
          const a: number[] = []; const b: number[] = []
          const usedJs = cutBuffer(buf, buf.length, eof, p, a)
          const usedC = native!(buf, buf.length, eof, p, b)
          expect(b, `len ${buf.length} avg ${p.avg} eof ${eof}`).toEqual(a)
          expect(usedC).toBe(usedJs)
        }
      }
    }
  })

  it('chunkFile gives the same chunks with either loop', async () => {
    const d = await mkdtemp(join(tmpdir(), 'guoce-cdc-')); dirs.push(d)
    const f = join(d, 'f'); await writeFile(f, randomBytes(20 * 1024 * 1024 + 17))
    const js = await chunkFile(f, DEFAULT_PARAMS, { cutter: cutBuffer })
    const c = await chunkFile(f, DEFAULT_PARAMS)
    expect(c.chunks.map(x => [x.offset, x.length, x.digest.toString('hex')])).toEqual(js.chunks.map(x => [x.offset, x.length, x.digest.toString('hex')]))
    expect(c.sha256.equals(js.sha256)).toBe(true)
  })
})
