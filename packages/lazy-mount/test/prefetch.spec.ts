/**
 * Prefetch traces as a user makes them: `guoce image mount --record-trace` records a workload's first reads,
 * `guoce image convert --prefetch-trace` stores them in the image, and a fresh mount fetches them in the
 * background so the same workload then fetches nothing itself. Malformed traces are refused.
 */
import { readFile, rm, writeFile, mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { runGuoce, startGuoce, stopAll, until } from '@guoce/testkit'
import { convertedLayers, fileChunks, loadChunkTable, readManifest, parseOciRef } from '@guoce/image'
import { MEDIA_TYPE_PREFETCH, parseTrace } from '../src/index.js'
import { buildImage, sh, sweepMounts, tempDir } from './helpers.js'

const WORKLOAD = 'cd "$1" && sha256sum data/multi etc/passwd usr/lib/multi-again'

describe('prefetch traces', () => {
  let work = ''
  let img: { src: string, lazy: string, flat: string }
  beforeAll(async () => {
    work = await tempDir('prefetch')
    img = await buildImage(work, 64 * 1024)
  })
  afterEach(async () => {
    await stopAll()
    expect(await sweepMounts(work), 'mounts left behind').toEqual([])
  })
  afterAll(async () => {
    await stopAll()
    await sweepMounts(work)
    if (work !== '') await rm(work, { recursive: true, force: true })
  })

  it('records first reads, stores them in the image, and a mount prefetches them so the workload fetches nothing', async () => {
    const expected = (await sh(WORKLOAD, [img.flat])).stdout
    const trace = join(work, 'trace.json')
    await mkdir(join(work, 'a'))
    const rec = await startGuoce(['image', 'mount', `oci:${img.lazy}:v1`, join(work, 'a'), '--state', join(work, 'state-a'), '--chunks', join(work, 'chunks-a'), '--record-trace', trace])
    expect((await sh(WORKLOAD, [join(work, 'a')])).stdout).toBe(expected)
    rec.child.kill('SIGTERM')
    expect(await rec.exited).toEqual({ code: 0, signal: null })
    const t = parseTrace(await readFile(trace), trace)
    expect(t.chunks.length).toBeGreaterThan(10) // 700 KB of data/multi in 64 KiB chunks
    // the file chunks read, resolved from the kernel's reads through the layers' metadata
    const files = new Set(t.files!.map(f => `${f.path}#${f.chunk}`))
    expect(files).toContain('etc/passwd#0')
    expect(files).toContain('data/multi#0')
    expect(files).toContain('usr/lib/multi-again#0')
    // and little else: names of the same blocks (chunks deduplicated with what was read), and the few chunks the
    // kernel reads ahead of a sequential reader on the blob file (past data/multi's end)
    const addrs = new Map<string, string>()
    for (const l of await convertedLayers(`oci:${img.lazy}:v1`)) {
      for (const c of fileChunks((await loadChunkTable(l.meta)).reader)) addrs.set(`${c.path}#${c.chunk}`, `${c.blob}/${c.blkaddr}`)
    }
    const readAt = new Set([...addrs].filter(([k]) => /^(etc\/passwd|data\/multi|usr\/lib\/multi-again)#\d+$/.test(k)).map(([, a]) => a))
    const extra = new Set([...files].filter(f => !readAt.has(addrs.get(f)!)).map(f => addrs.get(f)!))
    expect(extra.size, [...extra].join(' ')).toBeLessThanOrEqual(4)

    const conv = await runGuoce(['image', 'convert', '--source', `oci:${img.src}:v1`, '--target', `oci:${join(work, 'lazy2')}:v1`, '--chunk-size', '64KiB', '--prefetch-trace', trace, '--json'])
    expect(conv.code, conv.stderr).toBe(0)
    const { manifest } = await readManifest(parseOciRef(`oci:${join(work, 'lazy2')}:v1`))
    const layer = manifest.layers.filter(l => l.mediaType === MEDIA_TYPE_PREFETCH)
    expect(layer).toHaveLength(1)
    // the stored list names the new image's entries (the files read are packed apart from the rest)
    const stored = parseTrace(await readFile(join(work, 'lazy2', 'blobs', 'sha256', layer[0]!.digest.slice(7))), 'stored')
    expect(stored.files).toBe(undefined)
    expect(stored.chunks.length).toBeGreaterThan(10)
    expect(stored.chunks).not.toEqual(t.chunks)
    expect(stored.chunks.every(c => c.extent !== undefined)).toBe(true) // fetchable before any chunk table is here
    expect(JSON.parse(conv.stdout).manifestDigest).not.toBe(undefined)
    const check = await runGuoce(['image', 'check', `oci:${join(work, 'lazy2')}:v1`])
    expect(check.code, check.stderr).toBe(0)

    await mkdir(join(work, 'b'))
    const p = await startGuoce(['image', 'mount', `oci:${join(work, 'lazy2')}:v1`, join(work, 'b'), '--state', join(work, 'state-b'), '--chunks', join(work, 'chunks-b')])
    await until(() => p.stderr.some(l => l.includes('"prefetched"')), 'prefetch to finish', 30_000)
    const done = JSON.parse(p.stderr.find(l => l.includes('"prefetched"'))!) as { chunks: number }
    expect(done.chunks).toBe(stored.chunks.length)
    expect((await sh(WORKLOAD, [join(work, 'b')])).stdout).toBe(expected)
    p.child.kill('SIGTERM')
    expect(await p.exited).toEqual({ code: 0, signal: null })
    const stats = JSON.parse(p.stderr.find(l => l.includes('"unmounted"'))!) as { store: { fetches: number } }
    expect(stats.store.fetches).toBe(stored.chunks.length) // all by prefetch: the workload itself fetched nothing
  })

  it('refuses malformed traces before writing anything', async () => {
    expect(() => parseTrace(Buffer.from('{"version":1,"chunks":[{"blob":"sha256:zz","blkaddr":1}]}'), 't')).toThrow(/bad prefetch trace entry/)
    expect(() => parseTrace(Buffer.from('{"version":2,"chunks":[]}'), 't')).toThrow(/version 1/)
    expect(() => parseTrace(Buffer.from('{"version":1,"chunks":[],"files":[{"path":"/etc/passwd","chunk":0}]}'), 't')).toThrow(/bad prefetch trace file/)
    expect(() => parseTrace(Buffer.from('{"version":1,"chunks":[],"files":[{"path":"etc/passwd","chunk":-1}]}'), 't')).toThrow(/bad prefetch trace file/)
    const entry = (extent: Record<string, unknown>): Buffer => Buffer.from(JSON.stringify({ version: 1, chunks: [{ blob: `sha256:${'a'.repeat(64)}`, blkaddr: 0, extent: { length: 4096, digest: 'b'.repeat(64), compression: 'zstd', storedOffset: 0, storedLength: 100, ...extent } }] }))
    expect(parseTrace(entry({}), 't').chunks[0]!.extent).toMatchObject({ length: 4096, storedLength: 100 })
    expect(() => parseTrace(entry({ storedLength: 4097 }), 't')).toThrow(/bad prefetch trace entry extent/) // more stored than it decodes to
    expect(() => parseTrace(entry({ length: 2 ** 40 }), 't')).toThrow(/bad prefetch trace entry extent/) // past the allocation bound
    expect(() => parseTrace(entry({ compression: 'lz4' }), 't')).toThrow(/bad prefetch trace entry extent/)
    expect(() => parseTrace(entry({ compression: 'none' }), 't')).toThrow(/bad prefetch trace entry extent/) // stored as is, yet shorter
    expect(() => parseTrace(entry({ digest: 'zz' }), 't')).toThrow(/bad prefetch trace entry extent/)
    expect(() => parseTrace(Buffer.from('not json'), 't')).toThrow(/not JSON/)
    expect(() => parseTrace(Buffer.alloc(200_000_000, 0x20), 't')).toThrow(/too large/)
    const bad = join(work, 'bad.json')
    await writeFile(bad, '{"version":1,"chunks":[{"blob":"sha256:' + 'a'.repeat(64) + '","blkaddr":-1}]}')
    const target = join(work, 'never')
    const r = await runGuoce(['image', 'convert', '--source', `oci:${img.src}:v1`, '--target', `oci:${target}:v1`, '--prefetch-trace', bad])
    expect(r.code).not.toBe(0)
    expect(r.stderr).toMatch(/bad prefetch trace entry/)
    await expect(readFile(join(target, 'index.json'))).rejects.toThrow()
    // a trace naming a blob the image does not have
    await writeFile(bad, '{"version":1,"chunks":[{"blob":"sha256:' + 'a'.repeat(64) + '","blkaddr":0}]}')
    const r2 = await runGuoce(['image', 'convert', '--source', `oci:${img.src}:v1`, '--target', `oci:${join(work, 'other')}:v1`, '--prefetch-trace', bad])
    expect(r2.code).not.toBe(0)
    expect(r2.stderr).toMatch(/is not in/)
  })
})
