/**
 * `guoce index FILE` and the delta path of `guoce get URL -O NEW --seed-from OLD` (thin wiring over
 * @guoce/delta and the peer daemon's local API).
 *
 * The delta path: URL.gcidx comes through the daemon like any file (the swarm, else the origin), bounded
 * and parsed as hostile; OLD is chunked with the index's parameters; chunks the index lists that OLD holds
 * are copied, the rest are Range reads of a ranged task of URL on the daemon (only the pieces those ranges
 * touch are fetched, from peers or the origin, each piece verified against the seed's digest); every chunk
 * is checked against the index and the whole against the index's sha256 and --digest, in a temp file
 * renamed onto NEW. Any fault of the index (missing, malformed, lying) gives a message on stderr and
 * `null`: the caller then downloads the whole file as usual.
 */
import { constants as fsConstants } from 'node:fs'
import { access, open, rename, rm, writeFile } from 'node:fs/promises'
import { basename, dirname, resolve } from 'node:path'
import { pieceLayout, redactUrl } from '@guoce/content'
import { InvalidParametersError, TaskFailedError, type TaskProgress } from '@guoce/interface'
import {
  applyDelta, chunkFile, encodeIndex, fileDigest, indexOf, parseIndex, checkParams, IndexMismatchError, INDEX_SUFFIX,
  MAX_INDEX_BYTES, MAX_INDEX_CHUNKS, type ChunkIndex, type ChunkParams, type DeltaResult, type RangeSource
} from '@guoce/delta'
import { api, errorFrom, callerCwd, fmtBytes, tempFor } from './get.js'
import { parse, sizeBytes } from './args.js'
import { DEFAULT_PARAMS } from '@guoce/delta'

export const INDEX_USAGE = `Usage: guoce index FILE [-O OUT] [--avg 16KiB] [--json]

Writes OUT (default FILE${INDEX_SUFFIX}): a content-defined chunk index of FILE (FastCDC; min = avg/4,
max = avg*4; format in doc/FORMAT.md). Publish it next to FILE on the origin: \`guoce get URL -O NEW
--seed-from OLD\` then fetches only the chunks of URL that OLD does not hold.
`

export async function indexCmd (argv: string[]): Promise<number> {
  const { values: v, positionals } = parse(argv, { output: { type: 'string', short: 'O' }, avg: { type: 'string' } }, true)
  if (v.help === true) { process.stdout.write(INDEX_USAGE); return 0 }
  if (positionals.length !== 1) throw new InvalidParametersError('guoce index needs exactly one FILE')
  const file = resolve(callerCwd(), positionals[0]!)
  const avg = sizeBytes(v.avg as string | undefined, '--avg')
  const params: ChunkParams = avg === undefined ? { ...DEFAULT_PARAMS } : { min: avg / 4, avg, max: avg * 4 }
  try { checkParams(params, '--avg') } catch (err) { throw new InvalidParametersError((err as Error).message) }
  const out = resolve(callerCwd(), (v.output as string | undefined) ?? `${positionals[0]!}${INDEX_SUFFIX}`)
  await access(file, fsConstants.R_OK).catch(() => { throw new InvalidParametersError(`cannot read ${file}`) })
  const t0 = Date.now()
  const ix = indexOf(await chunkFile(file, params, { maxChunks: MAX_INDEX_CHUNKS }), params)
  const tmp = tempFor(out)
  try {
    await writeFile(tmp, encodeIndex(ix), { flag: 'wx' })
    await rename(tmp, out)
  } finally { await rm(tmp, { force: true }) }
  const summary = { event: 'indexed', file, index: out, size: ix.size, digest: fileDigest(ix), chunks: ix.count, ...params, seconds: (Date.now() - t0) / 1000 }
  process.stdout.write(v.json === true ? JSON.stringify(summary) + '\n' : `${basename(out)}: ${ix.count} chunks of ${basename(file)} (${fmtBytes(ix.size)}, ${summary.digest})\n`)
  return 0
}

/** The index's URL: URL's path + .gcidx (its query kept: a presigned URL signs the path it names). */
export function indexUrlOf (url: string): string {
  const u = new URL(url)
  u.pathname += INDEX_SUFFIX
  return u.toString()
}

export interface DeltaGetInit {
  /** `swarm` (default): the index and the missing ranges through the daemon; `origin`: both straight from the origin */
  via?: 'swarm' | 'origin'
  base: string
  url: string
  headers: Record<string, string>
  digest?: string
  output: string
  old: string
  signal: AbortSignal
}

export interface DeltaGetResult extends DeltaResult {
  indexBytes: number
  /**
   * Bytes fetched for the new file: through the swarm, what the daemon's ranged task fetched (whole pieces,
   * from its progress); from the origin, the ranges asked for.
   */
  pieceBytes: number
  pieceLength?: number
  taskId?: string
  via: 'swarm' | 'origin'
}

const ACCESS = 'x-guoce-access'

