/**
 * Back-to-source over HTTP(S) with undici: the validator probe, whole-body streams and Range requests
 * (conditional on the task's version), with every failure mapped to a named error (status, timeout,
 * unreachable, short body, changed content). URLs in messages are redacted (redactUrl).
 */
import { request, Agent, errors as undiciErrors } from 'undici'
import { ContentChangedError, ContentLengthMismatchError, NotFoundError, OriginStatusError, OriginTimeoutError, OriginUnreachableError, type AbortOptions } from '@guoce/interface'
import { parseSourceUrl, redactUrl, isImportUrl, CREDENTIAL_HEADERS, piecePool, type Lease } from '@guoce/content'
import { parseChallenge } from '@guoce/image'

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

/**
 * Largest answer read from a registry's token service.
 * @default 64 KiB
 */
export const MAX_TOKEN_RESPONSE_BYTES = 64 * 1024
/**
 * Longest an anonymous registry token is reused (shorter when the token service says it expires sooner).
 * @default 5 min
 */
export const ANONYMOUS_TOKEN_TTL_MS = 5 * 60_000
/** Anonymous tokens kept. @default 256 */
export const MAX_ANONYMOUS_TOKENS = 256

export interface SourceRef {
  url: string
  headers?: Record<string, string>
  /**
   * The origin's validator the task stands for (`etag:<ETag>` or `lm:<Last-Modified>`, from probeSource);
   * with it every request is conditional and a changed origin is a ContentChangedError.
   */
  version?: string
}
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
    return new OriginTimeoutError(`origin timed out: ${redactUrl(url)}`, { cause: err })
  }
  const code = (err as { code?: string }).code
  if (code === 'ECONNREFUSED' || code === 'ECONNRESET' || code === 'ENOTFOUND' || code === 'EHOSTUNREACH' || code === 'UND_ERR_SOCKET') {
    return new OriginUnreachableError(`origin unreachable (${code}): ${redactUrl(url)}`, { cause: err })
  }
  return err as Error
}

type Headers = Record<string, string | string[] | undefined>
function header (h: Headers, name: string): string | undefined {
  const v = h[name]
  return typeof v === 'string' ? v : Array.isArray(v) ? v[0] : undefined
}

/** A response's validator as a task version: `etag:<ETag>`, else `lm:<Last-Modified>`, else ''. */
export function versionOf (h: Headers): string {
  const etag = header(h, 'etag')
  if (etag != null && etag !== '') return `etag:${etag}`
  const lm = header(h, 'last-modified')
  if (lm != null && lm !== '') return `lm:${lm}`
  return ''
}

interface Validator { kind: 'etag' | 'lm', value: string, weak: boolean }
function parseVersion (version: string | undefined): Validator | undefined {
  if (version == null || version === '') return undefined
  if (version.startsWith('etag:')) { const value = version.slice(5); return { kind: 'etag', value, weak: value.startsWith('W/') } }
  if (version.startsWith('lm:')) return { kind: 'lm', value: version.slice(3), weak: false }
  return undefined
}

