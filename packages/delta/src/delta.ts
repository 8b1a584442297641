/**
 * A delta update: the new file an index describes, assembled from the chunks of an old file that the index
 * lists (copied locally) and the byte ranges of the new file that no old chunk covers (fetched from a
 * source: the peer daemon's ranged reader, or the origin). Every chunk, copied or fetched, is checked against
 * the index before it is written, and the whole result against the index's file sha256, so what is written
 * is the file the index describes or nothing usable (the caller writes to a temp file and renames).
 *
 * Who owns what: applyDelta owns the two file handles it opens and the fetches it starts; it aborts the
 * fetches still running when it fails. The caller owns the output path (a temp file it removes on failure).
 */
import { createHash } from 'node:crypto'
import { open } from 'node:fs/promises'
import { chunkFile, type ChunkFileResult, type Cutter } from './fastcdc.js'
import { chunkDigest, type ChunkIndex } from './gcidx.js'
import { IndexMismatchError } from './errors.js'
import { DELTA_FETCH_CONCURRENCY, MAX_FETCH_RUN, MAX_INDEX_CHUNKS } from './constants.js'

/** Where the bytes of the new file come from: exactly `length` bytes from `offset`, or throws. */
export interface RangeSource {
  read: (offset: number, length: number, signal: AbortSignal) => Promise<Uint8Array>
}

/** One step of a delta update, in file order: a chunk copied from the old file, or a run of chunks fetched. */
export type DeltaStep =
  | { kind: 'copy', chunk: number, from: number }
  | { kind: 'fetch', first: number, last: number, offset: number, length: number }

export interface DeltaPlan {
  steps: DeltaStep[]
  reusedChunks: number
  reusedBytes: number
  fetchChunks: number
  /** Bytes of the new file to fetch: the chunks the old file does not hold. */
  fetchBytes: number
  ranges: number
}

/** Which chunks of `ix` the old file's chunks provide (by sha256), and the ranges left to fetch. */
export function planDelta (ix: ChunkIndex, old: ChunkFileResult, maxRun = MAX_FETCH_RUN): DeltaPlan {
  const have = new Map<string, number>()
  for (const c of old.chunks) if (!have.has(c.digest.toString('hex'))) have.set(c.digest.toString('hex'), c.offset)
  const steps: DeltaStep[] = []
  const plan: DeltaPlan = { steps, reusedChunks: 0, reusedBytes: 0, fetchChunks: 0, fetchBytes: 0, ranges: 0 }
  let run: Extract<DeltaStep, { kind: 'fetch' }> | undefined
  for (let i = 0; i < ix.count; i++) {
    const len = ix.lengths[i]!
    const from = have.get(chunkDigest(ix, i).toString('hex'))
    if (from !== undefined) {
      run = undefined
      steps.push({ kind: 'copy', chunk: i, from })
      plan.reusedChunks++; plan.reusedBytes += len
      continue
    }
    plan.fetchChunks++; plan.fetchBytes += len
    if (run !== undefined && run.length + len <= maxRun) { run.last = i; run.length += len; continue }
    run = { kind: 'fetch', first: i, last: i, offset: ix.offsets[i]!, length: len }
    steps.push(run)
    plan.ranges++
  }
  return plan
}

export interface ApplyDeltaInit {
  index: ChunkIndex
  /** The old file (read only). */
  old: string
  /** Where the new file is written (created or truncated). */
  out: string
  source: RangeSource
  signal?: AbortSignal
  /** The old file already chunked with the index's parameters (else it is chunked here). */
  oldChunks?: ChunkFileResult
  cutter?: Cutter
  /** @default DELTA_FETCH_CONCURRENCY */
  concurrency?: number
}

export interface DeltaResult extends Omit<DeltaPlan, 'steps'> {
  chunks: number
  size: number
  /** `sha256:HEX` of what was written (equal to the index's file digest). */
  digest: string
}

/**
 * Writes the file `index` describes to `out`; throws IndexMismatchError when a chunk (copied or fetched) or
 * the whole does not hash to what the index lists, or what the source throws.
 */
