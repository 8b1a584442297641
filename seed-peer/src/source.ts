/**
 * Back-to-source over HTTP(S) with undici: whole-body streams and Range requests, with every
 * failure mapped to a named error (status, timeout, unreachable, short body).
 */
import { request, Agent, errors as undiciErrors } from 'undici'
import { ContentLengthMismatchError, OriginStatusError, OriginTimeoutError, OriginUnreachableError, type AbortOptions } from '@guoce/interface'
import { parseSourceUrl } from '@guoce/content'

/**
 * Time allowed for the origin's response headers, and between body chunks.
 * @default 30 s
 */
export const ORIGIN_TIMEOUT_MS = 30_000
/**
 * Redirects followed.
 * @default 5
 */
export const MAX_REDIRECTS = 5

export interface SourceRef { url: string, headers?: Record<string, string> }
export interface SourceOptions extends AbortOptions { timeoutMs?: number, range?: { start: number, end: number } }
export interface SourceResponse {
  status: number
  /** length of this response body (the range length for 206), when the origin said */
  length: number | undefined
  /** full content length (from Content-Range for 206) */
  totalLength: number | undefined
  body: AsyncIterable<Uint8Array>
  ranged: boolean
}

const agents = new Map<number, Agent>()
function agentFor (timeoutMs: number): Agent {
  let a = agents.get(timeoutMs)
  if (a == null) {
    a = new Agent({ headersTimeout: timeoutMs, bodyTimeout: timeoutMs, connectTimeout: Math.min(timeoutMs, 10_000), connections: 16 })
    agents.set(timeoutMs, a)
  }
  return a
}

function mapError (err: unknown, url: string): Error {
  if (err instanceof undiciErrors.HeadersTimeoutError || err instanceof undiciErrors.BodyTimeoutError || err instanceof undiciErrors.ConnectTimeoutError) {
    return new OriginTimeoutError(`origin timed out: ${url}`, { cause: err })
  }
  const code = (err as { code?: string }).code
  if (code === 'ECONNREFUSED' || code === 'ECONNRESET' || code === 'ENOTFOUND' || code === 'EHOSTUNREACH' || code === 'UND_ERR_SOCKET') {
    return new OriginUnreachableError(`origin unreachable (${code}): ${url}`, { cause: err })
  }
  return err as Error
}

/** Open the origin. Throws OriginStatusError for any status but 200/206. */
export async function openSource (ref: SourceRef, options: SourceOptions = {}): Promise<SourceResponse> {
  parseSourceUrl(ref.url)
  const timeoutMs = options.timeoutMs ?? ORIGIN_TIMEOUT_MS
  const headers: Record<string, string> = { ...(ref.headers ?? {}) }
  if (options.range != null) headers.range = `bytes=${options.range.start}-${options.range.end - 1}`
  let url = ref.url
  for (let hop = 0; ; hop++) {
    let res: Awaited<ReturnType<typeof request>>
    try {
      res = await request(url, { method: 'GET', headers, dispatcher: agentFor(timeoutMs), signal: options.signal })
    } catch (err) {
      throw mapError(err, url)
    }
    const location = res.headers.location
    if (res.statusCode >= 300 && res.statusCode < 400 && typeof location === 'string' && hop < MAX_REDIRECTS) {
      await res.body.dump().catch(() => {})
      url = new URL(location, url).toString()
      continue
    }
    if (res.statusCode !== 200 && res.statusCode !== 206) {
      await res.body.dump().catch(() => {})
      throw new OriginStatusError(res.statusCode, `origin returned HTTP ${res.statusCode} for ${ref.url}`)
    }
    const cl = res.headers['content-length']
    const length = typeof cl === 'string' && /^\d+$/.test(cl) ? Number(cl) : undefined
    let totalLength = res.statusCode === 200 ? length : undefined
    if (res.statusCode === 206) {
      const cr = res.headers['content-range']
      const m = typeof cr === 'string' ? /\/(\d+)$/.exec(cr) : null
      if (m?.[1] != null) totalLength = Number(m[1])
    }
    const body = res.body
    async function * iterate (): AsyncGenerator<Uint8Array> {
      let got = 0
      try {
        for await (const chunk of body) { got += chunk.byteLength; yield chunk }
      } catch (err) {
        if (length != null && got < length) throw new ContentLengthMismatchError(`origin sent ${got} of ${length} bytes promised by Content-Length: ${ref.url}`, { cause: err })
        throw mapError(err, url)
      }
      if (length != null && got !== length) throw new ContentLengthMismatchError(`origin sent ${got} of ${length} bytes promised by Content-Length: ${ref.url}`)
    }
    return { status: res.statusCode, length, totalLength, body: iterate(), ranged: res.statusCode === 206 }
  }
}

/** Re-chunk a byte stream into fixed-size pieces (the last may be short). */
export async function * pieces (body: AsyncIterable<Uint8Array>, pieceLength: number): AsyncGenerator<Buffer> {
  let parts: Uint8Array[] = []
  let have = 0
  for await (const chunk of body) {
    let c = chunk
    while (c.byteLength > 0) {
      const take = Math.min(pieceLength - have, c.byteLength)
      parts.push(c.subarray(0, take))
      have += take
      c = c.subarray(take)
      if (have === pieceLength) {
        yield Buffer.concat(parts, have)
        parts = []; have = 0
      }
    }
  }
  if (have > 0) yield Buffer.concat(parts, have)
}