/** Does the response carry the task's validator? undefined when it names none of that kind. */
function sameValidator (v: Validator, h: Headers): boolean | undefined {
  const got = header(h, v.kind === 'etag' ? 'etag' : 'last-modified')
  if (got == null || got === '') return undefined
  if (v.kind === 'etag') return got.replace(/^W\//, '') === v.value.replace(/^W\//, '')
  return Date.parse(got) === Date.parse(v.value)
}

function changed (url: string, why: string): Error {
  return new ContentChangedError(`origin content of ${redactUrl(url)} changed while it was being fetched (${why}); get it again`)
}

const anonymousTokens = new Map<string, { token: string, until: number }>()

/**
 * The token an OCI registry's token service gives anyone (no credential sent): the Bearer flow of a request
 * that carries no credential, so that a public image on Docker Hub, GHCR or Harbor is fetched like any
 * anonymous URL. undefined when the challenge is not Bearer or the service gives no token.
 */
async function anonymousToken (challenge: string | undefined, options: SourceOptions): Promise<string | undefined> {
  const ch = challenge != null ? parseChallenge(challenge) : undefined
  if (ch?.scheme !== 'bearer' || ch.params.realm == null) return undefined
  let realm: URL
  try { realm = new URL(ch.params.realm) } catch { return undefined }
  if (realm.protocol !== 'https:' && realm.protocol !== 'http:') return undefined
  if (ch.params.service != null) realm.searchParams.set('service', ch.params.service)
  for (const scope of (ch.params.scope ?? '').split(' ').filter(Boolean)) realm.searchParams.append('scope', scope)
  const key = realm.toString()
  const held = anonymousTokens.get(key)
  if (held != null && held.until > Date.now()) return held.token
  let res: Awaited<ReturnType<typeof request>>
  try {
    res = await request(key, { method: 'GET', dispatcher: agentFor(options.timeoutMs ?? ORIGIN_TIMEOUT_MS), signal: options.signal })
  } catch {
    return undefined
  }
  if (res.statusCode !== 200) { await res.body.dump().catch(() => {}); return undefined }
  const parts: Buffer[] = []
  let got = 0
  for await (const c of res.body) {
    got += (c as Buffer).byteLength
    if (got > MAX_TOKEN_RESPONSE_BYTES) { res.body.destroy(); return undefined }
    parts.push(c as Buffer)
  }
  let body: { token?: unknown, access_token?: unknown, expires_in?: unknown }
  try { body = JSON.parse(Buffer.concat(parts).toString('utf8')) as typeof body } catch { return undefined }
  const token = typeof body.token === 'string' && body.token !== '' ? body.token : typeof body.access_token === 'string' && body.access_token !== '' ? body.access_token : undefined
  if (token == null || /[\r\n]/.test(token)) return undefined
  const expires = typeof body.expires_in === 'number' && body.expires_in > 0 ? body.expires_in * 1000 : 60_000
  if (anonymousTokens.size >= MAX_ANONYMOUS_TOKENS) anonymousTokens.delete(anonymousTokens.keys().next().value!)
  anonymousTokens.set(key, { token, until: Date.now() + Math.min(ANONYMOUS_TOKEN_TTL_MS, expires - 10_000) })
  return token
}

/** Same host, port and scheme: credentials may follow a redirect only there. */
function sameOrigin (a: string, b: string): boolean { return new URL(a).origin === new URL(b).origin }

/**
 * One request, following redirects. Credential headers are dropped on a redirect to another origin
 * (what browsers and undici's own redirect handler do): they are for the host the user named. A request
 * without credentials that an OCI registry answers 401 with a Bearer challenge is sent once more with the
 * anonymous token of the registry's token service (anonymousToken).
 */
async function send (ref: SourceRef, method: 'GET' | 'HEAD', extra: Record<string, string>, options: SourceOptions): Promise<{ url: string, res: Awaited<ReturnType<typeof request>> }> {
  parseSourceUrl(ref.url)
  // imported content has no origin: only its holders have it
  if (isImportUrl(ref.url)) throw new NotFoundError(`no peer holds ${ref.url.slice(ref.url.lastIndexOf('/') + 1)}: imported content (guoce import) is had only from the daemons that hold it`)
  const timeoutMs = options.timeoutMs ?? ORIGIN_TIMEOUT_MS
  let headers: Record<string, string> = { ...(ref.headers ?? {}), ...extra }
  let url = ref.url
  let anonymous = !Object.keys(headers).some(k => CREDENTIAL_HEADERS.has(k.toLowerCase()))
  for (let hop = 0; ; hop++) {
    let res: Awaited<ReturnType<typeof request>>
    try {
      res = await request(url, { method, headers, dispatcher: agentFor(timeoutMs), signal: options.signal })
    } catch (err) {
      throw mapError(err, url)
    }
    if (res.statusCode === 401 && anonymous) {
      anonymous = false
      const token = await anonymousToken(header(res.headers, 'www-authenticate'), { ...options, timeoutMs })
      if (token != null) {
        await res.body.dump().catch(() => {})
        headers = { ...headers, authorization: `Bearer ${token}` }
        hop--
        continue
      }
    }
    const location = res.headers.location
    if (res.statusCode >= 300 && res.statusCode < 400 && typeof location === 'string' && hop < MAX_REDIRECTS) {
      await res.body.dump().catch(() => {})
      const next = new URL(location, url).toString()
      if (!sameOrigin(url, next)) headers = Object.fromEntries(Object.entries(headers).filter(([k]) => !CREDENTIAL_HEADERS.has(k.toLowerCase())))
      url = next
      continue
    }
    return { url, res }
  }
}

/**
 * Ask the origin for the content's validator without its body: HEAD, and when HEAD is refused (any
 * status but 2xx: some origins, S3 presigned GET URLs among them, answer HEAD with 403 or 405) a GET of
 * its first byte. Sent with the request's own headers, so it is also the origin's word on whether this
 * requester may read the URL: any error status is an OriginStatusError.
 */
export async function probeSource (ref: SourceRef, options: Omit<SourceOptions, 'range'> = {}): Promise<{ version: string, status: number }> {
  let { res } = await send(ref, 'HEAD', {}, options)
  await res.body.dump().catch(() => {})
  if (res.statusCode < 200 || res.statusCode >= 300) {
    res = (await send(ref, 'GET', { range: 'bytes=0-0' }, options)).res
    await res.body.dump().catch(() => {})
    if (res.statusCode !== 200 && res.statusCode !== 206) throw new OriginStatusError(res.statusCode, `origin returned HTTP ${res.statusCode} for ${redactUrl(ref.url)}`)
  }
  return { version: versionOf(res.headers), status: res.statusCode }
}

/**
 * Open the origin. Throws OriginStatusError for any status but 200/206. With `ref.version` the request is
 * conditional (If-Match or If-Unmodified-Since on a whole GET, If-Range on a Range GET); a 412, a whole
 * body to an If-Range, or a response naming another validator throws ContentChangedError.
 */
export async function openSource (ref: SourceRef, options: SourceOptions = {}): Promise<SourceResponse> {
  const extra: Record<string, string> = {}
  const v = parseVersion(ref.version)
  if (options.range != null) {
    extra.range = `bytes=${options.range.start}-${options.range.end - 1}`
    // If-Range needs a strong validator (RFC 9110 13.1.5): a weak ETag is checked on the response instead
    if (v != null && !v.weak) extra['if-range'] = v.value
  } else if (v?.kind === 'etag' && !v.weak) {
    extra['if-match'] = v.value
  } else if (v?.kind === 'lm') {
    extra['if-unmodified-since'] = v.value
  }
  const { url, res } = await send(ref, 'GET', extra, options)
  if (res.statusCode === 412 && v != null) {
    await res.body.dump().catch(() => {})
    throw changed(ref.url, 'HTTP 412 to a conditional request')
  }
  if (res.statusCode !== 200 && res.statusCode !== 206) {
    await res.body.dump().catch(() => {})
    throw new OriginStatusError(res.statusCode, `origin returned HTTP ${res.statusCode} for ${redactUrl(ref.url)}`)
  }
  if (v != null) {
    const same = sameValidator(v, res.headers)
    // another validator; or a whole body where a range was asked If-Range, without our validator on it
    // (the same validator on a 200 is an origin that ignores Range: the caller skips to its range)
    if (same === false || (options.range != null && res.statusCode === 200 && extra['if-range'] != null && same !== true)) {
      await res.body.dump().catch(() => {})
      throw changed(ref.url, same === false ? 'another validator' : 'a whole body to If-Range')
    }
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
  const shown = redactUrl(ref.url)
  async function * iterate (): AsyncGenerator<Uint8Array> {
    let got = 0
    try {
      for await (const chunk of body) { got += chunk.byteLength; yield chunk }
    } catch (err) {
      if (length != null && got < length) throw new ContentLengthMismatchError(`origin sent ${got} of ${length} bytes promised by Content-Length: ${shown}`, { cause: err })
      throw mapError(err, url)
    }
    if (length != null && got !== length) throw new ContentLengthMismatchError(`origin sent ${got} of ${length} bytes promised by Content-Length: ${shown}`)
  }
  return { status: res.statusCode, length, totalLength, body: iterate(), ranged: res.statusCode === 206 }
}

/**
 * Re-chunk a byte stream into fixed-size pieces (the last may be short). Each piece is copied into a
 * buffer of piecePool that goes back to the pool when the consumer asks for the next piece (or stops):
 * a yielded piece is valid until then only. A fresh buffer per piece made a seed allocate the whole
 * content once more, and V8 ran full collections for that external memory.
 */
export async function * pieces (body: AsyncIterable<Uint8Array>, pieceLength: number): AsyncGenerator<Buffer> {
  let lease: Lease | undefined
  let have = 0
  try {
    for await (const chunk of body) {
      let off = 0
      while (off < chunk.byteLength) {
        lease ??= piecePool.acquire(pieceLength)
        const take = Math.min(pieceLength - have, chunk.byteLength - off)
        lease.buf.set(chunk.subarray(off, off + take), have)
        have += take
        off += take
        if (have === pieceLength) {
          const full = lease
          lease = undefined; have = 0
          try { yield full.buf } finally { full.release() }
        }
      }
    }
    if (have > 0 && lease != null) yield lease.buf.subarray(0, have)
  } finally {
    lease?.release()
  }
}
