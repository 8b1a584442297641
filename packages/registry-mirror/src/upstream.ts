/**
 * The upstream side: which registry a request is for (containerd's `?ns=` or the configured default),
 * its base URL (http for loopback hosts and hosts named insecure, https otherwise), and bounded requests
 * to it. Only the client's Authorization is passed on; no other client header reaches the upstream.
 */
import { request, Agent, errors as undiciErrors } from 'undici'
import { isIP } from 'node:net'
import { ociError, upstreamStatusError, type RegistryMirrorError } from './errors.js'
import { MAX_ERROR_BODY_BYTES, UPSTREAM_TIMEOUT_MS } from './constants.js'

export interface Upstream {
  /** host[:port] as the client named it (`docker.io` stays `docker.io`) */
  host: string
  /** `http(s)://HOST[:PORT]` actually asked */
  base: string
}

const HOST_RE = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$/

export function isLoopbackHost (hostPort: string): boolean {
  const h = hostPort.replace(/:\d{1,5}$/, '').replace(/^\[(.*)\]$/, '$1').toLowerCase()
  if (h === 'localhost') return true
  if (isIP(h) === 4) return h.startsWith('127.')
  return isIP(h) === 6 && (h === '::1' || h === '0:0:0:0:0:0:0:1')
}

/** The upstream a request names (`ns`) or the default; NAME_UNKNOWN when there is neither, NAME_INVALID for a bad host. */
export function resolveUpstream (ns: string | undefined, o: { defaultUpstream?: string | undefined, insecure?: readonly string[] | undefined }): Upstream {
  const host = ns ?? o.defaultUpstream
  if (host == null || host === '') throw ociError(404, 'NAME_UNKNOWN', 'no upstream registry: containerd names it with ?ns=, or start the mirror with a default upstream')
  if (!HOST_RE.test(host)) throw ociError(400, 'NAME_INVALID', `bad upstream registry host ${JSON.stringify(host.slice(0, 100))}`)
  // Docker Hub's registry API lives on another host than its name
  const real = host === 'docker.io' || host === 'index.docker.io' ? 'registry-1.docker.io' : host
  const plain = isLoopbackHost(real) || (o.insecure ?? []).includes(host)
  return { host, base: `${plain ? 'http' : 'https'}://${real}` }
}

const agent = new Agent({ headersTimeout: UPSTREAM_TIMEOUT_MS, bodyTimeout: UPSTREAM_TIMEOUT_MS, connectTimeout: 10_000, connections: 32 })

export interface UpstreamResponse {
  status: number
  headers: Record<string, string>
  /** the body, when asked for and within the bound */
  body: Buffer
}

function one (v: string | string[] | undefined): string | undefined { return Array.isArray(v) ? v[0] : v }

/**
 * One request to the upstream, following redirects (up to 5; the Authorization goes to the same origin
 * only). The body is read when `maxBytes` is given and the status is 2xx: a Content-Length above it, or
 * more bytes than it, throw `tooBig()`. Network failures are UNAVAILABLE (503).
 */
export async function upstreamRequest (method: 'GET' | 'HEAD', url: string, headers: Record<string, string>, o: { maxBytes?: number, tooBig?: (size: number) => RegistryMirrorError, signal?: AbortSignal } = {}): Promise<UpstreamResponse> {
  let target = url
  let h = { ...headers }
  for (let hop = 0; ; hop++) {
    let res: Awaited<ReturnType<typeof request>>
    try {
      res = await request(target, { method, headers: h, dispatcher: agent, signal: o.signal })
    } catch (err) {
      if ((err as Error).name === 'AbortError') throw err
      const timeout = err instanceof undiciErrors.HeadersTimeoutError || err instanceof undiciErrors.ConnectTimeoutError
      throw ociError(503, 'UNAVAILABLE', `the upstream registry ${new URL(target).host} is ${timeout ? 'not answering' : 'unreachable'} (${(err as { code?: string }).code ?? (err as Error).name})`)
    }
    const out: Record<string, string> = {}
    for (const [k, v] of Object.entries(res.headers)) { const s = one(v); if (s != null) out[k] = s }
    const location = out.location
    if (res.statusCode >= 300 && res.statusCode < 400 && location != null && hop < 5) {
      await res.body.dump().catch(() => {})
      const next = new URL(location, target)
      if (next.origin !== new URL(target).origin) { const { authorization: _drop, ...rest } = h; h = rest }
      target = next.toString()
      continue
    }
    if (method === 'HEAD' || (res.statusCode >= 200 && res.statusCode < 300 && o.maxBytes == null)) {
      await res.body.dump().catch(() => {})
      return { status: res.statusCode, headers: out, body: Buffer.alloc(0) }
    }
    const ok = res.statusCode >= 200 && res.statusCode < 300
    const max = ok ? o.maxBytes! : MAX_ERROR_BODY_BYTES
    const cl = out['content-length']
    if (ok && cl != null && /^\d+$/.test(cl) && Number(cl) > max) {
      res.body.destroy()
      throw o.tooBig?.(Number(cl)) ?? ociError(502, 'SIZE_INVALID', `the upstream's answer of ${cl} bytes is above the mirror's bound (${max})`)
    }
    const parts: Buffer[] = []
    let got = 0
    try {
      for await (const chunk of res.body) {
        got += (chunk as Buffer).byteLength
        if (got > max) {
          res.body.destroy()
          if (!ok) break
          throw o.tooBig?.(got) ?? ociError(502, 'SIZE_INVALID', `the upstream's answer is above the mirror's bound (${max})`)
        }
        parts.push(chunk as Buffer)
      }
    } catch (err) {
      if ((err as Error).name === 'RegistryMirrorError' || (err as Error).name === 'AbortError') throw err
      throw ociError(503, 'UNAVAILABLE', `the upstream registry broke off its answer (${(err as { code?: string }).code ?? (err as Error).name})`)
    }
    return { status: res.statusCode, headers: out, body: Buffer.concat(parts) }
  }
}

/** A non-2xx upstream answer as the client's error (401 keeps the upstream's challenge). */
export function statusError (r: UpstreamResponse, what: 'blob' | 'manifest' | 'name'): RegistryMirrorError {
  return upstreamStatusError(r.status, what, r.headers['www-authenticate'])
}