export async function applyDelta (o: ApplyDeltaInit): Promise<DeltaResult> {
  const ix = o.index
  const old = o.oldChunks ?? await chunkFile(o.old, ix.params, { maxChunks: MAX_INDEX_CHUNKS * 4, ...(o.signal !== undefined ? { signal: o.signal } : {}), ...(o.cutter !== undefined ? { cutter: o.cutter } : {}) })
  const plan = planDelta(ix, old)
  const stop = new AbortController()
  const signal = o.signal !== undefined ? AbortSignal.any([o.signal, stop.signal]) : stop.signal
  const fetches = plan.steps.filter((s): s is Extract<DeltaStep, { kind: 'fetch' }> => s.kind === 'fetch')
  const started = new Map<DeltaStep, Promise<Uint8Array>>()
  let next = 0
  const startMore = (limit: number): void => {
    while (next < fetches.length && started.size < limit) {
      const s = fetches[next++]!
      const p = o.source.read(s.offset, s.length, signal)
      p.catch(() => {}) // awaited in order below; a failure there aborts the rest
      started.set(s, p)
    }
  }
  const concurrency = Math.max(1, o.concurrency ?? DELTA_FETCH_CONCURRENCY)
  const oldFh = await open(o.old, 'r')
  const outFh = await open(o.out, 'w', 0o644)
  try {
    const whole = createHash('sha256')
    const write = async (b: Uint8Array, at: number): Promise<void> => {
      let off = 0
      while (off < b.byteLength) off += (await outFh.write(b, off, b.byteLength - off, at + off)).bytesWritten
      whole.update(b)
    }
    startMore(concurrency)
    for (const s of plan.steps) {
      signal.throwIfAborted()
      if (s.kind === 'copy') {
        const len = ix.lengths[s.chunk]!
        const b = Buffer.allocUnsafe(len)
        let got = 0
        while (got < len) {
          const { bytesRead } = await oldFh.read(b, got, len - got, s.from + got)
          if (bytesRead === 0) break
          got += bytesRead
        }
        // the old file may have changed since it was chunked: what is copied is checked again
        if (got !== len || !createHash('sha256').update(b).digest().equals(chunkDigest(ix, s.chunk))) {
          throw new IndexMismatchError(`chunk ${s.chunk}: the old file changed while it was read (its bytes at ${s.from} no longer hash to the chunk's sha256)`)
        }
        await write(b, ix.offsets[s.chunk]!)
        continue
      }
      const p = started.get(s)!
      const bytes = await p
      started.delete(s)
      startMore(concurrency)
      if (bytes.byteLength !== s.length) throw new IndexMismatchError(`range ${s.offset}+${s.length}: the source sent ${bytes.byteLength} bytes`)
      for (let i = s.first; i <= s.last; i++) {
        const at = ix.offsets[i]! - s.offset
        const got = createHash('sha256').update(bytes.subarray(at, at + ix.lengths[i]!)).digest()
        if (!got.equals(chunkDigest(ix, i))) {
          throw new IndexMismatchError(`chunk ${i} (bytes ${ix.offsets[i]!}+${ix.lengths[i]!}): the file's bytes hash to ${got.toString('hex').slice(0, 16)}…, the index lists ${chunkDigest(ix, i).toString('hex').slice(0, 16)}…`)
        }
      }
      await write(bytes, s.offset)
    }
    const digest = whole.digest()
    if (!digest.equals(ix.sha256)) throw new IndexMismatchError(`the assembled file hashes to sha256:${digest.toString('hex')}, the index lists sha256:${ix.sha256.toString('hex')}`)
    await outFh.truncate(ix.size)
    await outFh.sync()
    const { steps: _, ...figures } = plan
    return { ...figures, chunks: ix.count, size: ix.size, digest: `sha256:${digest.toString('hex')}` }
  } finally {
    stop.abort()
    await Promise.allSettled([...started.values()])
    await oldFh.close()
    await outFh.close()
  }
}