async function startTask (base: string, body: Record<string, unknown>, signal: AbortSignal): Promise<{ taskId: string, access: string }> {
  const res = await api(base, '/api/v1/tasks', { method: 'POST', body, signal })
  if (res.status !== 200) throw await errorFrom(res)
  const j = await res.json() as TaskProgress & { access: string }
  return { taskId: j.taskId, access: j.access }
}

/** The whole of a (small) task's content through the daemon, at most `max` bytes. */
async function readWhole (base: string, t: { taskId: string, access: string }, max: number, what: string, signal: AbortSignal): Promise<Buffer> {
  const res = await api(base, `/api/v1/tasks/${t.taskId}/content`, { access: t.access, signal })
  if (res.status !== 200) throw await errorFrom(res)
  const declared = Number(res.headers.get('content-length') ?? NaN)
  if (!(declared <= max)) { await res.body?.cancel(); throw new IndexMismatchError(`${what}: ${Number.isNaN(declared) ? 'no length' : `${declared} bytes`}: an index is at most ${max} bytes`) }
  const buf = Buffer.allocUnsafe(declared)
  let got = 0
  for await (const part of res.body as unknown as AsyncIterable<Uint8Array>) {
    if (got + part.byteLength > declared) throw new IndexMismatchError(`${what}: more bytes than the ${declared} announced`)
    buf.set(part, got); got += part.byteLength
  }
  if (got !== declared) throw new IndexMismatchError(`${what}: ${got} of ${declared} bytes`)
  return buf
}

/** Byte ranges of a ranged task on the daemon, checked against the size the index declares. */
function daemonRanges (base: string, t: { taskId: string, access: string }, size: number): RangeSource {
  return {
    async read (offset, length, signal) {
      const res = await api(base, `/api/v1/tasks/${t.taskId}/content`, { access: t.access, signal, headers: { range: `bytes=${offset}-${offset + length - 1}` } })
      if (res.status !== 206) {
        if (res.status === 416) { await res.body?.cancel(); throw new IndexMismatchError(`the file is shorter than the ${size} bytes the index describes`) }
        throw await errorFrom(res)
      }
      const m = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(res.headers.get('content-range') ?? '')
      if (m === null || Number(m[1]) !== offset || Number(m[2]) !== offset + length - 1) { await res.body?.cancel(); throw new TaskFailedError(`the daemon answered range ${offset}+${length} with ${res.headers.get('content-range') ?? 'no Content-Range'}`) }
      if (Number(m[3]) !== size) { await res.body?.cancel(); throw new IndexMismatchError(`the file is ${m[3]} bytes, the index describes ${size}`) }
      const buf = Buffer.allocUnsafe(length)
      let got = 0
      for await (const part of res.body as unknown as AsyncIterable<Uint8Array>) {
        if (got + part.byteLength > length) throw new TaskFailedError(`the daemon sent more than range ${offset}+${length}`)
        buf.set(part, got); got += part.byteLength
      }
      if (got !== length) throw new TaskFailedError(`the daemon sent ${got} of range ${offset}+${length}`)
      return buf
    }
  }
}

/** Body of a response, exactly `length` bytes (more or fewer is an error). */
async function bodyOf (res: Response, length: number, what: string): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(length)
  let got = 0
  for await (const part of res.body as unknown as AsyncIterable<Uint8Array>) {
    if (got + part.byteLength > length) throw new TaskFailedError(`${what}: more than ${length} bytes`)
    buf.set(part, got); got += part.byteLength
  }
  if (got !== length) throw new TaskFailedError(`${what}: ${got} of ${length} bytes`)
  return buf
}

/**
 * Byte ranges straight from the origin (--delta-source origin): exact chunk ranges, no piece rounding, no
 * swarm. Pinned to the first answer's ETag (If-Range): a file that changes meanwhile is refused, not mixed.
 */
function originRanges (url: string, headers: Record<string, string>, size: number, counter: { bytes: number }): RangeSource {
  let etag: string | undefined
  return {
    async read (offset, length, signal) {
      const what = `${redactUrl(url)} range ${offset}+${length}`
      const res = await fetch(url, { headers: { ...headers, range: `bytes=${offset}-${offset + length - 1}`, ...(etag !== undefined ? { 'if-range': etag } : {}) }, signal })
      if (res.status !== 206) { await res.body?.cancel(); throw new IndexMismatchError(`${what}: the origin answered ${res.status}${etag !== undefined && res.status === 200 ? ' (the file changed)' : ''}`) }
      const m = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(res.headers.get('content-range') ?? '')
      if (m === null || Number(m[1]) !== offset || Number(m[2]) !== offset + length - 1) { await res.body?.cancel(); throw new TaskFailedError(`${what}: answered with ${res.headers.get('content-range') ?? 'no Content-Range'}`) }
      if (Number(m[3]) !== size) { await res.body?.cancel(); throw new IndexMismatchError(`the file is ${m[3]} bytes, the index describes ${size}`) }
      etag ??= res.headers.get('etag') ?? undefined
      const b = await bodyOf(res, length, what)
      counter.bytes += length
      return b
    }
  }
}

