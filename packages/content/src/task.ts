import { createHash } from 'node:crypto'
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
  if (!SUPPORTED.has(u.protocol)) throw new InvalidUrlError(`unsupported URL scheme "${u.protocol}" in "${url}" (supported: http, https)`)
  if (u.hostname === '') throw new InvalidUrlError(`URL "${url}" has no host`)
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
 * Task id: sha256 hex of the content digest when known (so the same blob from two hosts is one task),
 * else of the normalized URL + range + tag.
 */
export function taskIdOf (req: TaskRequest & { range?: string }): string {
  const h = createHash('sha256')
  if (req.digest != null) {
    parseDigest(req.digest)
    h.update(`digest\0${req.digest}`)
  } else {
    h.update(`url\0${normalizeUrl(req.url)}\0${req.range ?? ''}\0${req.tag ?? ''}`)
  }
  return h.digest('hex')
}

const TASK_ID_RE = /^[0-9a-f]{64}$/
export function isTaskId (s: string): boolean { return TASK_ID_RE.test(s) }
