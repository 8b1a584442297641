import { createHash } from 'node:crypto'
import { checkPieceLength } from './piece.js'
import { InvalidUrlError, type TaskRequest } from '@guoce/interface'
import { parseDigest } from './digest.js'

/** Query parameters that change per request but not the content (signed URLs, cache busters). */
export const VOLATILE_QUERY_PARAMS = new Set([
  'X-Amz-Algorithm', 'X-Amz-Credential', 'X-Amz-Date', 'X-Amz-Expires', 'X-Amz-SignedHeaders', 'X-Amz-Signature',
  'X-Amz-Security-Token', 'Expires', 'Signature', 'OSSAccessKeyId', 'x-oss-signature', 'x-oss-expires', 'token', '_'
])

const SUPPORTED = new Set(['http:', 'https:'])

/** Parse and check a source URL; throws InvalidUrlError with a one-line reason. */
export function parseSourceUrl (url: string): URL {
  let u: URL
  try {
    u = new URL(url)
  } catch {
    throw new InvalidUrlError(`malformed URL "${url}"`)
  }
  if (!SUPPORTED.has(u.protocol)) throw new InvalidUrlError(`unsupported URL scheme "${u.protocol}" in "${redactUrl(url)}" (supported: http, https)`)
  if (u.hostname === '') throw new InvalidUrlError(`URL "${redactUrl(url)}" has no host`)
  return u
}

/** URL with volatile query parameters dropped and the rest sorted, fragment removed. */
export function normalizeUrl (url: string): string {
  const u = parseSourceUrl(url)
  u.hash = ''
  const keep = [...u.searchParams.entries()].filter(([k]) => !VOLATILE_QUERY_PARAMS.has(k))
  keep.sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0)
  u.search = ''
  for (const [k, v] of keep) u.searchParams.append(k, v)
  return u.toString()
}

/**
 * Request headers that carry a credential: a request with any of them is private (doc/SECURITY.md).
 * Compared lower-case.
 */
export const CREDENTIAL_HEADERS = new Set(['authorization', 'proxy-authorization', 'cookie', 'x-amz-security-token', 'x-api-key', 'private-token', 'x-auth-token'])

/** Volatile query parameters that carry a credential (signatures, tokens); `_` and the like are only cache busters. */
export const CREDENTIAL_QUERY_PARAMS = new Set([...VOLATILE_QUERY_PARAMS].filter(k => k !== '_' && k !== 'Expires' && k !== 'X-Amz-Date' && k !== 'x-oss-expires' && k !== 'X-Amz-Expires'))

/**
 * The credentials of a request, as one sha256 hex (undefined for an anonymous request): credential
 * headers and credential query parameters, names and values, sorted. Requests with different
 * credentials, or with and without, never share a task: only holders of the same credential can name it.
 */
export function credentialHash (req: { url: string, headers?: Record<string, string> | undefined }): string | undefined {
  const parts: string[] = []
  for (const [k, v] of Object.entries(req.headers ?? {})) {
    const key = k.toLowerCase()
    if (CREDENTIAL_HEADERS.has(key)) parts.push(`h\0${key}\0${v}`)
  }
  const u = parseSourceUrl(req.url)
  for (const [k, v] of u.searchParams.entries()) if (CREDENTIAL_QUERY_PARAMS.has(k)) parts.push(`q\0${k}\0${v}`)
  if (parts.length === 0) return undefined
  parts.sort()
  const h = createHash('sha256').update('guoce credentials v1')
  for (const p of parts) h.update('\0').update(p)
  return h.digest('hex')
}

/**
 * Task id: sha256 hex of the content digest when known (so the same blob from two hosts is one task),
 * else of the normalized URL + range + tag + the origin's validator (`version`). A request that carries
 * credentials adds their hash (credentialHash), so it never shares a task with a request without them
 * or with other credentials. A request that names its piece length (TaskRequest.pieceLength) adds it: the
 * layout is part of what the task is, so two layouts of one content are two tasks (as Dragonfly's task
 * ids carry the piece length). The scheduler recomputes this from every register and refuses a mismatch.
 */
export function taskIdOf (req: TaskRequest & { range?: string }): string {
  return taskIdFrom({ ...req, credentials: credentialHash(req) })
}

/**
 * taskIdOf from its parts, with the credentials as their hash (credentialHash): what the scheduler
 * checks a register against without holding the credentials themselves.
 */
export function taskIdFrom (p: { url: string, digest?: string | undefined, tag?: string | undefined, version?: string | undefined, range?: string | undefined, credentials?: string | undefined, pieceLength?: number | undefined }): string {
  const h = createHash('sha256')
  if (p.digest != null && p.digest !== '') {
    parseDigest(p.digest)
    h.update(`digest\0${p.digest}`)
  } else {
    h.update(`url\0${normalizeUrl(p.url)}\0${p.range ?? ''}\0${p.tag ?? ''}`)
    if (p.version != null && p.version !== '') h.update(`\0version\0${p.version}`)
  }
  if (p.credentials != null && p.credentials !== '') h.update(`\0credentials\0${p.credentials}`)
  if (p.pieceLength != null && p.pieceLength !== 0) h.update(`\0piece-length\0${checkPieceLength(p.pieceLength)}`)
  return h.digest('hex')
}

const TASK_ID_RE = /^[0-9a-f]{64}$/
export function isTaskId (s: string): boolean { return TASK_ID_RE.test(s) }

/**
 * A URL fit for logs, error messages and anything sent to other hosts: user info and the query
 * string's values are replaced (signed URLs and `?token=` carry credentials), the fragment dropped.
 * Query parameter names stay, so a reader still sees which URL it was. Not a URL to fetch.
 */
export function redactUrl (url: string): string {
  let u: URL
  try { u = new URL(url) } catch { return '<malformed URL>' }
  if (u.username !== '' || u.password !== '') { u.username = 'REDACTED'; u.password = '' }
  u.hash = ''
  if (u.search === '') return u.toString()
  const names = [...new Set(u.searchParams.keys())]
  u.search = ''
  return `${u.toString()}?${names.map(k => `${encodeURIComponent(k)}=REDACTED`).join('&')}`
}

/**
 * The URL of content put into the swarm by `guoce import`: it has no origin (`.invalid` never resolves,
 * and sources refuse it at once), so a digest-named task with it is only ever had from its holders.
 */
export const IMPORT_URL_BASE = 'http://import.guoce.invalid/'
/** The URL an imported `sha256:HEX` is registered under. */
export function importUrl (digest: string): string { parseDigest(digest); return `${IMPORT_URL_BASE}${digest}` }
export function isImportUrl (url: string): boolean { return url.startsWith(IMPORT_URL_BASE) }