/** The index straight from the origin, at most `max` bytes. */
async function originIndex (url: string, headers: Record<string, string>, max: number, signal: AbortSignal): Promise<Buffer> {
  const res = await fetch(url, { headers, signal }).catch((err: Error) => { throw new TaskFailedError(`${redactUrl(url)}: ${(err.cause as Error | undefined)?.message ?? err.message}`) })
  if (res.status !== 200) { await res.body?.cancel(); throw new TaskFailedError(`${redactUrl(url)}: HTTP ${res.status}`) }
  const declared = Number(res.headers.get('content-length') ?? NaN)
  if (!(declared <= max)) { await res.body?.cancel(); throw new IndexMismatchError(`${redactUrl(url)}: ${Number.isNaN(declared) ? 'no length' : `${declared} bytes`}: an index is at most ${max} bytes`) }
  return await bodyOf(res, declared, redactUrl(url))
}

/**
 * The delta path of `guoce get --seed-from OLD`. Returns null after a message on stderr when the index is
 * missing or bad (the caller downloads the whole file); throws only when interrupted or OLD is unusable.
 */
export async function deltaGet (o: DeltaGetInit): Promise<DeltaGetResult | null> {
  const old = resolve(callerCwd(), o.old)
  const fh = await open(old, 'r').catch((err: NodeJS.ErrnoException) => { throw new InvalidParametersError(`--seed-from ${old}: ${err.code ?? err.message}`) })
  const isFile = (await fh.stat()).isFile()
  await fh.close()
  if (!isFile) throw new InvalidParametersError(`--seed-from ${old}: not a regular file`)
  const indexUrl = indexUrlOf(o.url)
  const withHeaders = Object.keys(o.headers).length > 0 ? { headers: o.headers } : {}
  let stage = 'fetching'
  const tmp = tempFor(o.output)
  try {
    const direct = o.via === 'origin'
    const bytes = direct ? await originIndex(indexUrl, o.headers, MAX_INDEX_BYTES, o.signal) : await readWhole(o.base, await startTask(o.base, { url: indexUrl, ...withHeaders }, o.signal), MAX_INDEX_BYTES, redactUrl(indexUrl), o.signal)
    stage = 'reading'
    const ix: ChunkIndex = parseIndex(bytes, redactUrl(indexUrl))
    if (o.digest !== undefined && fileDigest(ix) !== o.digest) throw new IndexMismatchError(`it describes a file of ${fileDigest(ix)}, --digest names ${o.digest}`)
    stage = 'using'
    const counter = { bytes: 0 }
    const t = direct ? undefined : await startTask(o.base, { url: o.url, ranged: true, ...withHeaders }, o.signal)
    const source = t === undefined ? originRanges(o.url, o.headers, ix.size, counter) : daemonRanges(o.base, t, ix.size)
    const r = await applyDelta({ index: ix, old, out: tmp, source, signal: o.signal })
    if (r.fetchChunks === 0 && ix.count > 0) {
      // nothing fetched: still bind the index to the file the origin serves now (its size and last chunk)
      const last = ix.count - 1
      const b = await source.read(ix.offsets[last]!, ix.lengths[last]!, o.signal)
      if (!Buffer.from(b).equals(await readAt(tmp, ix.offsets[last]!, ix.lengths[last]!))) throw new IndexMismatchError(`its last chunk is not the file's (a stale index?)`)
    }
    if (o.digest !== undefined && r.digest !== o.digest) throw new IndexMismatchError(`the assembled file is ${r.digest}, --digest names ${o.digest}`)
    await rename(tmp, o.output)
    const d = await open(dirname(o.output), 'r')
    try { await d.sync() } finally { await d.close() }
    if (t === undefined) return { ...r, indexBytes: bytes.length, pieceBytes: counter.bytes, via: 'origin' }
    const p = await (await api(o.base, `/api/v1/tasks/${t.taskId}`, { signal: o.signal })).json() as TaskProgress
    return { ...r, indexBytes: bytes.length, pieceBytes: p.bytesDone, ...(p.contentLength != null ? { pieceLength: pieceLayout(p.contentLength).pieceLength } : {}), taskId: t.taskId, via: 'swarm' }
  } catch (err) {
    if (o.signal.aborted) throw err
    if ((err as NodeJS.ErrnoException).code === 'ENOSPC') throw err
    process.stderr.write(`guoce: index ${redactUrl(indexUrl)} ${stage === 'fetching' ? 'not available' : 'rejected'} (${(err as Error).name}): ${(err as Error).message}; downloading the whole file\n`)
    return null
  } finally {
    await rm(tmp, { force: true })
  }
}

async function readAt (path: string, offset: number, length: number): Promise<Buffer> {
  const fh = await open(path, 'r')
  try {
    const b = Buffer.alloc(length)
    await fh.read(b, 0, length, offset)
    return b
  } finally { await fh.close() }
}
